"""GET /v1/dead-letters: what could not be scored, and why; POST /v1/dead-letters/retry: score it again."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, request
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from ..app import caller, core, json_body
from ..auth import Principal
from ..core import Redline, iso
from ..export import decode_cursor, encode_cursor
from ..keys import text
from ..queueing import priority_of
from ..store import SCORED
from ..validation import parse_retry, query_limit, single_query_value

bp = Blueprint("dead_letters", __name__)


@bp.get("/v1/dead-letters")
def dead_letters() -> dict[str, Any]:
    """Outputs given up on (status failed, with the reason), newest first, `limit` at a time (default
    100, at most 1000) with `next` for the page after; and, on the first page, scoring jobs that raised
    (RQ's failed job registry, with the exception) while some of their outputs are still unscored."""
    redline, who = core(), caller()
    limit = query_limit(request.args.getlist("limit"), default=100, most=1000)
    raw = single_query_value(request.args.getlist("cursor"), "cursor")
    after = None
    if raw is not None:  # cursors name public ids, as GET /v1/labels's do
        at, public = decode_cursor(raw)
        after = (at, who.output_id(public))
    dead, more = _newest_dead(redline.redis, redline.keys.dead, who, limit, after)
    records = redline.store.get_many([i for i, _ in dead], ["id", "status", "error", "model"])
    outputs = [{"id": who.public_id(r["id"]), "model": who.public_model(r.get("model", "")), "status": r.get("status"),
                "error": r.get("error"), "failed_at": iso(t)} for r, (_, t) in zip(records, dead, strict=True) if r]
    # The cursor names the last entry read, not a position: retries take entries off the set between pages.
    page = {"outputs": outputs, "next": encode_cursor((dead[-1][1], who.public_id(dead[-1][0]))) if more else None}
    return {**page, "jobs": _failed_jobs(redline, who, limit) if after is None else []}


def _failed_jobs(redline: Redline, who: Principal, limit: int) -> list[dict[str, Any]]:
    """Scoring jobs that raised while some of their outputs are still unscored, newest first."""
    failed: list[tuple[str, Job, list[str]]] = []  # (queue, job, the caller's output ids in it)
    for lane, queue in redline.queues.by_priority.items():
        job_ids = FailedJobRegistry(queue=queue).get_job_ids(0, limit - 1)
        for job in Job.fetch_many(job_ids, connection=redline.redis, serializer=JSONSerializer):
            if job is None:  # expired between listing and fetching
                continue
            ids = job.args[0] if job.args and isinstance(job.args[0], list) else []
            owned = [i for i in ids if isinstance(i, str) and who.owns(i)]
            if ids and not owned:
                continue  # another tenant's job
            failed.append((priority_of(lane), job, owned))
    in_jobs = sorted({i for _, _, owned in failed for i in owned})
    status = {i: (r or {}).get("status") for i, r in zip(in_jobs, redline.store.get_many(in_jobs, ["status"]),
                                                           strict=True)}
    jobs = []
    for priority, job, owned in failed:
        if owned and all(status[i] in (SCORED, None) for i in owned):
            # Nothing is missing: a retry, or the batch these outputs rode in, scored them all (e.g.
            # Redis blipped while the job's own run was reading, and RQ recorded that error), or they
            # are gone (erased, or expired).
            continue
        result = job.latest_result()
        error = (result.exc_string or "") if result is not None else ""
        lines = [line for line in error.strip().splitlines() if line.strip()]
        jobs.append({"id": job.id, "queue": priority, "error": lines[-1] if lines else None,
                     # An erased output is not named: RQ keeps a failed job's record for days.
                     "output_ids": [who.public_id(i) for i in owned if status[i] is not None],
                     "failed_at": iso(job.ended_at.timestamp()) if job.ended_at else None})
    return jobs[:limit]


@bp.post("/v1/dead-letters/retry")
def retry() -> dict[str, Any]:
    """Failed outputs, named by id, are queued for scoring again (see `Redline.retry_failed`)."""
    redline = core()
    return redline.retry_failed(parse_retry(json_body(), redline.settings), caller())


def _newest_dead(redis: Redis, key: str, who: Principal, limit: int,
                 after: tuple[float, str] | None) -> tuple[list[tuple[str, float]], bool]:
    """The caller's `limit` newest dead letters older than `after` (failed_at, id: the last one of the
    page before), and whether more follow. Read a page at a time: the set holds every tenant's failures
    for as long as records are kept, and reading it whole on every request would grow with it."""
    found: list[tuple[str, float]] = []
    newest: str = "+inf"
    if after is not None:
        at, last = after
        # Equal scores come newest first in reverse byte order of the member (ZREVRANGEBYSCORE's order).
        ties = cast("list[bytes]", redis.zrangebyscore(key, at, at))
        found += [(text(i), at) for i in reversed(ties) if i < last.encode() and who.owns(text(i))]
        newest = f"({at!r}"
    start, page = 0, max(limit, 500)
    while len(found) <= limit:
        replies = cast("list[tuple[bytes, float]]",
                       redis.zrevrangebyscore(key, newest, "-inf", start=start, num=page, withscores=True))
        found += [(text(i), t) for i, t in replies if who.owns(text(i))]
        if len(replies) < page:
            break
        start += page
    return found[:limit], len(found) > limit
