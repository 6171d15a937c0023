"""`redline retry` against a real gunicorn and real worker processes: after a rollout in the wrong
order, the outputs that failed for a missing detector are scored once a worker with it runs, and only
the dead letters that match are retried."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from redis import Redis

from service import retry_client
from service.auth import create_key
from service.keys import Keys
from service.store import OutputStore

from .procs import ROOT, redline_env, start_api, start_worker, wait_for

pytestmark = pytest.mark.integration


def _retry(base: str, key_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "retry", "--url", base, "--key-file", str(key_file),
                           *options], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_redline_retry_scores_the_outputs_a_missing_detector_failed(
        redis_url: str, synthetic_models: Path, user_models: Path, tmp_path: Path) -> None:
    prefix = "rt" + uuid.uuid4().hex[:8]
    redis = Redis.from_url(redis_url)
    keys = tmp_path / "keys"
    key = create_key(keys, "team", ["outputs:write", "read"])
    (tmp_path / "op.key").write_text(key + "\n")
    (tmp_path / "reader.key").write_text(create_key(keys, "team", ["read"]) + "\n")
    auth = {"Authorization": f"Bearer {key}"}
    # The API already serves the user's profanity detector; the only worker does not have it.
    api, base = start_api(redline_env(redis_url, [synthetic_models, user_models], prefix, api_keys_file=keys),
                          tmp_path / "api.log")
    workers = []
    try:
        other = {"outputs": [{"id": "other", "model": "bot", "response": "fine", "detectors": ["injury"]}]}
        assert requests.post(base + "/v1/outputs", json=other, headers=auth, timeout=30).status_code == 202
        store = OutputStore(redis, Keys(prefix), ttl_s=3600)
        assert store.finish_failed({"team~other": "inference failed in model.onnx"}) == 1  # another cause
        asking = {"outputs": [{"id": f"p{i}", "model": "bot", "response": "well damn"} for i in range(5)]}
        assert requests.post(base + "/v1/outputs", json=asking, headers=auth, timeout=30).status_code == 202
        workers.append(start_worker(redline_env(redis_url, synthetic_models, prefix), tmp_path / "old.log",
                                    redis, prefix))
        ids = [f"p{i}" for i in range(5)]

        def status(i: str) -> str:
            return requests.get(f"{base}/v1/outputs/{i}", headers=auth, timeout=30).json()["status"]

        wait_for(lambda: all(status(i) == "failed" for i in ids))
        dry = _retry(base, tmp_path / "op.key", "--error", "detectors not loaded", "--dry-run")
        assert dry.returncode == 0 and sorted(dry.stdout.split()) == ids, dry.stderr
        assert all(status(i) == "failed" for i in ids)
        paged = retry_client.retry_failed(base, key, error="detectors not loaded", dry_run=True, page_size=2)
        assert sorted(paged.matching) == ids  # three pages, followed by their cursors

        workers.append(start_worker(redline_env(redis_url, [synthetic_models, user_models], prefix),
                                    tmp_path / "new.log", redis, prefix))
        done = _retry(base, tmp_path / "op.key", "--error", "detectors not loaded", "--chunk", "2")
        assert done.returncode == 0 and "5 failed outputs queued for scoring again" in done.stderr, done.stderr
        wait_for(lambda: all(status(i) == "scored" for i in ids), timeout=60)
        scores = [requests.get(f"{base}/v1/outputs/{i}", headers=auth, timeout=30).json()["scores"] for i in ids]
        assert all(s["profanity"]["flagged"] and s["profanity"]["version"] == "user-7" for s in scores)
        assert status("other") == "failed"  # its error did not match
        refused = _retry(base, tmp_path / "reader.key")  # may read the dead letters, not retry them
        assert refused.returncode == 1 and "403 from " in refused.stderr and "outputs:write" in refused.stderr, \
            refused.stderr
        everything = _retry(base, tmp_path / "op.key")
        assert "1 failed outputs queued" in everything.stderr, everything.stderr
        wait_for(lambda: status("other") == "scored", timeout=60)
        again = _retry(base, tmp_path / "op.key")
        assert again.returncode == 0 and "0 failed outputs queued" in again.stderr
        counters = {k.decode(): int(v) for k, v in redis.hgetall(Keys(prefix).counters).items()}
        assert counters["scored|profanity|team~bot"] == 5 and counters["failed|team~bot"] == 6
        bad = _retry(base, tmp_path / "missing.key")
        assert bad.returncode == 1 and "cannot read the key file" in bad.stderr
    finally:
        for proc in (*workers, api):
            proc.stop()
