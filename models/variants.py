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

int8 is derived by `models.int8` (SmoothQuant + per-token W8A8; why, and what was measured, is there).
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
from .int8 import quantize_int8

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


VARIANTS = SHARED / "variants.json"  # what `main` measured; the model cards quote it
# Part of every derived graph's stamp: bump it when the derivation changes, so installed variants are
# rebuilt (and the model must be recalibrated: a threshold belongs to the graph it was calibrated on).
RECIPE_VERSION = "int8-u8s8-pow2-smooth/fp16-keep-ln-softmax"
# Ops that stay fp32 inside the fp16 graph (with Casts around them): normalization and attention
# weights are where fp16 loses the most, and they are a small share of the GPU's work.
FP16_KEEPS_FP32 = ("LayerNormalization", "Softmax")


def digest(path: Path) -> str:
    """Short content digest: ties a measurement kept in a JSON file to the exact graph it measured."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


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

    from workers.int8_kernels import x86_vnni

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    vnni = x86_vnni()
    return model if vnni is None else f"{model}, {'with' if vnni else 'without'} VNNI"


def record() -> dict[str, Any]:
    """Measure every graph on the reference examples (and on the GPU where there is one) and write
    variants.json, which the model cards quote."""
    from workers.providers import gpu_name, usable_providers

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
