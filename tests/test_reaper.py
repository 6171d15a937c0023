"""The reaper in process against a real Redis: it requeues the outputs of lost jobs, in their tenant's
lane, and only those still queued."""

import dataclasses
import time

import pytest
from redis import Redis

from service.core import Redline
from service.keys import text
from service.queueing import bulk_lane
from service.settings import Settings
from service.store import NewOutput
from workers.reaper import requeue_abandoned

from .procs import run_burst


def test_reaper_requeues_outputs_whose_job_was_lost(redis: Redis, settings: Settings) -> None:
    core = Redline(settings, redis)
    lost = [NewOutput(id=f"lost{i}", model="m", response="hello", detectors=["injury"]) for i in range(3)]
    held = [NewOutput(id="held", model="m", response="hello", detectors=["injury"])]
    # Stored but never queued: exactly what a worker dying after popping the job leaves behind.
    core.store.create(lost, job_id="dead-job")
    core.store.create(held, job_id="live-job")
    redis.set(core.keys.lease("live-job"), "someone", ex=30)
    assert requeue_abandoned(redis, core.store, core.queues, older_than_s=3600, chunk=32) == 0  # too young
    time.sleep(0.01)
    assert requeue_abandoned(redis, core.store, core.queues, older_than_s=0, chunk=32) == 3
    assert requeue_abandoned(redis, core.store, core.queues, older_than_s=0, chunk=32) == 0  # now queued
    assert core.store.counters()["requeued|abandoned|m"] == 3
    run_burst(redis, settings)
    assert [core.store.get(f"lost{i}")["status"] for i in range(3)] == ["scored"] * 3  # type: ignore[index]
    assert core.store.get("held")["status"] == "queued"  # type: ignore[index]
    assert core.store.counters()["scored|injury|m"] == 3


def test_the_reaper_requeues_each_tenants_outputs_in_its_own_lane(redis: Redis, settings: Settings) -> None:
    # A tenant past its fair share whose job was abandoned (its worker killed) waits in the bulk lane
    # again, rather than jumping ahead of the other tenants' outputs.
    core = Redline(settings=dataclasses.replace(settings, tenant_fair_share=2), redis=redis)
    core.store.create([NewOutput(id=f"a~{i}", model="a~m", response="hello", detectors=["injury"]) for i in range(3)],
                      job_id="dead-job")
    core.store.create([NewOutput(id="b~0", model="b~m", response="hello", detectors=["injury"])], job_id="dead-job")
    time.sleep(0.01)
    assert requeue_abandoned(redis, core.store, core.queues, older_than_s=0, chunk=32) == 4
    jobs = {p: [text(j) for j in redis.lrange(q.key, 0, -1)] for p, q in core.queues.by_priority.items()}
    assert {lane: len(j) for lane, j in jobs.items() if j} == {bulk_lane("a"): 1, "default": 1}
    assert core.store.get("a~0")["job"] == jobs[bulk_lane("a")][0]  # type: ignore[index]
    assert core.store.get("b~0")["job"] == jobs["default"][0]  # type: ignore[index]


def test_the_reaper_leaves_outputs_that_expired_or_were_scored_after_it_read_them(
        redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    core = Redline(settings, redis)
    core.store.create([NewOutput(id=f"late{i}", model="m", response="hello", detectors=["injury"]) for i in range(3)],
                      job_id="dead-job")
    read = core.store.get_many

    def read_then_change(ids: list[str], fields: list[str] | None = None) -> list[dict[str, object] | None]:
        rows = read(ids, fields)
        # Between the reaper's read and its write: late0's record expires, late1 is scored elsewhere.
        redis.delete(core.keys.output("late0"))
        redis.hset(core.keys.output("late1"), "status", "scored")
        return rows

    monkeypatch.setattr(core.store, "get_many", read_then_change)
    assert requeue_abandoned(redis, core.store, core.queues, older_than_s=0, chunk=32) == 1
    monkeypatch.undo()
    # A plain HSET recreated late0 as a partial record with no TTL (never to expire); late1 went to a new job.
    assert not redis.exists(core.keys.output("late0"))
    assert redis.hget(core.keys.output("late1"), "job") == b"dead-job"
    assert redis.hget(core.keys.output("late2"), "attempts") == b"1"
    run_burst(redis, settings)
    assert core.store.get("late2")["status"] == "scored"  # type: ignore[index]
    assert core.store.counters()["scored|injury|m"] == 1
