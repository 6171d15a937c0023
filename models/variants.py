"""Derive the int8 (CPU) and fp16 (GPU) variants from the committed graph, with onnx + onnxruntime
only (no torch), and measure each against the torch reference scores.

    python -m models.variants    # derive encoder.{int8,fp16}.onnx if stale (`ensure`), write variants.json

fp16 keeps LayerNormalization and Softmax in fp32 (FP16_KEEPS_FP32). The heads read small
differences between pooled features, so fp16 rounding that is harmless for a sentence embedding
moved single scores: over the full validation set an all-fp16 graph was 0.0050 from the served
graph (the bar is 0.005), and keeping these two ops fp32 halves that (0.0025; measured 2026-11-22,
CPU kernels). It is measured on CPU everywhere and, where onnxruntime's CUDA provider loads, on the
GPU too (`fp16_cuda`, kept in variants.json by a later run without a GPU while the fp16 graph it
measured is byte-identical to the one derived now).

int8: onnxruntime's stock dynamic int8 quantizes activations with one scale per tensor, computed
over the whole batch, so an output's score moved with the other outputs in its batch (up to 0.3,
measured), and was 0.4 from torch. This variant is instead SmoothQuant + W8A8 with one activation
scale per token: scores do not depend on the batch (`batch_dependence` below measures it).
CPU workers serve it only once it is within 0.02 of torch on every validation row
(`models.calibration.cpu_graph`). For v1.2.0 it is not: the heads read small differences between pooled
features, and int8 moves single scores by far more, although at its own thresholds it keeps each
detector's AUC and FPR (`models.train` records both on the full validation set). Measured
2026-11-22 on 225 validation texts: fine-tuning left a few inputs on a
knife's edge. Quantizing any single MatMul of layers 0-3 alone moves some texts' pooled features by
0.04 to 0.32 (L2; the median text by under 0.014), so keeping a few layers in fp32 cannot reach
0.02. The pretrained encoder's int8 error is larger on average but even (max 1.5x the median).
int8 scores depend on the CPU too: 0.13 from torch on the reference examples on one machine, 0.22
on an AMD EPYC without VNNI (u8s8 kernels can saturate there; 7-bit weights did not fix it). Weight-
only int8 (MatMulNBits, blocks of 32) was still 0.36 from the served graph on validation: the
heads amplify any encoder error. On 2026-12-01 the same held for every part alone: weights-only
per-channel int8 moved scores by up to 0.13, quantizing only the query projections by 0.04, and the
texts moved most were those whose pooled mean is short, which L2 normalization magnifies
(`models.quant_aware` is the attempt to train the sensitivity away). Measured again later that day
on every validation row of each detector (from the fp32 graph; injury / deception / sycophancy): int8 weights alone
0.11 / 0.17 / 0.15, per-token int8 activations alone 0.39 / 0.19 / 0.13, so neither half alone is
near 0.02. Heads refit on the v1.2.0 encoder do not help either: a norm floor of 3, 6 or 1000 (no
normalization) left int8 0.19 to 0.28 from fp32 on deception, and a penalty on the int8 logit error
of the training rows cut that error on training rows to 0.006 while validation rows moved by up to
0.49 on injury: the error is specific to each text, so it is not a direction a head can avoid.
In logits (every validation row, injury / deception / sycophancy) int8 moves the median row by
0.03 / 0.06 / 0.04 and the worst by 1.7 / 1.2 / 1.7, and 1% / 21% / 11% of rows by more than 0.02 in
score: deception fails broadly, not in a tail. Temperature scaling fitted to the validation labels
(T = 1.5 / 1.6 / 1.9; it lowers log loss) leaves int8 0.09 / 0.19 / 0.09 from fp32, so the score's
scale is not what breaks the bar (measured 2026-12-01).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import assemble

HERE = Path(__file__).resolve().parent
SHARED = HERE / "minilm"


def materialize_fp32(model: Any) -> Any:
    """Undo `assemble.store_weights_fp16`: fp16 initializer + Cast -> one fp32 initializer."""
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


CALIBRATION_TEXTS = SHARED / "calibration_texts.json"  # training rows (written by models.train)
VARIANTS = SHARED / "variants.json"  # what `main` measured; the model cards quote it
SMOOTHING_ALPHA = 0.5
# Part of every derived graph's stamp: bump it when the derivation changes, so installed variants are
# rebuilt (and the model must be recalibrated: a threshold belongs to the graph it was calibrated on).
RECIPE_VERSION = "int8-u8s8-pow2-smooth/fp16-keep-ln-softmax"
# Ops that stay fp32 inside the fp16 graph (with Casts around them): normalization and attention
# weights are where fp16 loses the most, and they are a small share of the GPU's work.
FP16_KEEPS_FP32 = ("LayerNormalization", "Softmax")


def digest(path: Path) -> str:
    """Short content digest: ties a measurement kept in a JSON file to the exact graph it measured."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _weight_matmuls(model: Any) -> list[Any]:
    """MatMuls with a constant weight, except the detector heads (tiny, and where error costs most)."""
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and n.input[1] != "weights"]


def activation_ranges(fp32: Path, texts: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every weight MatMul's input over real (unpadded) tokens of `texts`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from workers.detector import load_tokenizer, pad_batch

    model = onnx.load(str(fp32))
    names = sorted({n.input[0] for n in _weight_matmuls(model)})
    model.graph.output.extend([helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in names])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokenizer, pad_id = load_tokenizer(SHARED / "tokenizer.json", 256)
    ranges: dict[str, np.ndarray] = {}
    for i in range(0, len(texts), 32):
        feeds = pad_batch(tokenizer.encode_batch([(p, r) if p else r for p, r in texts[i:i + 32]]), pad_id)
        real = feeds["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, feeds), strict=True):
            ranges[name] = np.maximum(ranges.get(name, 0.0), np.abs(value[real]).max(0))
    return ranges


def power_of_two(s: np.ndarray) -> np.ndarray:
    """Round smoothing factors to powers of two. Scaling by one is exact in floating point, and the
    activation ranges behind s come from this CPU's fp32 kernels, whose last bits differ between CPUs:
    on the grid those differences vanish, so every machine derives the same int8 graph, the one
    that was calibrated (before, two CPUs derived different bytes from the same source graph)."""
    return np.exp2(np.round(np.log2(s))).astype(np.float32)


def smooth(model: Any, ranges: dict[str, np.ndarray], alpha: float = SMOOTHING_ALPHA) -> Any:
    """SmoothQuant (Xiao et al., 2023): divide each input channel by s and multiply the weight's row by
    s, with s = max|x|^alpha / max|w|^(1 - alpha). The product is unchanged in exact arithmetic, but
    the few outlier channels of a transformer's activations no longer set every token's int8 scale."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    by_input: dict[str, list[Any]] = {}
    for node in _weight_matmuls(model):
        by_input.setdefault(node.input[0], []).append(node)
    muls = {}
    for x, nodes in by_input.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        w_range = np.max([np.abs(w).max(1) for w in weights], axis=0)
        s = power_of_two(np.clip(ranges[x] ** alpha / np.maximum(w_range, 1e-5) ** (1 - alpha), 1e-3, 1e3))
        for node, w in zip(nodes, weights, strict=True):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], node.input[1]))
            node.input[0] = f"{x}.smoothed"
        model.graph.initializer.append(numpy_helper.from_array(1 / s, f"{x}.smooth"))
        muls[x] = helper.make_node("Mul", [x, f"{x}.smooth"], [f"{x}.smoothed"], name=f"{x}.smooth_mul")
    nodes = []
    for node in model.graph.node:  # each Mul right after the node that makes its input (topological)
        nodes.append(node)
        nodes += [muls[out] for out in node.output if out in muls]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def quantize_per_token(model: Any) -> Any:
    """W8A8 with one activation scale per token (row), not per tensor: x -> round(x / s_row) as
    uint8 around 128, MatMulInteger with per-column 8-bit weights, rescale by s_row * s_col.
    onnxruntime's dynamic int8 computes one scale over the whole batch tensor, so a text's score
    moved with its batch neighbours (up to 0.3); with per-token scales each row is quantized on its
    own and a score does not depend on the batch.

    On x86 CPUs without VNNI, onnxruntime's u8s8 kernel sums pairs of products in 16 bits
    (VPMADDUBSW), which can saturate, so there scores differ (0.23 from the fp32 graph on a VNNI CPU,
    0.51 on an AVX2-only one, measured 2026-11-22 on a model trained without quant_aware). Weights as
    uint8 (u8u8) would be exact everywhere, but ran slower than fp32 here (99 against 107 outputs/s,
    123 for u8s8; AMD EPYC with VNNI, 2026-12-01), so the worker warns on a CPU without VNNI instead
    (`workers.detector`)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    targets = {n.name: n for n in _weight_matmuls(model)}
    shared = [numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in
              (("q.eps", 1e-8, np.float32), ("q.127", 127.0, np.float32), ("q.128", 128.0, np.float32),
               ("q.zero", 128, np.uint8))]
    nodes, replaced = [], set()
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w_scale = (np.maximum(np.abs(w).max(0), 1e-12) / 127.0).astype(np.float32)
        p, x = node.name, node.input[0]
        model.graph.initializer.extend([
            numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), f"{p}.wq"),
            numpy_helper.from_array(w_scale, f"{p}.ws")])
        replaced.add(node.input[1])

        def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> Any:
            return helper.make_node(kind, inputs, [out], name=out, **attrs)

        nodes += [
            op("Abs", [x], f"{p}.abs"),
            op("ReduceMax", [f"{p}.abs"], f"{p}.amax", axes=[-1], keepdims=1),
            op("Max", [f"{p}.amax", "q.eps"], f"{p}.amax_eps"),
            op("Div", [f"{p}.amax_eps", "q.127"], f"{p}.s"),
            op("Div", [x, f"{p}.s"], f"{p}.xs"),
            op("Round", [f"{p}.xs"], f"{p}.xr"),
            op("Add", [f"{p}.xr", "q.128"], f"{p}.xu"),
            op("Cast", [f"{p}.xu"], f"{p}.xq", to=onnx.TensorProto.UINT8),
            op("MatMulInteger", [f"{p}.xq", f"{p}.wq", "q.zero"], f"{p}.acc"),
            op("Cast", [f"{p}.acc"], f"{p}.accf", to=onnx.TensorProto.FLOAT),
            op("Mul", [f"{p}.accf", f"{p}.s"], f"{p}.rows"),
            helper.make_node("Mul", [f"{p}.rows", f"{p}.ws"], [node.output[0]], name=f"{p}.out"),
        ]
    keep = [i for i in model.graph.initializer if i.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + shared)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def calibration_texts() -> list[tuple[str, str]]:
    """Training rows for activation ranges (never validation rows, which measure parity)."""
    if CALIBRATION_TEXTS.exists():
        return [(r["prompt"], r["response"]) for r in json.loads(CALIBRATION_TEXTS.read_text())]
    from .datasets import load_injury

    return [(e.prompt, e.response) for e in load_injury() if not e.validation][:512]


def quantize_int8(fp32: Path, out: Path) -> None:
    """int8 for CPU: SmoothQuant, then per-token W8A8. The word-embedding table (a Gather, not a
    MatMul) is stored fp16 behind a Cast so the file stays small without int8 error."""
    import onnx
    from onnx import helper, numpy_helper

    model = quantize_per_token(smooth(onnx.load(str(fp32)), activation_ranges(fp32, calibration_texts())))
    for init in model.graph.initializer:
        if init.name.endswith("word_embeddings.weight"):
            table = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(table.astype(np.float16), init.name + ".fp16"))
            model.graph.node.insert(0, helper.make_node("Cast", [init.name], [init.name[:-5]],
                                                         to=onnx.TensorProto.FLOAT, name="embeddings_fp16_to_fp32"))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def paths(out: Path = SHARED) -> dict[str, Path]:
    return {"int8": out / "encoder.int8.onnx", "fp16": out / "encoder.fp16.onnx"}


def build(source: Path = assemble.ENCODER, out: Path = SHARED) -> dict[str, Path]:
    """Derive both variants from the fp32 graph at `source`, which must exist (`ensure` assembles the
    shipped one first; deterministic, about 15 s, no torch). Each file is written whole and then
    renamed, so a worker starting meanwhile never loads half a graph."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    built = paths(out)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.fp32.onnx"
        onnx.save(materialize_fp32(onnx.load(str(source))), str(fp32))
        quantize_int8(fp32, Path(tmp) / "int8.onnx")
        half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True,
                                        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEPS_FP32])
        onnx.save(half, str(Path(tmp) / "fp16.onnx"))
        for key, path in built.items():
            staged = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # beside the target: rename is atomic
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / f"{key}.onnx"), str(staged))
            staged.replace(path)
    return built


def ensure(source: Path = assemble.ENCODER, out: Path = SHARED) -> dict[str, Path]:
    """Everything the shipped model.json files may name that git does not hold: the fp32 graph
    (assembled after a LoRA retrain, `models.assemble`), then the int8 and fp16 graphs, derived unless
    the ones there were derived, by this recipe, from the fp32 graph there now. `redline serve`,
    `api` and `worker`, the tests, the benchmarks and the Docker build call it."""
    if source == assemble.ENCODER:
        assemble.ensure()
    built, expected = paths(out), f"{digest(source)} {RECIPE_VERSION}"
    if all(p.exists() and assemble.stamp(p).exists() and assemble.stamp(p).read_text().strip() == expected
           for p in built.values()):
        return built
    print(f"Deriving the int8 (CPU) and fp16 (GPU) graphs from {source.name}, once (about 15 s)", file=sys.stderr,
          flush=True)
    build(source, out)
    for path in built.values():
        assemble.stamp(path).write_text(expected + "\n")
    return built


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


def cpu_name() -> str:
    """The CPU model and, on x86, whether it has VNNI (int8 kernels differ without it; see
    quantize_per_token), from the check behind the worker's warning, so the two agree."""
    import platform

    from workers.detector import x86_vnni

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    vnni = x86_vnni()
    return model if vnni is None else f"{model}, {'with' if vnni else 'without'} VNNI"


def record() -> dict[str, Any]:
    """Measure every graph on the reference examples (and on the GPU where there is one) and write
    variants.json, which the model cards quote."""
    from workers.detector import gpu_name, usable_providers

    built = ensure()
    report = {"fp32": measure(assemble.ENCODER, ["CPUExecutionProvider"])}
    report["int8"] = {**measure(built["int8"], ["CPUExecutionProvider"]), "graph_sha256": digest(built["int8"]),
                      "cpu": cpu_name()}
    graph = digest(built["fp16"])  # derivation is deterministic: same source and recipe, same bytes
    report["fp16"] = {**measure(built["fp16"], ["CPUExecutionProvider"]), "graph_sha256": graph}  # CPU kernels
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in usable_providers(cuda):
        report["fp16_cuda"] = {**measure(built["fp16"], cuda), "device": gpu_name(), "graph_sha256": graph}
    else:  # most machines have no GPU: keep the last measurement taken on one, if of this fp16 graph
        previous = json.loads(VARIANTS.read_text()).get("fp16_cuda", {}) if VARIANTS.exists() else {}
        if previous.get("graph_sha256") == graph:
            report["fp16_cuda"] = previous
    VARIANTS.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    print(json.dumps(record(), indent=2))


if __name__ == "__main__":
    main()
