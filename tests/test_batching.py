"""Dynamic batching through real processes: outputs sent in many small requests while the
worker is busy are scored together, in one session call."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from redis import Redis

from .procs import redline_env, start_api, start_worker, wait_for

pytestmark = pytest.mark.integration


def test_small_requests_arriving_while_busy_share_one_batch(redis_url: str, shipped_models: Path,
                                                            tmp_path: Path) -> None:
    prefix = "b" + uuid.uuid4().hex[:8]
    # No batching wait: any batching seen here comes from requests queuing up behind a busy worker.
    env = redline_env(redis_url, shipped_models, prefix, max_batch=64, max_batch_wait_ms=0)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp_path / "api.log")
    worker = start_worker(env, tmp_path / "worker.log", redis, prefix)
    try:
        # 64 texts of ~240 tokens keep the shipped MiniLM busy for a good fraction of a second (within the
        # 256 it reads at once: a longer one would add windows, workers/windows.py, and session calls).
        long_text = "the surgeon reviewed the scans and discussed the recovery plan with the family " * 17
        big = requests.post(base + "/v1/outputs", json={"outputs": [
            {"model": "m", "response": long_text} for _ in range(64)]}, timeout=30)
        assert big.status_code == 202
        singles = []
        for i in range(10):
            r = requests.post(base + "/v1/outputs", json={"outputs": [{"model": "m", "response": f"hello {i}"}]},
                              timeout=30)
            singles.append(r.json()["outputs"][0]["id"])

        def all_scored() -> list[dict] | None:
            bodies = [requests.get(f"{base}/v1/outputs/{i}", timeout=30).json() for i in singles]
            return bodies if all(b["status"] == "scored" for b in bodies) else None

        bodies = wait_for(all_scored, timeout=120)
        big_batch = requests.get(f"{base}{big.json()['outputs'][0]['url']}", timeout=30).json()["batch"]
        assert big_batch["size"] == 64 and big_batch["session_calls"] == [64]
        batches = {b["batch"]["id"]: b["batch"] for b in bodies}
        assert big_batch["id"] not in batches, "singles arrived after the big batch had started"
        assert len(batches) <= 2, batches
        largest = max(batches.values(), key=lambda b: b["size"])
        assert largest["size"] >= 5
        assert largest["session_calls"] == [largest["size"]]  # one onnxruntime call for the whole batch
    finally:
        worker.stop()
        api.stop()
