"""The quality gauges /metrics exports, computed off the scrape path.

Evaluating every (model, detector, window) reads each pair's window and score history, up to
REDLINE_WINDOW_MAX_ENTRIES rows apiece: 0.2 to 0.3 s a pair at the cap on a 2-core machine
(bench.monitoring), so 10 models x 3 detectors took 6 to 9 s per scrape, a few dozen models pass
Prometheus's default 10 s scrape timeout (the target goes down and every alert with it), and each
API process a scrape landed on paid it again. So the gauges are rendered once by one API process at a
time (a Redis lock), in a background thread, and stored in Redis; a scrape serves the latest
rendering and, once it is REDLINE_METRICS_REFRESH_S old, starts the next. Quality gauges therefore
lag by up to one refresh interval plus the time a refresh takes, both of which are exported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from redis import Redis
from redis.exceptions import LockError, RedisError

from .keys import Keys
from .metrics import QualityCollector
from .settings import Settings

log = logging.getLogger(__name__)

# The refresher's lock outlives a stalled or killed process by this much, and is extended after each
# pair: a live refresh keeps it however long it runs, a dead one frees it within a minute.
LOCK_S = 60
# A snapshot nobody refreshed for this long (no scrapes, or every refresh failing) is dropped rather
# than served as current: its gauges go absent, which alerts treat as no data.
MIN_TTL_S = 300


@dataclass(frozen=True)
class Snapshot:
    text: bytes
    """The quality families in the Prometheus text format."""
    computed_at: float
    """When computing them finished, in Redis's clock (unix seconds)."""
    duration_s: float


class QualitySnapshots:
    """Renders, stores and serves the quality gauges of one deployment (one per API process)."""

    def __init__(self, redis: Redis, settings: Settings, monitor: Any, detectors: dict[str, Any],
                 clock: Callable[[], float]) -> None:
        self.redis = redis
        self.keys = Keys(settings.queue_prefix)
        self.refresh_s = settings.metrics_refresh_s
        self.windows = settings.monitor_windows
        self.monitor = monitor  # service.monitoring.Monitor
        self.detectors = detectors
        self.clock = clock  # the store's clock: every API process ages a snapshot alike
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def latest(self) -> Snapshot | None:
        raw = self.redis.hgetall(self.keys.quality_snapshot)
        if not raw:
            return None
        rendered = raw[b"text"]
        return Snapshot(rendered if isinstance(rendered, bytes) else rendered.encode(), float(raw[b"computed_at"]),
                        float(raw[b"duration_s"]))

    def refresh(self, after_pair: Callable[[], object] = lambda: None) -> Snapshot:
        """Compute every quality gauge now and store the result for every API process to serve."""
        started = time.perf_counter()
        registry = CollectorRegistry()
        registry.register(QualityCollector(self.monitor, self.detectors, self.windows, after_pair))
        rendered = generate_latest(registry)
        snapshot = Snapshot(rendered, self.clock(), time.perf_counter() - started)
        ttl = int(max(MIN_TTL_S, 10 * self.refresh_s, 3 * snapshot.duration_s))
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.quality_snapshot, mapping={
                "text": snapshot.text, "computed_at": repr(snapshot.computed_at),
                "duration_s": repr(snapshot.duration_s)})
            pipe.expire(self.keys.quality_snapshot, ttl)
            pipe.execute()
        return snapshot

    def serve(self) -> Snapshot | None:
        """What a scrape exports: the latest snapshot (None before the first), starting a refresh in the
        background when there is none or it is `refresh_s` old. Never computes on the scrape's time."""
        snapshot = self.latest()
        if snapshot is None or self.clock() - snapshot.computed_at >= self.refresh_s:
            self._refresh_in_background()
        return snapshot

    def _refresh_in_background(self) -> None:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return  # this process is already on it
            self._thread = threading.Thread(target=self.refresh_if_due, name="redline-quality-refresh", daemon=True)
            self._thread.start()

    def refresh_if_due(self) -> bool:
        """Refresh unless another process holds the lock or has just refreshed; True if this one did."""
        lock = self.redis.lock(self.keys.quality_refresh_lock, timeout=LOCK_S, blocking=False)
        try:
            if not lock.acquire():
                return False
        except RedisError as exc:
            log.warning("quality gauges not refreshed: Redis unavailable (%s)", exc)
            return False
        try:
            latest = self.latest()  # another process may have refreshed since this scrape looked
            if latest is not None and self.clock() - latest.computed_at < self.refresh_s:
                return False
            snapshot = self.refresh(after_pair=lock.reacquire)
            log.debug("quality gauges refreshed in %.2f s", snapshot.duration_s)
            return True
        except Exception:  # the thread's last stop: log it, and the next scrape tries again
            log.exception("refreshing the quality gauges failed")
            return False
        finally:
            try:
                lock.release()
            except (LockError, RedisError):  # expired (a refresh longer than LOCK_S between pairs) or Redis gone
                pass
