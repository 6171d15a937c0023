"""A rolling update that adds a detector: a worker without it passes outputs asking for it on to one
that has it (workers.handoff), instead of failing them; with none, they fail as before."""

from __future__ import annotations

import dataclasses
import signal
import time
import uuid
from pathlib import Path

import pytest
import requests
from redis import Redis

from service.app import create_app
from service.core import Redline
from service.keys import Keys
from service.settings import Settings
from service.store import NewOutput
from workers.handoff import MAX_HANDOFFS
from workers.worker import build_worker

from .procs import redline_env, run_burst, start_api, start_worker, wait_for

pytestmark = pytest.mark.integration


def _queued_jobs(core: Redline, lane: str) -> list[str]:
    return core.queues.by_priority[lane].job_ids


def test_a_worker_without_a_detector_passes_its_outputs_to_one_with_it(
        redis: Redis, settings: Settings, user_models: Path) -> None:
    new_settings = dataclasses.replace(settings, models_dirs=(*settings.models_dirs, user_models))
    client = create_app(new_settings, redis).test_client()
    core = Redline(new_settings, redis)
    keys = core.keys
    asking = [{"id": f"p{i}", "model": "m", "response": "well damn", "detectors": ["injury", "profanity"]}
              for i in range(3)]
    plain = {"id": "plain", "model": "m", "response": "hi", "detectors": ["injury"]}
    assert client.post("/v1/outputs", json={"outputs": [*asking, plain]}).status_code == 202
    sync = client.post("/v1/score", json={"outputs": [{"id": "s0", "model": "m", "response": "damn",
                                                       "detectors": ["profanity"]}], "timeout_ms": 20})
    assert sync.status_code == 202 and [p["id"] for p in sync.get_json()["pending"]] == ["s0"]
    new = build_worker(redis, new_settings)  # beats (alive), takes no job yet
    old = build_worker(redis, settings)  # the previous release: no profanity
    old.work(burst=True, max_jobs=1)  # one batch: both jobs

    assert old.last_report is not None and old.last_report.handed_off == 4 and old.last_report.failed == 0
    records = {i: core.store.get(i) for i in ("p0", "p1", "p2", "s0", "plain")}
    assert {i: r["status"] for i, r in records.items() if r} == {
        "p0": "queued", "p1": "queued", "p2": "queued", "s0": "queued", "plain": "scored"}
    # Passed on once, not counted as an attempt (the reaper gives up after REDLINE_MAX_ATTEMPTS).
    assert {i: (records[i].get("handoffs"), records[i].get("attempts")) for i in ("p0", "p1", "p2", "s0")} == {
        i: ("1", None) for i in ("p0", "p1", "p2", "s0")}
    assert client.get("/v1/dead-letters").get_json()["outputs"] == []
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'redline_outputs_requeued_total{model="m",reason="handoff"} 4.0' in metrics
    assert 'redline_outputs_requeued_total{model="m",reason="abandoned"} 0.0' in metrics
    # The sync request's output goes back to the sync lane, the others to theirs, each under its new job.
    [high_job] = _queued_jobs(core, "high")
    [default_job] = _queued_jobs(core, "default")
    assert records["s0"]["job"] == high_job and {records[f"p{i}"]["job"] for i in range(3)} == {default_job}

    new.work(burst=True)
    for i in ("p0", "p1", "p2", "s0"):
        record = client.get(f"/v1/outputs/{i}").get_json()
        assert record["status"] == "scored" and record["batch"]["worker"] == new.scorer.worker, record
        assert record["scores"]["profanity"]["flagged"] and record["scores"]["profanity"]["version"] == "user-7"
    counters = core.store.counters()
    assert counters["scored|profanity|m"] == 4 and counters["scored|injury|m"] == 4 and "failed|m" not in counters
    assert redis.zcard(keys.pending) == 0

    # No live worker has it (the new one has stopped): the output fails at once, as before handoffs.
    client.post("/v1/outputs", json={"outputs": [{"id": "q0", "model": "m", "response": "damn",
                                                  "detectors": ["profanity"]}]})
    old.work(burst=True, max_jobs=1)
    failed = client.get("/v1/outputs/q0").get_json()
    assert failed["status"] == "failed" and failed["error"].endswith(": profanity"), failed

    # One passed on MAX_HANDOFFS times fails too, though a worker has it; a retry starts the count anew.
    client.post("/v1/outputs", json={"outputs": [{"id": "c0", "model": "m", "response": "damn",
                                                  "detectors": ["profanity"]}]})
    redis.hset(keys.output("c0"), "handoffs", MAX_HANDOFFS)
    later = build_worker(redis, new_settings)
    old.work(burst=True, max_jobs=1)
    assert client.get("/v1/outputs/c0").get_json()["status"] == "failed"
    assert client.post("/v1/dead-letters/retry", json={"ids": ["c0"]}).get_json()["requeued"] == ["c0"]
    assert redis.hget(keys.output("c0"), "handoffs") is None
    old.work(burst=True, max_jobs=1)
    assert redis.hget(keys.output("c0"), "handoffs") == b"1"
    later.work(burst=True)
    assert client.get("/v1/outputs/c0").get_json()["status"] == "scored"
    assert core.store.counters()["scored|profanity|m"] == 5


def test_a_rolling_update_that_adds_a_detector_fails_no_output(redis_url: str, shipped_models: Path,
                                                               user_models: Path, tmp_path: Path) -> None:
    # Real processes: the API already serves the added detector; a worker of each release runs. The new
    # one is paused (SIGSTOP) while outputs arrive, so the old one takes the jobs and must pass on those
    # it cannot score; resumed, the new one scores them. Each output is scored exactly once. (A job the
    # paused worker's blocking pop took stays with it, or goes to the reaper: scored once either way.
    # A long worker TTL keeps the paused worker alive to the old one on a slow machine.)
    prefix = "ho" + uuid.uuid4().hex[:8]
    redis = Redis.from_url(redis_url)
    both = [shipped_models, user_models]
    api, base = start_api(redline_env(redis_url, both, prefix), tmp_path / "api.log")
    new = start_worker(redline_env(redis_url, both, prefix, worker_ttl_s=60), tmp_path / "new.log", redis, prefix)
    old = start_worker(redline_env(redis_url, shipped_models, prefix, worker_ttl_s=60), tmp_path / "old.log",
                       redis, prefix)
    try:
        new.popen.send_signal(signal.SIGSTOP)
        ids = []
        for n in range(6):
            outputs = [{"model": "m", "response": f"well damn, turn {n}.{k}"} for k in range(4)]
            outputs.append({"model": "m", "response": f"the hike went fine {n}", "detectors": ["injury"]})
            r = requests.post(base + "/v1/outputs", json={"outputs": outputs}, timeout=30)
            assert r.status_code == 202, r.text
            ids += [o["id"] for o in r.json()["outputs"]]
        every = [i for n, i in enumerate(ids) if n % 5 != 4]  # asked for every detector, profanity included
        wait_for(lambda: sum(bool(redis.hget(f"{prefix}:output:{i}", "handoffs")) for i in every) >= 8, timeout=20)
        time.sleep(1.0)  # the old worker takes them again, passes them on again
        new.popen.send_signal(signal.SIGCONT)
        wait_for(lambda: all(redis.hget(f"{prefix}:output:{i}", "status") == b"scored" for i in ids), timeout=60)
        records = requests.get(base + "/v1/outputs", params={"id": ids}, timeout=30).json()["outputs"]
        by_id = {r["id"]: r for r in records}
        assert all(set(by_id[i]["scores"]) == {"injury", "deception", "sycophancy", "profanity"} for i in every)
        workers = {by_id[i]["batch"]["worker"] for i in every}
        assert len(workers) == 1 and str(new.popen.pid) in workers.pop().split(".")
        assert requests.get(base + "/v1/dead-letters", timeout=30).json()["outputs"] == []
        counters = {k.decode(): int(v) for k, v in redis.hgetall(Keys(prefix).counters).items()}
        assert counters["scored|profanity|m"] == len(every) and counters["scored|injury|m"] == len(ids)
        assert "failed|m" not in counters
    finally:
        new.popen.send_signal(signal.SIGCONT)
        for proc in (old, new, api):
            proc.stop()


def test_detector_missing_on_worker_fails_output_with_reason(redis: Redis, settings: Settings) -> None:
    # No worker at all has it: failed at once, naming it.
    core = Redline(settings, redis)
    out = NewOutput(id="x1", model="m", response="hi", detectors=["injury", "gone"])
    core.submit([out])
    run_burst(redis, settings)
    record = core.store.get("x1")
    assert record is not None and record["status"] == "failed" and "gone" in record["error"]


def test_a_job_leaves_the_outputs_moved_to_another_job_since(redis: Redis, settings: Settings) -> None:
    # A job whose outputs were passed on (or requeued by the reaper) scores none of them, in a batch or in
    # its own run: the job they were moved to does. Passing them on from a stale job would queue them twice.
    core = Redline(settings, redis)
    core.store.create([NewOutput(id="moved", model="m", response="hi", detectors=["injury"])], job_id="stale")
    assert core.store.reassign(["moved"], "current", handoff=True) == ["moved"]
    core.queues.enqueue(["moved"], "stale")
    run_burst(redis, settings)
    assert core.store.get("moved")["status"] == "queued"  # type: ignore[index]
    core.queues.enqueue(["moved"], "current")
    run_burst(redis, settings)
    assert core.store.get("moved")["status"] == "scored"  # type: ignore[index]
    assert core.store.counters()["scored|injury|m"] == 1 and redis.zcard(core.keys.pending) == 0
