"""The quality gauges /metrics exports, and the listing GET /v1/monitor shows, computed off the request path.

Evaluating every (model, detector, window) reads each pair's window and score history, up to
REDLINE_WINDOW_MAX_ENTRIES rows apiece: 0.2 to 0.3 s a pair at the cap on a 2-core machine
(bench.monitoring), so 10 models x 3 detectors took 6 to 9 s per scrape, a few dozen models pass
Prometheus's default 10 s scrape timeout (the target goes down and every alert with it), and each
API process a scrape landed on paid it again. So the gauges are rendered once by one API process at a
time (a Redis lock), in a background thread, and stored in Redis; a scrape serves the latest
rendering and, once it is REDLINE_METRICS_REFRESH_S old, starts the next. Quality gauges therefore
lag by up to one refresh interval plus the time a refresh takes, both of which are exported. The
listing of every pair (GET /v1/monitor without model and detector) cost the same, per request, and
is served from the same computation, with its time; one pair's numbers are still computed on request.
At scale, `redline monitor` runs the refreshes in a process of its own (`keep_fresh`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from redis import Redis
from redis.exceptions import LockError, RedisError

from .keys import Keys
from .monitoring import Window, listing_row
from .quality_metrics import QualityCollector
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
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The listing's rows (`monitoring.listing_row`), model names as stored; read only by `listing()`."""


class QualitySnapshots:
    """Renders, stores and serves the quality gauges and the listing of one deployment (one per API process)."""

    def __init__(self, redis: Redis, settings: Settings, monitor: Any, clock: Callable[[], float]) -> None:
        self.redis = redis
        self.keys = Keys(settings.queue_prefix)
        self.refresh_s = settings.metrics_refresh_s
        self.windows = [Window.parse(w) for w in settings.monitor_windows]
        self.monitor = monitor  # service.monitoring.Monitor
        self.clock = clock  # the store's clock: every API process ages a snapshot alike
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def latest(self) -> Snapshot | None:
        """The stored gauges (not the listing's rows, which a scrape does not need)."""
        rendered, computed_at, duration_s = self.redis.hmget(self.keys.quality_snapshot,
                                                             ["text", "computed_at", "duration_s"])
        if rendered is None or computed_at is None or duration_s is None:
            return None
        return Snapshot(rendered if isinstance(rendered, bytes) else rendered.encode(), float(computed_at),
                        float(duration_s))

    def refresh(self, after_pair: Callable[[], object] = lambda: None) -> Snapshot:
        """Evaluate every pair and window now and store the gauges and the listing for every API process."""
        started = time.perf_counter()
        results = self.monitor.evaluate_pairs(self.windows, after_pair=after_pair)
        registry = CollectorRegistry()
        registry.register(QualityCollector(results))
        snapshot = Snapshot(generate_latest(registry), self.clock(), time.perf_counter() - started,
                            [listing_row(r) for r in results])
        ttl = int(max(MIN_TTL_S, 10 * self.refresh_s, 3 * snapshot.duration_s))
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.quality_snapshot, mapping={
                "text": snapshot.text, "rows": json.dumps(snapshot.rows), "computed_at": repr(snapshot.computed_at),
                "duration_s": repr(snapshot.duration_s)})
            pipe.expire(self.keys.quality_snapshot, ttl)
            pipe.execute()
        return snapshot

    def listing(self) -> tuple[list[dict[str, Any]], float]:
        """The listing's rows and when they were computed, served as the gauges are (a refresh starts in the
        background once they are `refresh_s` old); computed here, once, when there are none yet."""
        rows, computed_at = self.redis.hmget(self.keys.quality_snapshot, ["rows", "computed_at"])
        if rows is None or computed_at is None:
            snapshot = self.refresh()
            return snapshot.rows, snapshot.computed_at
        if self._due(float(computed_at)):
            self._refresh_in_background()
        return json.loads(rows), float(computed_at)

    def serve(self) -> Snapshot | None:
        """What a scrape exports: the latest snapshot (None before the first), starting a refresh in the
        background when there is none or it is `refresh_s` old. Never computes on the scrape's time."""
        snapshot = self.latest()
        if snapshot is None or self._due(snapshot.computed_at):
            self._refresh_in_background()
        return snapshot

    def _due(self, computed_at: float, min_age_s: float | None = None) -> bool:
        """Whether numbers computed at `computed_at` (Redis's clock) are `min_age_s` (`refresh_s`) old."""
        return self.clock() - computed_at >= (self.refresh_s if min_age_s is None else min_age_s)

    def keep_fresh(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """`redline monitor`'s loop: refresh whenever the numbers are half `refresh_s` old. API processes
        refresh only once they are a whole `refresh_s` old, so while this runs they find them fresh and
        never compute in a process that serves requests; if it stops, they take over by themselves."""
        away = False
        while not stop.is_set():
            try:
                self.redis.ping()
            except RedisError as exc:  # said once per outage, not once a second
                if not away:
                    log.warning("waiting for Redis: %s", exc)
                away = True
            else:
                if away:
                    log.warning("Redis is back; refreshing the quality gauges again")
                away = False
                self.refresh_if_due(min_age_s=self.refresh_s / 2)
            stop.wait(poll_s)

    def _refresh_in_background(self) -> None:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return  # this process is already on it
            self._thread = threading.Thread(target=self.refresh_if_due, name="redline-quality-refresh", daemon=True)
            self._thread.start()

    def refresh_if_due(self, min_age_s: float | None = None) -> bool:
        """Refresh unless another process holds the lock or the numbers are younger than `min_age_s`
        (`refresh_s`); True if this one did."""
        lock = self.redis.lock(self.keys.quality_refresh_lock, timeout=LOCK_S, blocking=False)
        try:
            if not lock.acquire():
                return False
        except RedisError as exc:
            log.warning("quality gauges not refreshed: Redis unavailable (%s)", exc)
            return False
        try:
            latest = self.latest()  # another process may have refreshed since this scrape looked
            if latest is not None and not self._due(latest.computed_at, min_age_s):
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
