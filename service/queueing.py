"""RQ queues and scoring jobs. Jobs use the JSON serializer and carry output ids, never texts."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from .keys import Keys
from .settings import Settings
from .tenant_backlog import TenantBacklog

# The API enqueues by dotted path so it never imports the worker code (or onnxruntime).
SCORE_JOB = "workers.jobs.score_outputs"
HIGH, DEFAULT, BULK = "high", "default", "bulk"
# The bulk lane holds the submissions of a tenant past its fair share of the backlog
# (REDLINE_TENANT_FAIR_SHARE), so that one tenant's flood does not delay the others'. It is
# BULK_SHARDS queues, a tenant's always the same one (a stable hash), which workers take in turn
# (stochastic fairness queueing): two tenants flooding at once are then drained side by side, not one
# behind the other, unless they hash to the same queue. The first keeps the name `bulk`, which the
# workers of the release before the shards drain.
BULK_SHARDS = 8
BULK_LANES = (BULK, *(f"{BULK}-{i}" for i in range(1, BULK_SHARDS)))
# Lanes in the order workers drain them.
PRIORITIES = (HIGH, DEFAULT, *BULK_LANES)
# Strict priority would starve the bulk lane while other tenants keep the default lane busy: one
# batch in BULK_EVERY starts from it instead, so a flooding tenant still gets scored.
BULK_EVERY = 4
# Finished jobs carry only a small summary; keep them briefly, failures long enough to inspect.
RESULT_TTL_S = 600
FAILURE_TTL_S = 7 * 24 * 3600


def new_job_id() -> str:
    return uuid.uuid4().hex


def bulk_lane(tenant: str) -> str:
    """The bulk lane of `tenant`'s outputs: by crc32, the same in every process and release."""
    return BULK_LANES[zlib.crc32(tenant.encode()) % BULK_SHARDS]


def priority_of(lane: str) -> str:
    """`high`, `default` or `bulk`: what the metrics and dead letters call a lane."""
    return BULK if lane in BULK_LANES else lane


class ScoreQueues:
    """The high (sync scoring), default and bulk queues of one deployment, by lane."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        keys = Keys(settings.queue_prefix)
        self.settings = settings
        self.by_priority = {p: Queue(keys.queue_name(p), connection=redis, serializer=JSONSerializer)
                            for p in PRIORITIES}

    @property
    def ordered(self) -> list[Queue]:
        """Queues in the order workers should drain them: sync requests first, the bulk lanes last."""
        return [self.by_priority[p] for p in PRIORITIES]

    def lane(self, tenant: str, backlog: TenantBacklog) -> str:
        """The lane for a job of `tenant`'s outputs, read once they are stored (so the submission that
        takes its tenant past REDLINE_TENANT_FAIR_SHARE is the first to wait): DEFAULT, or past the
        share the tenant's bulk lane (`bulk_lane`). No Redis call while every tenant shares one lane."""
        share = self.settings.tenant_fair_share
        return bulk_lane(tenant) if share and backlog.count(tenant) > share else DEFAULT

    def enqueue(self, output_ids: Sequence[str], job_id: str, lane: str = DEFAULT) -> None:
        """Queue one scoring job for these ids (the records must already be stored)."""
        queue = self.by_priority[lane]
        queue.enqueue_call(SCORE_JOB, args=(list(output_ids),), job_id=job_id,
                           timeout=self.settings.job_timeout_s, result_ttl=RESULT_TTL_S,
                           failure_ttl=FAILURE_TTL_S, ttl=self.settings.record_ttl_s)

    def depth(self) -> int:
        """Jobs waiting in all queues."""
        return sum(q.count for q in self.ordered)
