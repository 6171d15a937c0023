"""Failure and overload with real processes: backpressure, SIGKILLed workers, SIGTERM, Redis restarts
with AOF, and dead letters. Each test checks that every accepted output is scored exactly once."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from redis import Redis

from service.core import Redline
from service.detector_config import load_configs
from service.embedded_redis import EmbeddedRedis
from service.keys import Keys
from service.queueing import bulk_lane
from service.settings import Settings
from service.store import NewOutput

from .procs import Proc, ctrl_c, free_port, redline_env, start_api, start_serve, start_worker, wait_for, worker_pid

pytestmark = pytest.mark.integration


def _post(base: str, outputs: list[dict], path: str = "/v1/outputs") -> requests.Response:
    return requests.post(base + path, json={"outputs": outputs}, timeout=30)


def _all_scored(redis: Redis, prefix: str, ids: list[str]) -> bool:
    with redis.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hget(f"{prefix}:output:{i}", "status")
        return all(s == b"scored" for s in pipe.execute())


def test_backpressure_429_with_retry_after_and_nothing_lost(redis_url: str, shipped_models: Path,
                                                             tmp_path: Path) -> None:
    prefix = "bp" + uuid.uuid4().hex[:8]
    env = redline_env(redis_url, shipped_models, prefix, max_pending=20, retry_after_s=7)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp_path / "api.log")
    try:
        accepted = []
        for n in range(4):  # no worker yet: the backlog fills up
            r = _post(base, [{"model": "m", "response": f"text {n}-{k}", "detectors": ["injury"]} for k in range(5)])
            assert r.status_code == 202
            accepted += [o["id"] for o in r.json()["outputs"]]
        over = _post(base, [{"model": "m", "response": "one too many", "detectors": ["injury"]}])
        assert over.status_code == 429 and over.headers["Retry-After"] == "7"
        error = over.json()["error"]
        assert error["code"] == "overloaded" and "REDLINE_MAX_PENDING=20" in error["message"]
        assert redis.zcard(f"{prefix}:pending") == 20  # the refused output was not stored
        # 10x overload: everything beyond the backlog is refused and Redis does not grow.
        before = redis.info("memory")["used_memory"]
        for _ in range(40):
            r = _post(base, [{"model": "m", "response": "x" * 900, "detectors": ["injury"]} for _ in range(5)])
            assert r.status_code == 429
        assert redis.zcard(f"{prefix}:pending") == 20
        assert redis.info("memory")["used_memory"] - before < 200_000  # 200 refused outputs would be ~200 kB
        worker = start_worker(env, tmp_path / "worker.log", redis, prefix)
        try:
            wait_for(lambda: _all_scored(redis, prefix, accepted), timeout=60)
            assert _post(base, [{"model": "m", "response": "room again", "detectors": ["injury"]}]).status_code == 202
        finally:
            worker.stop()
    finally:
        api.stop()


def test_the_backlog_bound_counts_only_new_outputs_and_holds_across_api_processes(redis: Redis,
                                                                                  settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.errors import Overloaded

    bounded = dataclasses.replace(settings, max_pending=5)
    cores = [Redline(bounded, Redis.from_url(settings.redis_url)) for _ in range(24)]
    start = threading.Barrier(len(cores))

    def submit(n: int) -> bool:  # API processes admitting at once; the check and the write were two steps
        start.wait()
        try:
            cores[n].submit([NewOutput(id=f"o{n}", model="m", response=f"text {n}", detectors=["injury"])])
        except Overloaded:
            return False
        return True

    with ThreadPoolExecutor(len(cores)) as pool:
        accepted = [n for n, ok in enumerate(pool.map(submit, range(len(cores)))) if ok]
    assert len(accepted) == 5 and redis.zcard(cores[0].keys.pending) == 5
    # Full: a resubmission stores nothing new, so it is answered (it was a 429), and a new output is not.
    again = [NewOutput(id=f"o{n}", model="m", response=f"text {n}", detectors=["injury"]) for n in accepted]
    assert cores[0].submit(again)[0] == ["queued"] * 5
    with pytest.raises(Overloaded, match="5 outputs are waiting to be scored"):
        cores[0].submit([NewOutput(id="one-more", model="m", response="x", detectors=["injury"])])
    assert cores[0].output_view("one-more") is None


def test_sigkilled_workers_lose_nothing_and_score_each_output_once(redis_url: str, shipped_models: Path,
                                                                   tmp_path: Path) -> None:
    prefix = "chaos" + uuid.uuid4().hex[:6]
    # With a fair share, past the first 1,000 outputs jobs wait in the bulk lane: kills hit jobs of both.
    env = redline_env(redis_url, shipped_models, prefix, worker_ttl_s=4, requeue_after_s=3, max_attempts=100,
                      max_batch=32, max_outputs_per_request=100, tenant_fair_share=1000)
    redis = Redis.from_url(redis_url)
    api, base = start_api(env, tmp_path / "api.log")
    workers = [start_worker(env, tmp_path / f"w{i}.log", redis, prefix) for i in range(2)]
    ids: list[str] = []
    kills = 0

    def submit(count: int) -> None:
        for _ in range(count // 100):
            start = len(ids)
            batch = [{"model": "chaos", "response": f"short text number {start + k}", "detectors": ["injury"],
                      "labels": {"injury": (start + k) % 2}} for k in range(100)]
            r = _post(base, batch)
            assert r.status_code == 202
            ids.extend(o["id"] for o in r.json()["outputs"])

    try:
        submit(3000)
        assert redis.llen(f"rq:queue:{prefix}-{bulk_lane('default')}") > 0  # without keys, the tenant is `default`
        rng = random.Random(0)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (redis.zcard(f"{prefix}:pending") or kills < 3):
            if kills < 3 and redis.zcard(f"{prefix}:pending") < 300:
                submit(500)  # a fast machine drained the work before three kills: keep the workers busy
            # Kill a worker while it holds a job lease: that is, in the middle of a batch.
            leases = [redis.get(k) for k in redis.scan_iter(f"{prefix}:lease:*")]
            holders = {v.decode() for v in leases if v}
            pids = {worker_pid(h) for h in holders}
            victims = [w for w in workers if w.alive() and w.popen.pid in pids]
            if victims:
                victim = rng.choice(victims)
                victim.popen.send_signal(signal.SIGKILL)
                victim.popen.wait()
                kills += 1
                workers.remove(victim)
                workers.append(start_worker(env, tmp_path / f"w{kills + 2}.log", redis, prefix))
            time.sleep(rng.uniform(0.2, 0.8))
        wait_for(lambda: redis.zcard(f"{prefix}:pending") == 0, timeout=180, interval=0.5)
        assert kills >= 3
        assert _all_scored(redis, prefix, ids)
        counters = {k.decode(): int(v) for k, v in redis.hgetall(f"{prefix}:counters").items()}
        n_out = len(ids)
        assert counters["scored|injury|chaos"] == n_out  # exactly once, despite requeues
        assert counters["labeled|injury|chaos"] == n_out
        version = load_configs([shipped_models])["injury"].version
        assert redis.zcard(Keys(prefix).window("chaos", "injury", version)) == n_out
        assert redis.zcard(Keys(prefix).review("chaos", "injury")) == 0  # all came labeled: none to review
        # Requeues and repeated finishes kept the per-tenant count in step with the pending set.
        assert redis.hgetall(Keys(prefix).pending_by_tenant) == {b"default": b"0"}
        requeued = sum(1 for i in ids if redis.hget(f"{prefix}:output:{i}", "attempts"))
        assert requeued > 0  # the kills really did abandon outputs, and they came back
    finally:
        for w in workers:
            w.stop()
        api.stop()


def test_sigterm_finishes_the_current_batch_then_exits(redis_url: str, shipped_models: Path, tmp_path: Path) -> None:
    prefix = "term" + uuid.uuid4().hex[:6]
    env = redline_env(redis_url, shipped_models, prefix, max_batch=64)
    redis = Redis.from_url(redis_url)
    core = Redline(Settings(redis_url=redis_url, models_dirs=(shipped_models,), queue_prefix=prefix), redis)
    worker = start_worker(env, tmp_path / "worker.log", redis, prefix)
    long_text = "the surgeon reviewed the scans and discussed the recovery plan with the family " * 30
    outs = [NewOutput(id=f"t{i}", model="m", response=long_text, detectors=["injury"]) for i in range(64)]
    core.submit(outs)
    wait_for(lambda: list(redis.scan_iter(f"{prefix}:lease:*")), timeout=30, interval=0.01)
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=60) == 0
    assert _all_scored(redis, prefix, [o.id for o in outs])
    assert not any(redis.hget(f"{prefix}:output:{o.id}", "attempts") for o in outs)  # no requeue needed
    worker.stop()


def test_a_worker_started_before_its_redis_waits_for_it_and_stops_cleanly_without_it(synthetic_models: Path,
                                                                                     tmp_path: Path) -> None:
    prefix = "early" + uuid.uuid4().hex[:6]
    port = free_port()  # nothing listens here yet
    url = f"redis://127.0.0.1:{port}/0"
    worker = Proc([sys.executable, "-m", "service.cli", "worker"],
                  redline_env(url, synthetic_models, prefix, log_level="INFO"), tmp_path / "worker.log")
    server = EmbeddedRedis(tmp_path / "redis", port=port, persist=False)
    try:
        wait_for(lambda: "waiting for Redis" in worker.log() or not worker.alive(), timeout=60)
        time.sleep(1)  # a few more failed pings
        assert worker.alive(), worker.log()  # before, it exited with a traceback from RQ's constructor
        server.start()
        redis = Redis.from_url(url)
        core = Redline(Settings(redis_url=url, models_dirs=(synthetic_models,), queue_prefix=prefix), redis)
        core.submit([NewOutput(id="e1", model="m", response="bleeding and a broken arm", detectors=["injury"])])
        wait_for(lambda: _all_scored(redis, prefix, ["e1"]), timeout=60)
        assert worker.alive() and worker.log().count("waiting for Redis") == 1, worker.log()
        assert "Traceback" not in worker.log(), worker.log()
        # Stop order does not matter either: a SIGTERM while Redis is away is a clean stop (exit 0),
        # where RQ's record of the worker's death used to raise and make it a crash.
        server.stop()
        time.sleep(1)
        worker.popen.send_signal(signal.SIGTERM)
        try:
            code = worker.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:  # seen once in CI (2026-12-02), not reproduced: keep what it logged
            pytest.fail(f"no exit 30 s after SIGTERM with Redis away; worker log:\n{worker.log()}")
        assert code == 0, worker.log()
        assert "stopped without telling Redis" in worker.log() and "Traceback" not in worker.log(), worker.log()
    finally:
        worker.stop()
        server.stop()


def test_redis_restart_with_aof_loses_no_accepted_output(shipped_models: Path, tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({"REDLINE_REDIS_URL": server.url, "REDLINE_MODELS_DIRS": str(shipped_models),
                "REDLINE_DATA_DIR": str(tmp_path / "var"), "REDLINE_LOG_LEVEL": "WARNING",
                # A worker holding a batch when Redis goes away waits and scores it once Redis is back
                # (tests/test_worker.py); a job popped just as Redis went down is the reaper's to
                # recover: in seconds here, not after the default 10 s.
                "REDLINE_REQUEUE_AFTER_S": "3", "REDLINE_WORKER_TTL_S": "4"})
    # `redline serve` with an external Redis: it restarts a worker that dies while Redis is away.
    serve, base = start_serve(env, tmp_path / "serve.log")
    accepted: list[str] = []
    refused = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal refused
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = _post(base, [{"model": "m", "response": f"message {n} {k}", "detectors": ["injury"]}
                                 for k in range(5)])
            except requests.RequestException:
                refused += 1
                continue
            if r.status_code == 202:
                accepted.extend(o["id"] for o in r.json()["outputs"])
            else:
                assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
                refused += 1
            time.sleep(0.02)

    try:
        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(2)
        server.stop()  # SIGTERM: Redis writes its AOF and exits, mid-traffic
        time.sleep(1)
        server.start()
        time.sleep(2)
        stop.set()
        thread.join()
        redis = Redis.from_url(server.url)
        assert len(accepted) > 50 and refused > 0
        wait_for(lambda: _all_scored(redis, "redline", accepted), timeout=120, interval=0.5)
        counters = {k.decode(): int(v) for k, v in redis.hgetall("redline:counters").items()}
        assert counters["scored|injury|m"] == len(accepted)
    finally:
        stop.set()
        ctrl_c(serve)
        server.stop()


