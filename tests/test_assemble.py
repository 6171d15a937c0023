"""Building a served graph from a skeleton, LoRA factors and pretrained weights (models.assemble), on a
small graph the test builds itself."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import assemble

RANK, ALPHA = 2, 4.0


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, body = {}, b""
    for name, value in tensors.items():
        raw = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


@pytest.fixture()
def case(tmp_path: Path) -> dict:
    """y = x W^T + b with W (48 x 32, large enough to be left out) from "pretrained" weights."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(48, 32)).astype(np.float32)  # torch Linear layout: out x in
    bias = rng.normal(size=48).astype(np.float32)
    pretrained = _safetensors({"encoder.layer.0.dense.weight": weight, "encoder.layer.0.dense.bias": bias})
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_t"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 48])],
        [numpy_helper.from_array(weight.T.copy(), "w_t"), numpy_helper.from_array(bias, "b")])
    exported = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    factors = {"encoder.layer.0.dense.A": rng.normal(size=(RANK, 32)).astype(np.float16),
               "encoder.layer.0.dense.B": rng.normal(size=(48, RANK)).astype(np.float16)}
    files = assemble.Files(tmp_path / "skeleton.onnx", tmp_path / "lora.npz", tmp_path / "assembly.json")
    assemble.split(exported, factors, RANK, ALPHA, files, pretrained)
    merged = weight + ALPHA / RANK * (factors["encoder.layer.0.dense.B"].astype(np.float32)
                                      @ factors["encoder.layer.0.dense.A"].astype(np.float32))
    return {"files": files, "pretrained": pretrained, "merged": merged, "bias": bias, "out": tmp_path / "g.onnx"}


def _pretrained_weight(case: dict) -> np.ndarray:
    return assemble.read_safetensors(case["pretrained"])["encoder.layer.0.dense.weight"]


def test_split_leaves_pretrained_weights_out_and_names_them(case: dict) -> None:
    files = case["files"]
    skeleton = onnx.load(str(files.skeleton))
    assert [i.name for i in skeleton.graph.initializer] == ["b"]  # small tensors stay in the skeleton
    recipe = json.loads(files.recipe.read_text())
    assert recipe["initializers"] == [{"name": "w_t", "tensor": "encoder.layer.0.dense.weight", "transpose": True,
                                       "lora": "encoder.layer.0.dense"}]
    assert recipe["lora"]["rank"] == RANK and recipe["lora"]["alpha"] == ALPHA


def test_assembled_graph_computes_pretrained_plus_low_rank_delta(case: dict) -> None:
    out = assemble.assemble(case["out"], case["files"], case["pretrained"])
    x = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x @ case["merged"].T + case["bias"]
    # Weights are stored fp16 (half the file): relative error of fp16 rounding, not of the delta.
    assert np.max(np.abs(y - expected)) <= 2e-3 * np.max(np.abs(expected))
    without_delta = x @ _pretrained_weight(case).T + case["bias"]
    assert np.max(np.abs(y - without_delta)) > 0.5  # the LoRA delta really is applied


def test_assembly_is_deterministic_and_rebuilt_only_when_the_committed_files_change(case: dict) -> None:
    files, out = case["files"], case["out"]
    assemble.assemble(out, files, case["pretrained"])
    first = out.read_bytes()
    before = out.stat().st_mtime_ns
    assert assemble.ensure(out, files) == out and out.stat().st_mtime_ns == before  # up to date: untouched
    assemble.assemble(out, files, case["pretrained"])
    assert out.read_bytes() == first
    with np.load(files.factors) as npz:
        factors = dict(npz)
    factors["encoder.layer.0.dense.B"] = np.zeros_like(factors["encoder.layer.0.dense.B"])
    np.savez_compressed(files.factors, **factors)  # a retrain changed the factors
    assert assemble.stamp(out).read_text().strip() != assemble.recipe_digest(files)


def test_other_pretrained_weights_are_refused(case: dict) -> None:
    other = _safetensors({"encoder.layer.0.dense.weight": np.zeros((48, 32), np.float32)})
    with pytest.raises(RuntimeError, match="not the ones the recipe names"):
        assemble.assemble(case["out"], case["files"], other)
    assert not case["out"].exists()


def test_read_safetensors_reads_what_was_written() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = assemble.read_safetensors(_safetensors({"a": a}))
    assert got["a"].shape == (2, 3) and np.array_equal(got["a"], a)
