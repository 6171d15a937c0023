"""Output records in Redis: create a batch atomically, read, and write scores exactly once.

The record hash is the source of truth. Status moves queued -> scored|failed once; the Lua
scripts (`store_scripts`) make that transition and its counters one atomic step, so a batch scored twice
(a worker died after writing, its job ran again) changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from redis import Redis

from . import label_scripts
from . import store_scripts as scripts
from .clock import redis_time
from .errors import Conflict, ValidationFailed
from .keys import NOTIFY_TTL_S, Keys, text
from .review_queues import ReviewQueues
from .scores import DetectorScore, stored_scores
from .settings import Settings
from .tenant_backlog import TenantBacklog
from .version_claims import VersionClaims

QUEUED, SCORED, FAILED = "queued", "scored", "failed"


@dataclass
class NewOutput:
    """A validated output ready to store."""

    id: str
    model: str
    response: str
    prompt: str = ""
    detectors: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # ground truth given at submit; not part of identity
    labeled_by: str | None = None  # the key id (auth.Principal) that gave `labels`; None in the open mode

    def digest(self) -> str:
        """Content fingerprint: a resubmitted id is the same output only if this matches."""
        body = json.dumps([self.model, self.prompt, self.response, sorted(self.detectors), self.metadata],
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


class BacklogFull(Exception):
    """create() stored nothing: the outputs would take the backlog past `max_pending`, or their tenant's
    share of it past `max_pending_per_tenant` (then `tenant` names it, and `pending` counts its own)."""

    def __init__(self, pending: int, tenant: str | None = None) -> None:
        super().__init__(pending, tenant)
        self.pending, self.tenant = pending, tenant

    @classmethod
    def from_reply(cls, states: list[str]) -> BacklogFull | None:
        """The refusal a create or retry script answered with, if it did."""
        if states and states[0] == "overloaded":
            return cls(int(states[1]))
        if states and states[0] == "tenant_overloaded":
            return cls(int(states[2]), states[1])
        return None


class OutputStore:
    """Reads and writes output records under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int, retention_s: int = 15 * 86400,
                 window_cap: int = 100_000, clock: Callable[[], float] | None = None,
                 max_models: int | None = None, max_pending: int | None = None,
                 max_pending_per_tenant: int | None = None) -> None:
        # Redis's clock (see redis_time); injectable so tests can place outputs and labels in time.
        self.clock: Callable[[], float] = clock or partial(redis_time, redis)
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.retention_s = retention_s
        self.window_cap = window_cap
        self.max_models = max_models  # distinct deployed-model names create() admits; None: no bound
        self.max_pending = max_pending  # outputs waiting to be scored past which create() stores nothing
        self.max_pending_per_tenant = max_pending_per_tenant  # the same, for one tenant's outputs
        self._random = random.Random()
        self._create = redis.register_script(scripts.CREATE)
        self._finish = redis.register_script(scripts.FINISH)
        self._label = redis.register_script(label_scripts.LABEL)
        self._reassign = redis.register_script(scripts.REASSIGN)
        self._retry = redis.register_script(scripts.RETRY)
        self._delete = redis.register_script(scripts.DELETE)
        self._drop_pending = redis.register_script(scripts.DROP_PENDING)
        # A version's claim lasts as long as scores of that version can be read: records and windows.
        self.versions = VersionClaims(redis, keys, max(ttl_s, retention_s))
        self.reviews = ReviewQueues(redis, keys, lambda: self.clock())  # late-bound: the clock may be replaced
        self.backlog = TenantBacklog(redis, keys)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> OutputStore:
        return cls(redis, Keys(settings.queue_prefix), settings.record_ttl_s, settings.window_retention_s,
                   settings.window_max_entries, max_models=settings.max_models, max_pending=settings.max_pending,
                   max_pending_per_tenant=settings.max_pending_per_tenant or None)

    def create(self, outputs: Sequence[NewOutput], job_id: str, notify: str | None = None) -> list[str]:
        """Store outputs atomically; returns "new" or the existing status for each.

        Raises Conflict (nothing stored) when an id exists with different content.
        """
        now = self.clock()
        records = []
        for out in outputs:
            fields: dict[str, Any] = {
                "id": out.id, "model": out.model, "prompt": out.prompt, "response": out.response,
                "detectors": json.dumps(out.detectors), "metadata": json.dumps(out.metadata),
                "status": QUEUED, "created_at": repr(now), "digest": out.digest(), "job": job_id,
            }
            if notify:
                fields["notify"] = notify
            for detector, label in out.labels.items():
                fields[f"label:{detector}"] = str(label)
                fields[f"labeled_at:{detector}"] = repr(now)
                if out.labeled_by:
                    fields[f"labeled_by:{detector}"] = out.labeled_by
            records.append({"id": out.id, "digest": fields["digest"], "model": out.model,
                            "fields": [x for kv in fields.items() for x in kv],
                            "counters": [f"labeled|{d}|{out.model}" for d in out.labels]})
        result = self._create(keys=[self.keys.pending, self.keys.counters, self.keys.models,
                                    self.keys.pending_by_tenant],
                              args=[self.ttl_s, repr(now), self.keys.prefix, json.dumps(records),
                                    scripts.bound(self.max_models), scripts.bound(self.max_pending),
                                    scripts.bound(self.max_pending_per_tenant)])
        states = [r.decode() for r in result]
        if states and states[0] == "conflict":
            raise Conflict(f"output id {states[1]!r} already exists with different content")
        if full := BacklogFull.from_reply(states):
            raise full
        if states and states[0] == "too_many_models":
            raise ValidationFailed(f"model {states[1]!r} would exceed REDLINE_MAX_MODELS={self.max_models} "
                                   f"distinct deployed models ({states[2]} known)", code="too_many_models")
        return states

    def get(self, output_id: str) -> dict[str, Any] | None:
        """The stored record with JSON fields decoded, or None."""
        raw = self.redis.hgetall(self.keys.output(output_id))
        return _decode(raw) if raw else None

    def get_many(self, ids: Sequence[str], fields: Sequence[str] | None = None) -> list[dict[str, Any] | None]:
        """Records in the order of `ids` (None where missing); `fields` limits what is read."""
        with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                if fields:
                    pipe.hmget(self.keys.output(i), list(fields))
                else:
                    pipe.hgetall(self.keys.output(i))
            rows = pipe.execute()
        if fields:
            rows = [dict(zip([f.encode() for f in fields], r, strict=True)) if r[0] is not None else {}
                    for r in rows]
        return [_decode(r) if r else None for r in rows]

    def finish_scored(self, results: Iterable[tuple[dict[str, Any], dict[str, DetectorScore], dict[str, Any]]],
                      audit_rate: float = 0.0) -> int:
        """Write scores for (record, scores, batch-info) triples; records no longer queued are skipped.

        An output no detector flagged is picked for the audit sample with probability `audit_rate`,
        so reviewers also label some of what got through (see `evaluation`, inverse-probability weights).
        """
        now = self.clock()
        payload = []
        for record, scores, batch in results:
            counters = [f"scored|{d}" for d in scores] + [f"flagged|{d}" for d, s in scores.items() if s.flagged]
            audit = not any(s.flagged for s in scores.values()) and self._random.random() < audit_rate
            fields = {"status": SCORED, "scored_at": repr(now), "batch": json.dumps(batch),
                      "scores": stored_scores(scores),
                      "audit": "1" if audit else "0", "audit_rate": repr(audit_rate)}
            dets = [{"name": d, "score": repr(s.score), "flagged": s.flagged, "version": s.version,
                     "sc": self.keys.scores(record["model"], d, s.version), "rv_horizon": repr(now - self.ttl_s),
                     **self._window_keys(record["model"], d, now)} for d, s in scores.items()]
            payload.append({"id": record["id"], "fields": [x for kv in fields.items() for x in kv],
                            "counters": counters, "dets": dets, "audit": "1" if audit else "0",
                            "rate": repr(audit_rate)})
        return self._run_finish(payload)

    def apply_labels(self, items: Sequence[tuple[str, str, str, int]], by: str | None = None) -> list[str]:
        """Set (output id, model, detector, 0|1) labels atomically, each new or changed one attributed to
        key id `by`; returns "new", "changed", "unchanged" or "missing" for each. A label joins the stored
        score at once, or when the score arrives."""
        now = self.clock()
        payload = [{"key": self.keys.output(i), "id": i, "det": d, "label": str(label),
                    **self._window_keys(model, d, now)} for i, model, d, label in items]
        result = self._label(keys=[self.keys.counters], args=[repr(now), json.dumps(payload), by or ""])
        return [r.decode() for r in result]

    def _window_keys(self, model: str, detector: str, now: float) -> dict[str, Any]:
        # Bases: the scripts append the version of the detector that scored the output.
        return {"win": self.keys.window_base(model, detector), "idx": self.keys.window_index_base(model, detector),
                "rv": self.keys.review(model, detector), "ls": self.keys.review_leases(model, detector),
                "lh": self.keys.review_lease_holders(model, detector),
                "horizon": repr(now - self.retention_s), "cap": self.window_cap}

    def finish_failed(self, reasons: Mapping[str, str]) -> int:
        """Mark outputs failed, each with its reason (only those still queued), and list them as dead
        letters, in one script call."""
        now = repr(self.clock())
        payload = [{"id": i, "fields": ["status", FAILED, "error", reason, "scored_at", now], "counters": ["failed"],
                    "dets": [], "dead": True} for i, reason in reasons.items()]
        return self._run_finish(payload)

    def reassign(self, output_ids: Sequence[str], job_id: str, handoff: bool = False) -> list[str]:
        """Move outputs still queued to `job_id`, to be queued again: an abandoned job's (an `attempts`) or
        ones a worker passes on (`handoff`). Returns those moved; scored, failed or expired ones are left."""
        if not output_ids:
            return []
        moved = self._reassign(keys=[self.keys.pending, self.keys.pending_by_tenant, self.keys.counters],
                               args=[self.keys.prefix, job_id, repr(self.clock()), json.dumps(list(output_ids)),
                                     "handoffs" if handoff else "attempts"])
        return [text(i) for i in moved]

    def retry_failed(self, output_ids: Sequence[str], job_id: str) -> list[str]:
        """Queue failed outputs again under `job_id` (the caller enqueues it); returns "requeued", the
        current status ("queued", "scored") or "missing" for each id. Raises BacklogFull, changing
        nothing, when they would take the backlog past `max_pending`."""
        result = self._retry(keys=[self.keys.pending, self.keys.dead, self.keys.pending_by_tenant],
                             args=[self.keys.prefix, job_id, repr(self.clock()), json.dumps(list(output_ids)),
                                   scripts.bound(self.max_pending), scripts.bound(self.max_pending_per_tenant)])
        states = [text(r) for r in result]
        if full := BacklogFull.from_reply(states):
            raise full
        return states

    def drop_pending(self, output_ids: Sequence[str]) -> None:
        """Take outputs off the pending set that are no longer queued (the reaper found their records gone)."""
        if output_ids:
            self._drop_pending(keys=[self.keys.pending, self.keys.pending_by_tenant],
                               args=[json.dumps(list(output_ids))])

    def delete(self, output_id: str) -> bool:
        """Erase an output and every entry naming it (see store_scripts.DELETE); False if there is none. A job still
        holding its id later finds nothing to score and writes nothing."""
        [record] = self.get_many([output_id], ["model", "detectors"])
        if record is None:
            return False
        model = record.get("model", "")
        # The detectors an output is scored with are fixed when it is created: reading them first is safe.
        bases = {d: {"win": self.keys.window_base(model, d), "idx": self.keys.window_index_base(model, d),
                     "sc": self.keys.scores_base(model, d), "rv": self.keys.review(model, d),
                     "ls": self.keys.review_leases(model, d), "lh": self.keys.review_lease_holders(model, d)}
                 for d in record.get("detectors", [])}
        return bool(self._delete(keys=[self.keys.output(output_id), self.keys.pending, self.keys.dead,
                                       self.keys.pending_by_tenant], args=[output_id, json.dumps(bases)]))

    def _run_finish(self, payload: list[dict[str, Any]]) -> int:
        if not payload:
            return 0
        now = self.clock()
        return int(self._finish(keys=[self.keys.pending, self.keys.counters, self.keys.monitored, self.keys.dead,
                                      self.keys.pending_by_tenant],
                                args=[self.keys.prefix, json.dumps(payload), NOTIFY_TTL_S, repr(now),
                                      repr(now - self.ttl_s)]))

    def counters(self) -> dict[str, int]:
        """Exactly-once counters keyed `event|detector|model` (e.g. `scored|injury|gpt-x`) or `failed|model`."""
        return {text(k): int(v) for k, v in self.redis.hgetall(self.keys.counters).items()}


_JSON_FIELDS = ("detectors", "metadata", "scores", "batch")
_FLOAT_FIELDS = ("created_at", "scored_at")


def _decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        if v is None:
            continue
        text = v.decode()
        if key.startswith("label:"):
            record.setdefault("labels", {})[key[6:]] = int(text)
        elif key.startswith("labeled_by:"):
            record.setdefault("labeled_by", {})[key[11:]] = text
        elif key.startswith("labeled_at:"):
            record.setdefault("labeled_at", {})[key[11:]] = float(text)
        elif key in _JSON_FIELDS:
            record[key] = json.loads(text)
        elif key in _FLOAT_FIELDS:
            record[key] = float(text)
        else:
            record[key] = text
    return record
