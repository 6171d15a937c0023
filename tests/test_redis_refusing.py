"""A Redis that stops answering (the API answers a prompt 503), or that answers but refuses writes for
a while: full (maxmemory under noeviction) or read-only (a replica, as after a failover). Workers wait
with their models loaded, as for a lost Redis, and score what was accepted exactly once when writes are
taken again; before, they crashed (at start, on their first heartbeat) or turned the batch into failed
jobs."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from service.core import Redline
from service.embedded_redis import EmbeddedRedis
from service.store import NewOutput
from workers.worker import build_worker

from .procs import Proc, free_port, redline_env, start_api, wait_for


def refuse_writes(redis: Redis, how: str) -> Callable[[], None]:
    """Make `redis` refuse writes now; returns what makes it take them again."""
    if how == "full":
        redis.config_set("maxmemory", "1")  # below what it uses: every write is OOM under noeviction
        return lambda: redis.config_set("maxmemory", "0")
    redis.replicaof("127.0.0.1", str(free_port()))  # a replica of nobody keeps its data and is read-only
    return lambda: redis.replicaof("NO", "ONE")


def submit(core: Redline, n: int) -> list[str]:
    outs = [NewOutput(id=f"o{i}", model="m", response="a broken arm" if i % 2 else "a calm day",
                      detectors=["injury"]) for i in range(n)]
    core.submit(outs)
    return [o.id for o in outs]


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_batch_whose_write_is_refused_waits_and_is_written_once(
        own_redis: tuple[EmbeddedRedis, Redline], how: str, caplog: pytest.LogCaptureFixture) -> None:
    _, core = own_redis
    ids = submit(core, 6)
    worker = build_worker(core.redis, core.settings)
    write = worker.scorer.store.finish_scored
    writes: list[int | str] = []

    def refused_before_the_first_write(*args: Any, **kwargs: Any) -> int:
        if not writes:  # inference is done; Redis refuses writes now, and takes them 1.5 s later
            restore = refuse_writes(Redis.from_url(core.settings.redis_url), how)
            threading.Timer(1.5, restore).start()
        try:
            written = write(*args, **kwargs)
        except Exception as exc:
            writes.append(type(exc).__name__)
            raise
        writes.append(written)
        return written

    worker.scorer.store.finish_scored = refused_before_the_first_write  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="workers"):
        worker.work(burst=True)
    records = core.store.get_many(ids)
    assert [r["status"] if r else None for r in records] == ["scored"] * len(ids)
    assert len({r["batch"]["id"] for r in records if r}) == 1  # one batch, written on its second try
    refused = "OutOfMemoryError" if how == "full" else "ReadOnlyError"
    assert writes[:2] == [refused, len(ids)] and set(writes[2:]) <= {0}
    assert core.store.counters()["scored|injury|m"] == len(ids)
    assert "lost Redis while scoring a batch of 6 outputs" in caplog.text and "Redis answers" in caplog.text
    assert "per-job" not in caplog.text  # the batch did not fall back to failing job by job


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_worker_started_while_redis_refuses_writes_waits_then_scores_everything_once(
        own_redis: tuple[EmbeddedRedis, Redline], how: str, synthetic_models: Path, tmp_path: Path) -> None:
    server, core = own_redis
    ids = submit(core, 5)
    restore = refuse_writes(core.redis, how)
    env = redline_env(server.url, synthetic_models, core.settings.queue_prefix, log_level="INFO")
    worker = Proc([sys.executable, "-m", "service.cli", "worker"], env, tmp_path / "worker.log")
    try:
        wait_for(lambda: "waiting for Redis" in worker.log(), timeout=60)
        time.sleep(2)  # several probes, each refused
        assert worker.alive(), worker.log()
        assert [r["status"] for r in core.store.get_many(ids)] == ["queued"] * 5  # type: ignore[index]
        restore()
        wait_for(lambda: all(r and r["status"] == "scored" for r in core.store.get_many(ids)), timeout=60)
        assert core.store.counters()["scored|injury|m"] == 5
        assert worker.alive(), worker.log()
    finally:
        assert worker.stop() == 0, worker.log()
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize("step", ["heartbeat", "set_state", "run_maintenance_tasks"])
def test_rqs_bookkeeping_between_jobs_waits_out_refused_writes(
        own_redis: tuple[EmbeddedRedis, Redline], step: str, caplog: pytest.LogCaptureFixture) -> None:
    # RQ's loop calls these between jobs, outside any job: a refused write there used to end the
    # worker ("found an unhandled exception, quitting"), e.g. an idle worker's heartbeat while Redis
    # stayed full.
    _, core = own_redis
    worker = build_worker(core.redis, core.settings)
    calls = {"heartbeat": lambda: worker.heartbeat(), "set_state": lambda: worker.set_state("idle"),
             "run_maintenance_tasks": worker.run_maintenance_tasks}
    restore = refuse_writes(core.redis, "full")
    threading.Timer(1.5, restore).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="workers"):
        calls[step]()
    assert time.monotonic() - started >= 1.0  # it waited for the refusal to end, then went on
    assert "lost Redis while" in caplog.text and "Redis answers" in caplog.text
    worker.heart.stop()
    worker.teardown()


@pytest.mark.parametrize("how, says", [("full", "storage is full (Redis maxmemory reached)"),
                                       ("read-only", "storage is read-only (Redis is a replica)")])
def test_the_api_answers_503_naming_the_refusal_and_stores_nothing(
        own_redis: tuple[EmbeddedRedis, Redline], how: str, says: str, synthetic_models: Path, tmp_path: Path) -> None:
    server, core = own_redis
    env = redline_env(server.url, synthetic_models, core.settings.queue_prefix)
    api, base = start_api(env, tmp_path / "api.log")
    try:
        restore = refuse_writes(core.redis, how)
        r = requests.post(base + "/v1/outputs", json={"outputs": [{"model": "m", "response": "hi"}]}, timeout=10)
        restore()
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert r.json()["error"]["code"] == "unavailable" and says in r.json()["error"]["message"]
        assert "nothing was stored" in r.json()["error"]["message"]
        assert not list(core.redis.scan_iter(f"{core.settings.queue_prefix}:output:*"))
    finally:
        api.stop()


def _submit(base: str, response: str) -> requests.Response:
    return requests.post(base + "/v1/outputs", json={"outputs": [{"model": "m", "response": response}]}, timeout=30)


def test_a_redis_that_stops_answering_is_a_prompt_503_not_a_hung_request(
        own_redis: tuple[EmbeddedRedis, Redline], synthetic_models: Path, tmp_path: Path) -> None:
    # SIGSTOP: connections stay open and nothing answers, as when the network path to Redis black-holes.
    # redis-py before 8 had no socket timeout, so each API thread then waited on its socket until
    # gunicorn killed the process (the request timeout, 40 s) and the client lost its connection;
    # requirements.txt now asks for redis-py 8, whose 5 s default bounds every call.
    server, core = own_redis
    env = redline_env(server.url, synthetic_models, core.settings.queue_prefix)
    api, base = start_api(env, tmp_path / "api.log")
    assert server.process is not None
    try:
        assert _submit(base, "warm-up").status_code == 202
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = _submit(base, "hi")
            took = time.monotonic() - started
            started = time.monotonic()
            scrape = requests.get(base + "/metrics", timeout=60)
            scrape_took = time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert took < 20, took  # a few seconds of socket timeout, not gunicorn's 40 s
        # A scrape still answers, saying Redis is out, within Prometheus's default 10 s scrape timeout:
        # it waits on Redis once (5 s), not once per read.
        assert scrape.status_code == 200 and "\nredline_redis_up 0.0\n" in scrape.text
        assert scrape_took < 10, scrape_took
        assert _submit(base, "after").status_code == 202  # and it recovers
    finally:
        api.stop()
