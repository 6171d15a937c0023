"""RQ queues and scoring jobs. Jobs use the JSON serializer and carry output ids, never texts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from .keys import Keys
from .settings import Settings

# The API enqueues by dotted path so it never imports the worker code (or onnxruntime).
SCORE_JOB = "workers.jobs.score_outputs"
HIGH, DEFAULT = "high", "default"
PRIORITIES = (HIGH, DEFAULT)
# Finished jobs carry only a small summary; keep them briefly, failures long enough to inspect.
RESULT_TTL_S = 600
FAILURE_TTL_S = 7 * 24 * 3600


def new_job_id() -> str:
    return uuid.uuid4().hex


class ScoreQueues:
    """The high (sync scoring) and default queues of one deployment."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        keys = Keys(settings.queue_prefix)
        self.settings = settings
        self.by_priority = {p: Queue(keys.queue_name(p), connection=redis, serializer=JSONSerializer)
                            for p in PRIORITIES}

    @property
    def ordered(self) -> list[Queue]:
        """Queues in the order workers should drain them: sync requests first."""
        return [self.by_priority[p] for p in PRIORITIES]

    def enqueue(self, output_ids: Sequence[str], job_id: str, priority: str = DEFAULT) -> None:
        """Queue one scoring job for these ids (the records must already be stored)."""
        queue = self.by_priority[priority]
        queue.enqueue_call(SCORE_JOB, args=(list(output_ids),), job_id=job_id,
                           timeout=self.settings.job_timeout_s, result_ttl=RESULT_TTL_S,
                           failure_ttl=FAILURE_TTL_S, ttl=self.settings.record_ttl_s)

    def depth(self) -> int:
        """Jobs waiting in all queues."""
        return sum(q.count for q in self.ordered)
