"""The one owner of Redis key names and their lifetimes.

Every key Redline writes is built here, under one prefix, so a deployment can share a
Redis with other software and tests can clean up exactly what they created.
RQ's own keys (`rq:*`) are named by RQ; only the queue names come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Detector names and output ids are embedded in keys, so they are restricted to these characters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

# A sync waiter's notification list lives only as long as the longest wait plus slack.
NOTIFY_TTL_S = 120
# Worker liveness keys expire on their own: a SIGKILLed worker disappears after this many seconds.
LIVENESS_REFRESH_S = 2.0


def text(reply: bytes | str) -> str:
    """A Redis reply as text. Redline's clients return bytes (RQ needs them); redis-py types replies as
    `bytes | str`, so every decode goes through here."""
    return reply.decode() if isinstance(reply, bytes) else reply


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix (`Settings.queue_prefix`)."""

    prefix: str = "redline"

    def output(self, output_id: str) -> str:
        """Hash: one accepted output, its texts, status and scores."""
        return f"{self.prefix}:output:{output_id}"

    @property
    def pending(self) -> str:
        """Sorted set: ids accepted but not yet scored or failed, scored by (re)queue time."""
        return f"{self.prefix}:pending"

    @property
    def pending_by_tenant(self) -> str:
        """Hash: tenant -> how many of its outputs are in `pending` (`default`: the open mode's), kept in
        step with it by every script that adds to or takes from it (store_scripts.PENDING)."""
        return f"{self.prefix}:pending-by-tenant"

    @property
    def pending_counted(self) -> str:
        """String, no TTL: set once `pending_by_tenant` was counted from `pending` itself (TenantBacklog)."""
        return f"{self.prefix}:pending-by-tenant-counted"

    @property
    def counters(self) -> str:
        """Hash: exactly-once counters (`scored|model|detector`, `flagged|...`) bumped with each score write."""
        return f"{self.prefix}:counters"

    def notify(self, token: str) -> str:
        """List: ids of one sync request, pushed as they get scored."""
        return f"{self.prefix}:notify:{token}"

    def lease(self, job_id: str) -> str:
        """String with TTL: a live worker holds this job; absent means nobody is working on it."""
        return f"{self.prefix}:lease:{job_id}"

    @property
    def workers(self) -> str:
        """Sorted set: scoring worker names by last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    @property
    def worker_detectors(self) -> str:
        """Hash: worker name -> JSON {detector: version} it loaded; forgotten with its name in `workers`."""
        return f"{self.prefix}:worker-detectors"

    @property
    def worker_files(self) -> str:
        """Hash: worker name -> JSON {detector: fingerprint of its files}; kept like `worker_detectors`."""
        return f"{self.prefix}:worker-files"

    @property
    def dead(self) -> str:
        """Sorted set: failed outputs (given up on after REDLINE_MAX_ATTEMPTS attempts, or failed on their
        own: a detector the worker lacks, inference that raised) by time of failure; kept as long as records."""
        return f"{self.prefix}:dead"

    @property
    def write_probe(self) -> str:
        """String with a short TTL: written by a worker waiting for Redis to take writes again."""
        return f"{self.prefix}:write-probe"

    @property
    def reaper_lock(self) -> str:
        """String with TTL: only one process requeues abandoned outputs at a time."""
        return f"{self.prefix}:reaper-lock"

    @property
    def quality_snapshot(self) -> str:
        """Hash with TTL: the latest quality gauges (rendered for /metrics) and listing rows (GET /v1/monitor),
        with when they were computed."""
        return f"{self.prefix}:quality-snapshot"

    @property
    def quality_refresh_lock(self) -> str:
        """String with TTL: only one API process recomputes the quality gauges at a time."""
        return f"{self.prefix}:quality-refresh-lock"

    # Monitoring windows and score histories, one per (model, detector, detector version): a new
    # version's scores and threshold are a different classifier, whose quality must not be averaged
    # with the old one's. "model|detector|version" cannot collide: neither name may contain '|', and
    # the version comes last. The label script knows an output's version only inside Redis (from its
    # stored scores), so it appends the version to `window_base` itself: window = base + version.
    def window_base(self, model: str, detector: str) -> str:
        return f"{self.prefix}:window:{model}|{detector}|"

    def window(self, model: str, detector: str, version: str) -> str:
        """Sorted set by created_at: labeled+scored outputs, member `id|` + 5 little-endian doubles
        (score, label, weight, labeled_at, created_at)."""
        return self.window_base(model, detector) + version

    def window_index_base(self, model: str, detector: str) -> str:
        return f"{self.prefix}:window-index:{model}|{detector}|"

    def window_index(self, model: str, detector: str, version: str) -> str:
        """Hash: output id -> its member in `window`, so a changed label replaces the old entry."""
        return self.window_index_base(model, detector) + version

    def scores_base(self, model: str, detector: str) -> str:
        return f"{self.prefix}:scores:{model}|{detector}|"

    def scores(self, model: str, detector: str, version: str) -> str:
        """Sorted set by created_at: every scored output, member `id|` + score as a little-endian double."""
        return self.scores_base(model, detector) + version

    def version_claim(self, detector: str, version: str) -> str:
        """String with TTL: the fingerprint (`detector_config.fingerprints`) of what scores `detector` at
        `version`, claimed by the first worker to load it; a worker with another one refuses to start."""
        return f"{self.prefix}:version-claim:{detector}|{version}"

    @property
    def version_claims_match(self) -> str:
        """SCAN pattern of every `version_claim` key."""
        return f"{self.prefix}:version-claim:*"

    def claimed(self, key: str) -> tuple[str, str]:
        """(detector, version) of a `version_claim` key: detector names hold no `|` (ID_PATTERN)."""
        detector, _, version = key.removeprefix(f"{self.prefix}:version-claim:").partition("|")
        return detector, version

    def review_leases(self, model: str, detector: str) -> str:
        """Sorted set by lease expiry (unix seconds): ids on that review queue a reviewer has leased
        (`POST /v1/review/leases`); others' leases skip them until then. Expires with its last lease."""
        return f"{self.prefix}:review-leases:{model}|{detector}"

    def review_lease_holders(self, model: str, detector: str) -> str:
        """Hash: id -> key id (`auth.Principal.key_id`) of the reviewer whose lease holds it; read only while
        its lease in `review_leases` runs, removed with it, and expires with the leases."""
        return f"{self.prefix}:review-lease-holders:{model}|{detector}"

    def review(self, model: str, detector: str) -> str:
        """Sorted set by created_at: ids of scored outputs awaiting a reviewer's label for this detector
        (it flagged them, or they are in the audit sample); their label removes them."""
        return f"{self.prefix}:review:{model}|{detector}"

    @property
    def monitored(self) -> str:
        """Set: "model|detector" pairs that have scores."""
        return f"{self.prefix}:monitored"

    def histogram(self, name: str) -> str:
        """Hash: one worker histogram (bucket upper bound -> count, plus sum and count), shared by all workers."""
        return f"{self.prefix}:histogram:{name}"

    @property
    def models(self) -> str:
        """Set: deployed model names seen; bounded by REDLINE_MAX_MODELS since they become metric labels."""
        return f"{self.prefix}:models"

    def queue_name(self, lane: str) -> str:
        """RQ queue name of a lane: `high` (sync scoring), `default`, or a bulk lane (queueing.PRIORITIES)."""
        return f"{self.prefix}-{lane}"
