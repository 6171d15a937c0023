"""The CUDA path, end to end: where onnxruntime's CUDA provider loads (an NVIDIA GPU and its driver),
the shipped detectors run their fp16 graph (derived at install, `models.variants.ensure`) on it, match
the torch reference scores, and a real worker scores on it. CI machines have no GPU, so there this
module is skipped with that reason. On a GPU machine: `./tests/run tests/test_gpu.py`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
from redis import Redis

from models import assemble
from service.detector_config import load_configs
from workers.detector import OnnxDetector, load_detectors
from workers.providers import usable_providers

from .conftest import SHIPPED_MODELS
from .procs import redline_env, start_api, start_worker, wait_for

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
pytestmark = pytest.mark.skipif("CUDAExecutionProvider" not in usable_providers(CUDA),
                                reason="no CUDA device here: onnxruntime's CUDA provider cannot load")


@pytest.fixture(scope="module")
def on_gpu(shipped_models: Path) -> dict[str, OnnxDetector]:
    return load_detectors(load_configs([shipped_models]), CUDA)


REFERENCE = json.loads((SHIPPED_MODELS / "minilm" / "reference_scores.json").read_text())["examples"]


@pytest.mark.parametrize("name", ["injury", "deception", "sycophancy"])
def test_fp16_graph_runs_on_cuda_and_matches_torch(on_gpu: dict[str, OnnxDetector], name: str) -> None:
    model = on_gpu[name].model
    assert model.path.name == "encoder.fp16.onnx" and model.providers[0] == "CUDAExecutionProvider"
    rows = [r for r in REFERENCE if r["detector"] == name]
    items = [(r["prompt"], r["response"]) for r in rows]
    batched = on_gpu[name].predict(items)
    alone = np.concatenate([on_gpu[name].predict([i]) for i in items])
    reference = np.array([r["torch_score"] for r in rows])
    assert len(rows) >= 40 and np.all((batched >= 0) & (batched <= 1))
    assert float(np.max(np.abs(batched - reference))) <= 0.005  # the fp16 parity bar
    assert float(np.max(np.abs(batched - alone))) <= 0.005  # padding to a batch's longest moves nothing


def test_worker_scores_on_the_gpu(shipped_models: Path, redis_url: str, tmp_path: Path) -> None:
    """A real `redline worker` picks the CUDA provider and the fp16 graph by itself, and its stored
    scores agree with the fp32 graph both variants are derived from."""
    prefix = "gpu" + uuid.uuid4().hex[:8]
    env = redline_env(redis_url, shipped_models, prefix, log_level="INFO", providers=",".join(CUDA))
    redis = Redis.from_url(redis_url)
    worker = start_worker(env, tmp_path / "worker.log", redis, prefix)
    api, base = start_api(env, tmp_path / "api.log")
    try:
        texts = ["He was stabbed in the chest and bled heavily before the ambulance arrived.",
                 "Just kill the process and restart the server, then the build goes green."]
        r = requests.post(base + "/v1/outputs", json={"outputs": [{"model": "m", "response": t} for t in texts]},
                          timeout=10)
        assert r.status_code == 202, r.text
        ids = [o["id"] for o in r.json()["outputs"]]

        def scored() -> list[dict] | None:
            bodies = [requests.get(f"{base}/v1/outputs/{i}", timeout=10).json() for i in ids]
            return bodies if all(b["status"] == "scored" for b in bodies) else None

        bodies = wait_for(scored, timeout=60)
        assert "loaded encoder.fp16.onnx on CUDAExecutionProvider" in worker.log()
        fp32 = {n: replace(c, onnx_path=assemble.ENCODER, onnx_gpu_path=None)
                for n, c in load_configs([shipped_models]).items()}
        on_cpu = load_detectors(fp32, ["CPUExecutionProvider"])
        for name, det in on_cpu.items():
            expected = det.predict([("", t) for t in texts])
            got = np.array([b["scores"][name]["score"] for b in bodies])
            assert np.max(np.abs(got - expected)) <= 0.005, name
        assert bodies[0]["scores"]["injury"]["flagged"] and not bodies[1]["scores"]["injury"]["flagged"]
    finally:
        api.stop()
        worker.stop()
        for key in redis.scan_iter(f"{prefix}:*"):
            redis.delete(key)
