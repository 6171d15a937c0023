"""RQ job functions. They take JSON-able ids only; the API enqueues them by dotted path."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from . import runtime


def score_outputs(output_ids: list[str]) -> dict[str, Any]:
    """Score these outputs. Those a batching worker already scored are skipped, so this is cheap
    when the job's outputs rode along in an earlier batch, and safe to run twice."""
    job = get_current_job()
    assert job is not None, "score_outputs runs inside an RQ worker"
    report = runtime.current(job.connection).score(output_ids)
    return {"batch": report.batch_id, "scored": report.scored, "failed": report.failed}
