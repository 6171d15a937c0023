"""Derive the int8 (CPU) and fp16 (GPU) variants from the committed graph, with onnx + onnxruntime
only (no torch), and measure each against the torch reference scores.

    python -m models.variants            # writes models/minilm/encoder.{int8,fp16}.onnx + variants.json

Why the served CPU default is not int8: onnxruntime's dynamic int8 quantizes activations with one
scale per tensor, computed over the whole batch, so an output's score depends on which other outputs
share its batch. `batch_dependence` below measures that. Use int8 only where speed matters more
than reproducible scores (set `"onnx": "../minilm/encoder.int8.onnx"` in the model.json files).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE / "minilm"


def materialize_fp32(model: Any) -> Any:
    """Undo `train.store_weights_fp16`: fp16 initializer + Cast -> one fp32 initializer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep_nodes = []
    for node in model.graph.node:
        source = node.input[0] if node.op_type == "Cast" and len(node.input) == 1 else ""
        if source in inits and source.endswith(".fp16"):
            init = inits[source]
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), node.output[0]))
        else:
            keep_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep_nodes)
    return model


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8, per channel, on weight MatMuls only. Activation x activation MatMuls (attention
    scores) and the heads stay fp32: quantizing them cost most of the score error. The word
    embedding table is stored fp16 behind a Cast, so the file stays small without int8 error."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    weights = {i.name for i in model.graph.initializer}
    keep = [n.name for n in model.graph.node if n.op_type == "MatMul"
            and (not any(i in weights for i in n.input) or "weights" in n.input)]
    staged = fp32.with_suffix(".q.onnx")
    quantize_dynamic(str(fp32), str(staged), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=keep,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    model = onnx.load(str(staged))
    for init in model.graph.initializer:
        if init.name.endswith("word_embeddings.weight"):
            table = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(table.astype(np.float16), init.name + ".fp16"))
            model.graph.node.insert(0, helper.make_node("Cast", [init.name], [init.name[:-5]],
                                                         to=onnx.TensorProto.FLOAT, name="embeddings_fp16_to_fp32"))
    onnx.save(model, str(out))



def build(source: Path = SHARED / "encoder.onnx") -> dict[str, Path]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.fp32.onnx"
        onnx.save(materialize_fp32(onnx.load(str(source))), str(fp32))
        quantize_int8(fp32, SHARED / "encoder.int8.onnx")
        half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(half, str(SHARED / "encoder.fp16.onnx"))
    return {"int8": SHARED / "encoder.int8.onnx", "fp16": SHARED / "encoder.fp16.onnx"}


def measure(path: Path, providers: list[str]) -> dict[str, Any]:
    """Max |score - torch score| over the reference examples, and how much scores move with batching."""
    import onnxruntime as ort

    from workers.detector import OnnxModel

    reference = json.loads((SHARED / "reference_scores.json").read_text())["examples"]
    heads = {name: json.loads((HERE / name / "model.json").read_text())["output_index"]
             for name in {r["detector"] for r in reference}}
    model = OnnxModel(path, SHARED / "tokenizer.json", 256, True, providers)
    items = [(r["prompt"], r["response"]) for r in reference]
    batched = 1 / (1 + np.exp(-model.run(items, 8192)["logits"].astype(np.float64)))
    alone = 1 / (1 + np.exp(-np.concatenate([model.run([i])["logits"] for i in items]).astype(np.float64)))
    cols = np.array([heads[r["detector"]] for r in reference])
    rows = np.arange(len(reference))
    torch_scores = np.array([r["torch_score"] for r in reference])
    return {"providers": model.providers, "ort": ort.__version__,
            "max_abs_diff_vs_torch": float(np.max(np.abs(batched[rows, cols] - torch_scores))),
            "batch_dependence_max_abs": float(np.max(np.abs(batched[rows, cols] - alone[rows, cols]))),
            "examples": len(reference)}


def main() -> None:
    paths = build()
    report = {"served": measure(SHARED / "encoder.onnx", ["CPUExecutionProvider"])}
    report["int8"] = measure(paths["int8"], ["CPUExecutionProvider"])
    try:
        report["fp16"] = measure(paths["fp16"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as exc:  # fp16 kernels may be missing on CPU; the GPU is where it runs
        report["fp16"] = {"error": f"could not run here: {exc.__class__.__name__}"}
    (SHARED / "variants.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
