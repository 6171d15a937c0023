"""The int8 variant of the served graph, for CPU workers (`models.variants` builds it).

onnxruntime's stock dynamic int8 quantizes activations with one scale per tensor, computed over the
whole batch, so an output's score moved with the other outputs in its batch (up to 0.3,
measured), and was 0.4 from torch. This variant is instead SmoothQuant + W8A8 with one activation
scale per token: scores do not depend on the batch (`models.variants.measure`'s batch_dependence measures it).
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

import json
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parent / "minilm"
CALIBRATION_TEXTS = SHARED / "calibration_texts.json"  # training rows (written by models.calibration)
SMOOTHING_ALPHA = 0.5


def weight_matmuls(model: Any) -> list[Any]:
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
    names = sorted({n.input[0] for n in weight_matmuls(model)})
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
    for node in weight_matmuls(model):
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
    targets = {n.name: n for n in weight_matmuls(model)}
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
