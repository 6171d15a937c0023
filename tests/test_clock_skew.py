"""A worker on a host whose clock is wrong: liveness, recovery and metrics use Redis's clock, not the host's.

The worker runs with its wall clock an hour behind the API's and the test's: a `sitecustomize` on its
PYTHONPATH shifts `time.time()` and `time.time_ns()`, which every Python-level wall-clock read in
Redline goes through. (libfaketime would shift the whole process, but Debian's 0.9.10 turns Python
3.11's `time.sleep` into EINVAL or hangs when only the wall clock is shifted: libfaketime issue 426.)
Before Redline read the time from Redis, that worker looked dead to the API (`/readyz` 503,
`redline_workers_alive` 0), recovered lost outputs an hour late, and recorded queue waits of minus an hour.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service.core import Redline
from service.settings import Settings
from service.store import NewOutput

from .procs import redline_env, start_api, start_worker, wait_for

SKEW_S = 3600
SITECUSTOMIZE = """
import os, time
_offset = float(os.environ["TEST_CLOCK_OFFSET_S"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
"""


def skewed(env: dict[str, str], offset_s: int, folder: Path) -> dict[str, str]:
    """`env` for a Python process whose wall clock reads `offset_s` off (its monotonic clock stays
    true, as an NTP-less host's does)."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = [str(folder), *filter(None, [env.get("PYTHONPATH", "")])]
    return {**env, "PYTHONPATH": ":".join(path), "TEST_CLOCK_OFFSET_S": str(offset_s)}


@pytest.fixture()
def stack(redis_url: str, synthetic_models: Path, prefix: str, tmp_path: Path) -> Iterator[tuple[str, Redline]]:
    env = redline_env(redis_url, synthetic_models, prefix, requeue_after_s=1, worker_ttl_s=15)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp_path / "api.log")
    core = Redline(Settings.from_env(env), redis)
    # Outputs stored but never queued: what a worker killed after taking their job leaves behind.
    core.store.create([NewOutput(id=f"lost{i}", model="skew", response="hello", detectors=["injury"])
                       for i in range(3)], job_id="dead-job")
    worker = start_worker(skewed(env, -SKEW_S, tmp_path / "skew"), tmp_path / "worker.log", redis, prefix)
    yield base, core
    worker.stop()
    api.stop()


def test_the_skew_really_moves_a_processs_clock(tmp_path: Path) -> None:
    # Without this, the test below could pass because the skew never happened.
    done = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                          env=skewed({}, -SKEW_S, tmp_path), capture_output=True, text=True, check=True)
    assert abs(time.time() - float(done.stdout) - SKEW_S) < 60


def test_a_worker_whose_clock_is_an_hour_behind_is_alive_recovers_lost_outputs_and_times_truly(
        stack: tuple[str, Redline]) -> None:
    base, core = stack
    ready = requests.get(base + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers_alive"] == 1, ready.text
    # The reaper (in the skewed worker) finds the outputs orphaned for more than requeue_after_s.
    wait_for(lambda: all(core.store.get(f"lost{i}")["status"] == "scored" for i in range(3)),  # type: ignore[index]
             timeout=60)
    r = requests.post(base + "/v1/score", json={"outputs": [{"model": "skew", "response": "a broken arm"}],
                                                 "timeout_ms": 20000}, timeout=30)
    assert r.status_code == 200, r.text
    scored_at = datetime.fromisoformat(r.json()["outputs"][0]["scored_at"].replace("Z", "+00:00")).timestamp()
    seconds, _ = core.redis.time()
    assert abs(seconds - scored_at) < 300  # stamped by Redis's clock, not the worker's
    families = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=10).text)}
    alive = [s.value for s in families["redline_workers_alive"].samples]
    assert alive == [1]
    wait = {s.name: s.value for s in families["redline_queue_wait_seconds"].samples}
    assert wait["redline_queue_wait_seconds_count"] >= 4
    # The lost outputs waited over requeue_after_s (1 s) before they were queued again. With the worker's
    # clock, each wait was an hour short (recorded as 0, negative waits being clamped).
    assert 3 * 1.0 <= wait["redline_queue_wait_seconds_sum"] < SKEW_S / 2
