"""What the API does, without HTTP: submit outputs, wait for scores, read records and health."""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from . import export
from .auth import OPEN, Principal, tenant_of
from .detector_config import DetectorConfig, load_configs
from .errors import NotFound, Overloaded, ValidationFailed
from .fleet import Fleet
from .keys import Keys, text
from .monitoring import Monitor, Window
from .quality_snapshot import QualitySnapshots
from .queueing import HIGH, ScoreQueues, new_job_id
from .review_queues import Lease
from .settings import Settings
from .store import QUEUED, BacklogFull, NewOutput, OutputStore

log = logging.getLogger(__name__)

# A sync waiter re-reads statuses at least this often, covering outputs another request queued.
_POLL_S = 0.25


class Redline:
    """One per API process: settings, Redis, the store, the queues and the detector configs."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.queue_prefix)
        self.store = OutputStore.from_settings(redis, settings)
        self.queues = ScoreQueues(redis, settings)
        self.detectors: dict[str, DetectorConfig] = load_configs(settings.models_dirs)
        self.fleet = Fleet(redis, settings, self.store, self.detectors)
        self.monitor = Monitor(redis, settings, self.detectors)
        self.quality = QualitySnapshots(redis, settings, self.monitor, lambda: self.store.clock())

    def submit(self, outputs: list[NewOutput], sync: bool = False) -> tuple[list[str], str | None]:
        """Store outputs and queue the new ones in one job; returns each output's state
        ("new" or its existing status) and, for sync requests, the notification token. New outputs
        are refused past REDLINE_MAX_PENDING waiting ones (429), and a deployed model name not seen
        before is admitted with its first stored output, up to REDLINE_MAX_MODELS (422)."""
        token = uuid.uuid4().hex if sync else None
        job_id = new_job_id()
        try:
            states = self.store.create(outputs, job_id, notify=token)
        except BacklogFull as full:
            # Nothing was stored: memory stays bounded however far traffic overshoots.
            raise self._overloaded(full) from None
        fresh = [o.id for o, s in zip(outputs, states, strict=True) if s == "new"]
        # Labels sent again with an output that already exists are applied like PUT .../labels.
        existing = [o for o, s in zip(outputs, states, strict=True) if s != "new" and o.labels]
        for by in {o.labeled_by for o in existing}:  # one request's outputs share one key: one call
            self.store.apply_labels([(o.id, o.model, d, v) for o in existing if o.labeled_by == by
                                     for d, v in o.labels.items()], by)
        if fresh:
            # If we die between create and enqueue, the reaper queues these outputs again. One
            # request's outputs share one tenant.
            lane = HIGH if sync else self.queues.lane(tenant_of(fresh[0]), self.store.backlog)
            self.queues.enqueue(fresh, job_id, lane)
        return states, token

    def retry_failed(self, ids: list[str], who: Principal = OPEN) -> dict[str, Any]:
        """Queue `who`'s failed outputs (public ids) for scoring again, once the cause is fixed (a worker
        with the missing detector deployed, say). Outputs not failed are left as they are, so a retry
        sent twice scores nothing twice. Refused, changing nothing, past REDLINE_MAX_PENDING (429)."""
        job_id = new_job_id()
        try:
            states = self.store.retry_failed([who.output_id(i) for i in ids], job_id)
        except BacklogFull as full:
            raise self._overloaded(full) from None
        requeued = [i for i, s in zip(ids, states, strict=True) if s == "requeued"]
        if requeued:
            # If we die between the script and the enqueue, the reaper queues these outputs again.
            self.queues.enqueue([who.output_id(i) for i in requeued], job_id,
                                self.queues.lane(who.tenant, self.store.backlog))
        return {"requeued": requeued,
                "skipped": [{"id": i, "status": s} for i, s in zip(ids, states, strict=True)
                            if s not in ("requeued", "missing")],
                "missing": [i for i, s in zip(ids, states, strict=True) if s == "missing"]}

    def _require_detector(self, detector: str) -> None:
        if detector not in self.detectors:
            raise NotFound(f"no detector {detector!r}")

    def _overloaded(self, full: BacklogFull) -> Overloaded:
        if full.tenant is not None:  # only the caller's own tenant is ever named
            return Overloaded(f"{full.pending} outputs of tenant {full.tenant!r} are waiting to be scored "
                              f"(REDLINE_MAX_PENDING_PER_TENANT={self.settings.max_pending_per_tenant}); retry later",
                              retry_after_s=self.settings.retry_after_s)
        return Overloaded(f"{full.pending} outputs are waiting to be scored (REDLINE_MAX_PENDING="
                          f"{self.settings.max_pending}); retry later", retry_after_s=self.settings.retry_after_s)

    def wait(self, ids: list[str], token: str, timeout_s: float) -> set[str]:
        """Block until every id is no longer queued or the timeout passes; returns ids still queued."""
        deadline = time.monotonic() + timeout_s
        outstanding = self._still_queued(set(ids))
        notify = self.keys.notify(token)
        try:
            while outstanding:
                left = deadline - time.monotonic()
                if left < 0.01:
                    # Redis reads a blocking timeout under 1 ms as 0, "wait forever": never send one.
                    break
                popped = self.redis.blpop([notify], timeout=min(left, _POLL_S))
                if popped:
                    outstanding.discard(text(popped[1]))
                else:
                    outstanding = self._still_queued(outstanding)
        finally:
            self.redis.delete(notify)
        return self._still_queued(outstanding) if outstanding else outstanding

    def apply_labels(self, items: list[tuple[str, str, int]], who: Principal = OPEN) -> list[dict[str, Any]]:
        """Apply (public output id, detector, 0|1) labels of `who`'s outputs; all or nothing: an unknown id
        is 404 and a detector the output was not scored with is 422, before anything is written."""
        ids = sorted({who.output_id(i) for i, _, _ in items})
        records = dict(zip(ids, self.store.get_many(ids, ["model", "detectors"]), strict=True))
        missing = [who.public_id(i) for i in ids if not records[i]]
        if missing:
            raise NotFound(f"no output with id {', '.join(repr(i) for i in missing[:10])}")
        for public, detector, _ in items:
            record = records[who.output_id(public)]
            if detector not in record["detectors"]:  # type: ignore[index]
                raise ValidationFailed(f"output {public!r} was not scored by detector {detector!r} "
                                       f"(it has: {', '.join(record['detectors'])})")  # type: ignore[index]
        states = self.store.apply_labels([(who.output_id(i), records[who.output_id(i)]["model"], d, v)  # type: ignore[index]
                                          for i, d, v in items], who.key_id)
        return [{"id": i, "detector": d, "label": v, "result": s}
                for (i, d, v), s in zip(items, states, strict=True)]

    def labeled(self, model: str, detector: str, window: str | None, version: str | None, cursor: str | None,
                limit: int, who: Principal = OPEN) -> dict[str, Any]:
        """A page of `who`'s labeled outputs of `model` for `detector`, oldest first, with their texts: the
        window of `version` (default: the version served), within a duration `window` (default: all kept)."""
        self._require_detector(detector)
        version = version or self.detectors[detector].version
        start = -math.inf
        if window is not None:
            span = Window.parse(window)
            if span.seconds is None:
                raise ValidationFailed("'window' here is a duration (1h, 24h, 7d): page through a count with 'limit'")
            start = self.store.clock() - span.seconds
        after = None
        if cursor is not None:  # cursors name public ids: a tenant's internal `tenant~id` is no valid id
            at, public = export.decode_cursor(cursor)
            after = (at, who.output_id(public))
        entries, following = export.labeled_page(self.redis, self.keys, who.model(model), detector, version, start,
                                                 after, limit)
        outputs = []
        for entry, record in zip(entries, export.records(self.store, entries, detector), strict=True):
            stored = (record or {}).get("scores", {}).get(detector, {})
            outputs.append({"id": who.public_id(entry.id), "label": entry.label, "score": entry.score,
                            "flagged": stored.get("flagged"), "weight": entry.weight,
                            "labeled_by": (record or {}).get("labeled_by", {}).get(detector),
                            "created_at": iso(entry.created_at), "labeled_at": iso(entry.labeled_at),
                            **{k: (record or {}).get(k) for k in ("prompt", "response", "metadata")}})
        return {"model": model, "detector": detector, "version": version, "window": window, "outputs": outputs,
                "next": export.encode_cursor((following[0], who.public_id(following[1]))) if following else None}

    def delete_output(self, output_id: str, who: Principal = OPEN) -> None:
        """Erase one of `who`'s outputs (a privacy request, say): NotFound if there is none."""
        if not self.store.delete(who.output_id(output_id)):
            raise NotFound(f"no output with id {output_id!r}")

    def review_queue(self, model: str, detector: str, limit: int, who: Principal = OPEN) -> dict[str, Any]:
        """The oldest of `who`'s outputs of `model` still awaiting a label for `detector`: those it flagged
        and those in the audit sample, exactly the ones the audit-weighted metrics need labeled."""
        self._require_detector(detector)
        internal = who.model(model)
        ids, waiting = self.store.reviews.awaiting(internal, detector, limit)
        leases = self.store.reviews.leases(internal, detector, ids)
        return {"model": model, "detector": detector, "waiting": waiting,
                "outputs": self._review_items(internal, detector, ids, leases, who)}

    def lease_review(self, model: str, detector: str, limit: int, lease_s: int,
                     who: Principal = OPEN) -> dict[str, Any]:
        """Like `review_queue`, but only outputs no other reviewer holds, each now leased to this caller
        for `lease_s` seconds: reviewers working in parallel are handed different outputs. A label ends
        the lease with the output's place on the queue; an unlabeled output returns when it lapses."""
        self._require_detector(detector)
        internal = who.model(model)
        ids, waiting, until = self.store.reviews.lease(internal, detector, limit, lease_s, who.key_id)
        return {"model": model, "detector": detector, "waiting": waiting, "lease_s": lease_s,
                "leased_until": iso(until),
                "outputs": self._review_items(internal, detector, ids, [Lease(until, who.key_id)] * len(ids), who)}

    def release_review(self, model: str, detector: str, output_ids: list[str],
                       who: Principal = OPEN) -> dict[str, Any]:
        """End the leases on `who`'s outputs (a reviewer skipping them), so the next lease hands them out."""
        self._require_detector(detector)
        held = self.store.reviews.release(who.model(model), detector, [who.output_id(i) for i in output_ids])
        return {"released": [i for i, h in zip(output_ids, held, strict=True) if h],
                "not_leased": [i for i, h in zip(output_ids, held, strict=True) if not h]}

    def _review_items(self, internal: str, detector: str, ids: list[str], leases: list[Lease | None],
                      who: Principal) -> list[dict[str, Any]]:
        records = self.store.get_many(ids)
        self.store.reviews.forget(internal, detector, [i for i, r in zip(ids, records, strict=True) if r is None])
        outputs = []
        for record, lease in zip(records, leases, strict=True):
            if record is None or detector in record.get("labels", {}):  # expired, or labeled just now
                continue
            flagged = bool(record.get("scores", {}).get(detector, {}).get("flagged"))
            outputs.append({**public_view(record, who), "reason": "flagged" if flagged else "audit",
                            "leased_until": iso(lease.until) if lease else None,
                            "leased_by": lease.by if lease else None})
        return outputs

    def _still_queued(self, ids: set[str]) -> set[str]:
        order = sorted(ids)
        rows = self.store.get_many(order, ["status"])
        return {i for i, r in zip(order, rows, strict=True) if r and r.get("status") == QUEUED}

    def output_views(self, output_ids: list[str], who: Principal = OPEN) -> list[dict[str, Any] | None]:
        """`who`'s outputs by public id, read in one pipeline (another tenant's output is not found)."""
        records = self.store.get_many([who.output_id(i) for i in output_ids])
        return [None if r is None else public_view(r, who) for r in records]

    def output_view(self, output_id: str, who: Principal = OPEN) -> dict[str, Any] | None:
        return self.output_views([output_id], who)[0]

    def readiness(self) -> dict[str, Any]:
        """Whether this API can take requests: Redis answers. Live scoring workers are reported, not
        required: with none, outputs are still accepted and wait in the queue, so a load balancer that
        dropped the API then would turn a scoring delay into refused traffic (RedlineNoWorkerAlive pages)."""
        try:
            self.redis.ping()
        except Exception as exc:  # any Redis failure means not ready; say which
            return {"ready": False, "redis": f"unreachable: {exc.__class__.__name__}", "workers_alive": 0}
        return {"ready": True, "redis": "ok", "workers_alive": self.fleet.workers_alive(),
                "queue_depth": self.queues.depth()}


def public_view(record: dict[str, Any], who: Principal = OPEN) -> dict[str, Any]:
    """The client-facing shape of a stored record, with the caller's public names."""
    view = {
        "id": who.public_id(record["id"]),
        "model": who.public_model(record.get("model", "")),
        "status": record.get("status"),
        "scores": record.get("scores", {}),
        "created_at": iso(record.get("created_at")),
        "scored_at": iso(record.get("scored_at")),
        "detectors": record.get("detectors", []),
        "prompt": record.get("prompt", ""),
        "response": record.get("response", ""),
        "metadata": record.get("metadata", {}),
    }
    if "error" in record:
        view["error"] = record["error"]
    if "batch" in record:
        view["batch"] = record["batch"]
    view["labels"] = record.get("labels", {})
    view["labeled_by"] = record.get("labeled_by", {})
    view["audit"] = record.get("audit") == "1"
    return view


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

