"""The lanes workers drain (service.queueing, ScoringWorker's lane order) against a real Redis: a tenant
past its fair share waits in its bulk queue, which is still drained, and tenants past it at once share
the bulk batches."""

import dataclasses

from redis import Redis

from service.core import Redline
from service.keys import text
from service.queueing import bulk_lane
from service.settings import Settings
from service.store import NewOutput
from workers.worker import build_worker

from .procs import run_burst

TEXTS = ["bleeding and a broken arm", "a calm day in the park"]


def test_a_tenant_past_its_fair_share_waits_in_the_bulk_lane_which_is_still_drained(
        redis: Redis, settings: Settings) -> None:
    # One job a batch (2 outputs each, max_batch 2), so the order batches are scored in is the lanes' order.
    settings = dataclasses.replace(settings, tenant_fair_share=4, max_batch=2)
    core = Redline(settings, redis)
    jobs_of: dict[str, str] = {}

    def submit(tenant: str, n: int) -> None:
        outs = [NewOutput(id=f"{tenant}~{n}-{i}", model="m", response=TEXTS[i]) for i in range(2)]
        core.submit(outs)
        jobs_of[f"{tenant}{n}"] = core.store.get(outs[0].id)["job"]  # type: ignore[index]

    for n in range(1, 5):  # a: 2, 4, then 6 and 8 waiting: its third and fourth requests are past its share
        submit("a", n)
    for tenant in ("b", "c"):
        for n in (1, 2):
            submit(tenant, n)
    lanes = {p: [text(j) for j in redis.lrange(q.key, 0, -1)] for p, q in core.queues.by_priority.items()}
    name = {job: request for request, job in jobs_of.items()}
    assert [name[j] for j in lanes["default"]] == ["a1", "a2", "b1", "b2", "c1", "c2"]
    assert [name[j] for j in lanes[bulk_lane("a")]] == ["a3", "a4"]
    assert core.store.backlog.counts() == {"a": 8, "b": 4, "c": 4}

    run_burst(redis, settings)
    records = [r for r in core.store.get_many([f"{t}~{n}-0" for t, n in (
        ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2), ("c", 1), ("c", 2))]) if r]
    assert all(r["status"] == "scored" for r in records) and len(records) == 8
    order = [r["id"].replace("~", "").split("-")[0] for r in sorted(records, key=lambda r: r["scored_at"])]
    # b and c are not queued behind a's excess; one batch in four (queueing.BULK_EVERY) still takes it.
    assert order == ["a1", "a2", "b1", "a3", "b2", "c1", "c2", "a4"]
    assert core.store.backlog.counts() == {"a": 0, "b": 0, "c": 0}


def test_tenants_past_their_share_at_once_are_drained_side_by_side(redis: Redis, settings: Settings) -> None:
    # Two tenants flood at once. In one bulk queue the second would wait for all of the first's excess;
    # in their own bulk lanes (a stable hash: a and b differ) the bulk batches take them in turn.
    assert bulk_lane("a") != bulk_lane("b")
    settings = dataclasses.replace(settings, tenant_fair_share=2, max_batch=2)  # one 2-output job a batch
    core = Redline(settings, redis)
    for tenant, requests in (("a", 5), ("b", 3)):  # each one's first request is within its share
        for n in range(1, requests + 1):
            core.submit([NewOutput(id=f"{tenant}~{n}-{i}", model="m", response=TEXTS[i]) for i in range(2)])
    depth = {lane: q.count for lane, q in core.queues.by_priority.items() if q.count}
    assert depth == {"default": 2, bulk_lane("a"): 4, bulk_lane("b"): 2}
    run_burst(redis, settings)
    records = [r for r in core.store.get_many([f"{t}~{n}-0" for t, k in (("a", 5), ("b", 3))
                                               for n in range(1, k + 1)]) if r]
    assert len(records) == 8 and all(r["status"] == "scored" for r in records)
    order = [r["id"].replace("~", "").split("-")[0] for r in sorted(records, key=lambda r: r["scored_at"])]
    assert order == ["a1", "b1", "b2", "a2", "b3", "a3", "a4", "a5"]  # one FIFO: a1 b1 a2 a3 a4 a5 b2 b3


def test_a_batch_that_began_outside_the_bulk_lane_takes_no_bulk_job(redis: Redis, settings: Settings) -> None:
    # Filling it from the bulk lane would make the other tenants' outputs wait for a backfill job's scores.
    settings = dataclasses.replace(settings, tenant_fair_share=2, max_batch=64)
    core = Redline(settings, redis)
    for tenant, n in (("a", 1), ("a", 2), ("b", 1)):  # a's second request is past its share: bulk
        core.submit([NewOutput(id=f"{tenant}~{n}-{i}", model="m", response=TEXTS[i]) for i in range(2)])
    assert core.queues.by_priority[bulk_lane("a")].count == 1
    run_burst(redis, settings)
    batch = {i: r["batch"]["id"] for i, r in zip(("a1", "a2", "b1"), core.store.get_many(["a~1-0", "a~2-0", "b~1-0"]),
                                                   strict=True) if r}
    assert batch["a1"] == batch["b1"] != batch["a2"]  # a's bulk job was scored in a batch of its own


def test_a_worker_start_counts_the_pending_set_by_tenant_once(redis: Redis, settings: Settings) -> None:
    keys = Redline(settings, redis).keys
    redis.zadd(keys.pending, {"t~queued-by-an-earlier-release": 1.0})
    build_worker(redis, settings).heart.stop()
    assert Redline(settings, redis).store.backlog.counts() == {"t": 1}
    assert redis.get(keys.pending_counted) == b"1"
