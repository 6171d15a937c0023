"""GET /v1/dead-letters: what could not be scored, and why."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, request
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from ..app import caller, core
from ..core import iso
from ..errors import ValidationFailed
from ..keys import text

bp = Blueprint("dead_letters", __name__)


@bp.get("/v1/dead-letters")
def dead_letters() -> dict[str, Any]:
    """Outputs given up on (status failed, with the reason) and scoring jobs that raised (RQ's failed
    job registry, with the exception). Newest first; `limit` (default 100, at most 1000)."""
    redline, who = core(), caller()
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ValidationFailed("'limit' must be an integer from 1 to 1000")
    limit = int(raw)
    replies = cast("list[tuple[bytes, float]]", redline.redis.zrevrange(redline.keys.dead, 0, -1, withscores=True))
    dead = [(text(i), t) for i, t in replies if who.owns(text(i))][:limit]
    records = redline.store.get_many([i for i, _ in dead], ["id", "status", "error", "model"])
    outputs = [{"id": who.public_id(r["id"]), "model": who.public_model(r.get("model", "")), "status": r.get("status"),
                "error": r.get("error"), "failed_at": iso(t)} for r, (_, t) in zip(records, dead, strict=True) if r]
    jobs = []
    for priority, queue in redline.queues.by_priority.items():
        registry = FailedJobRegistry(queue=queue)
        ids = registry.get_job_ids(0, limit - 1)
        for job in Job.fetch_many(ids, connection=redline.redis, serializer=JSONSerializer):
            if job is None:  # expired between listing and fetching
                continue
            result = job.latest_result()
            error = (result.exc_string or "") if result is not None else ""
            lines = [line for line in error.strip().splitlines() if line.strip()]
            ids = job.args[0] if job.args and isinstance(job.args[0], list) else []
            mine = [who.public_id(i) for i in ids if isinstance(i, str) and who.owns(i)]
            if ids and not mine:
                continue  # another tenant's job
            jobs.append({"id": job.id, "queue": priority, "error": lines[-1] if lines else None,
                         "output_ids": mine, "failed_at": iso(job.ended_at.timestamp()) if job.ended_at else None})
    return {"outputs": outputs, "jobs": jobs[:limit]}
