"""What the API does, without HTTP: submit outputs, wait for scores, read records and health."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from .detector_config import DetectorConfig, load_configs
from .keys import Keys
from .queueing import DEFAULT, HIGH, ScoreQueues, new_job_id
from .settings import Settings
from .store import QUEUED, NewOutput, OutputStore

# A sync waiter re-reads statuses at least this often, covering outputs another request queued.
_POLL_S = 0.25


class Redline:
    """One per API process: settings, Redis, the store, the queues and the detector configs."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.queue_prefix)
        self.store = OutputStore(redis, self.keys, settings.record_ttl_s)
        self.queues = ScoreQueues(redis, settings)
        self.detectors: dict[str, DetectorConfig] = load_configs(settings.models_dirs)

    def submit(self, outputs: list[NewOutput], sync: bool = False) -> tuple[list[str], str | None]:
        """Store outputs and queue the new ones in one job; returns each output's state
        ("new" or its existing status) and, for sync requests, the notification token."""
        token = uuid.uuid4().hex if sync else None
        job_id = new_job_id()
        states = self.store.create(outputs, job_id, notify=token)
        fresh = [o.id for o, s in zip(outputs, states, strict=True) if s == "new"]
        if fresh:
            # If we die between create and enqueue, the reaper queues these outputs again.
            self.queues.enqueue(fresh, job_id, HIGH if sync else DEFAULT)
        return states, token

    def wait(self, ids: list[str], token: str, timeout_s: float) -> set[str]:
        """Block until every id is no longer queued or the timeout passes; returns ids still queued."""
        deadline = time.monotonic() + timeout_s
        outstanding = self._still_queued(set(ids))
        notify = self.keys.notify(token)
        try:
            while outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                popped = self.redis.blpop([notify], timeout=min(left, _POLL_S))
                if popped:
                    outstanding.discard(popped[1].decode())
                else:
                    outstanding = self._still_queued(outstanding)
        finally:
            self.redis.delete(notify)
        return self._still_queued(outstanding) if outstanding else outstanding

    def _still_queued(self, ids: set[str]) -> set[str]:
        order = sorted(ids)
        rows = self.store.get_many(order, ["status"])
        return {i for i, r in zip(order, rows, strict=True) if r and r.get("status") == QUEUED}

    def output_view(self, output_id: str) -> dict[str, Any] | None:
        record = self.store.get(output_id)
        return None if record is None else public_view(record)

    def workers_alive(self) -> int:
        cutoff = time.time() - self.settings.worker_ttl_s
        return int(self.redis.zcount(self.keys.workers, cutoff, "+inf"))

    def readiness(self) -> dict[str, Any]:
        """Redis reachable and at least one live scoring worker."""
        try:
            self.redis.ping()
        except Exception as exc:  # any Redis failure means not ready; say which
            return {"ready": False, "redis": f"unreachable: {exc.__class__.__name__}", "workers_alive": 0}
        alive = self.workers_alive()
        return {"ready": alive > 0, "redis": "ok", "workers_alive": alive, "queue_depth": self.queues.depth()}


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """The client-facing shape of a stored record."""
    view = {
        "id": record["id"],
        "model": record.get("model"),
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
    return view


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

