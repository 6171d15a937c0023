"""RQ job functions. They take JSON-able ids only; the API enqueues them by dotted path."""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from . import runtime
from .redis_loss import riding_out_redis_loss


def score_outputs(output_ids: list[str]) -> dict[str, Any]:
    """Score these outputs. Those a batching worker already scored, or moved to another job, are
    skipped, so this is cheap when the job's outputs rode along in an earlier batch, and safe to run twice."""
    job = get_current_job()
    assert job is not None, "score_outputs runs inside an RQ worker"
    scorer = runtime.current(job.connection)
    # Wait out a Redis restart here too: raising would have RQ record the ConnectionError as this
    # job's failure (a dead letter) once Redis is back, and leave its outputs to the reaper. A stop
    # ends the wait at once (ScoringWorker.set_shutdown_requested_date), the job timeout at the
    # latest; the reaper then requeues the outputs.
    report = riding_out_redis_loss(job.connection, lambda: scorer.score(output_ids, {job.id}), f"running job {job.id}",
                                   probe=scorer.store.keys.write_probe)
    return {"batch": report.batch_id, "scored": report.scored, "failed": report.failed}
