"""Requeue outputs whose worker died: the recovery half of "every accepted output scored once".

An output stays in the pending set until its score (or failure) is written. If it has waited
longer than `requeue_after_s`, its job is neither waiting in a queue nor leased by a live
worker, nobody will ever score it: queue a new job for it. Scoring is idempotent, so a rare
requeue of an output that was in fact being scored costs work, never a double count.
"""

from __future__ import annotations

import logging
from typing import cast

from redis import Redis

from service.auth import tenant_of
from service.keys import Keys, text
from service.queueing import ScoreQueues, new_job_id
from service.store import QUEUED, OutputStore

log = logging.getLogger(__name__)


def requeue_abandoned(redis: Redis, store: OutputStore, queues: ScoreQueues, older_than_s: float,
                      chunk: int, limit: int = 5000, max_attempts: int = 5) -> int:
    """One pass; returns how many outputs were queued again. An output whose job was abandoned
    `max_attempts` times (its worker kept dying, or its job kept failing) is marked failed with the
    last job error and listed as a dead letter instead."""
    keys: Keys = store.keys
    now = store.clock()  # the clock `pending` was written by, whichever host wrote it
    raw_ids = cast("list[bytes]", redis.zrangebyscore(keys.pending, "-inf", now - older_than_s, start=0, num=limit))
    if not raw_ids:
        return 0
    ids = [text(i) for i in raw_ids]
    records = store.get_many(ids, ["id", "status", "job", "attempts"])
    gone = [i for i, r in zip(ids, records, strict=True) if not r or r.get("status") != QUEUED]
    store.drop_pending(gone)
    live = [r for r in records if r and r.get("status") == QUEUED]
    if not live:
        return 0
    waiting = {text(j) for q in queues.ordered for j in redis.lrange(q.key, 0, -1)}
    jobs = sorted({r.get("job", "") for r in live})
    with redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.exists(keys.lease(job))
        leased = {job for job, held in zip(jobs, pipe.execute(), strict=True) if held}
    lost = [r for r in live if r.get("job") not in waiting and r.get("job") not in leased]
    exhausted = [r for r in lost if int(r.get("attempts", 1)) >= max_attempts]
    for record in exhausted:
        reason = f"gave up after {max_attempts} scoring attempts; last error: {job_error(redis, record.get('job', ''))}"
        store.finish_failed({record["id"]: reason})  # lists it as a dead letter too
    by_tenant: dict[str, list[str]] = {}  # each tenant's back in its own lane (REDLINE_TENANT_FAIR_SHARE)
    for record in lost:
        if record not in exhausted:
            by_tenant.setdefault(tenant_of(record["id"]), []).append(record["id"])
    requeued = 0
    for tenant, orphans in sorted(by_tenant.items()):
        lane = queues.lane(tenant, store.backlog)
        for start in range(0, len(orphans), chunk):
            job_id = new_job_id()
            part = store.reassign(orphans[start:start + chunk], job_id)  # those still queued, as of now
            if part:
                queues.enqueue(part, job_id, lane)
                requeued += len(part)
    if requeued:
        log.warning("requeued %d abandoned outputs", requeued)
    return requeued


def job_error(redis: Redis, job_id: str) -> str:
    """The last line of a failed job's exception, or why there is none (its worker was killed)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return "its job is gone (worker killed?)"
    result = job.latest_result()
    text = (result.exc_string if result is not None and result.exc_string else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error recorded (worker killed or stopped mid-job)"
