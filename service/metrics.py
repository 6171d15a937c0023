"""Prometheus metrics.

- Request metrics are recorded by each gunicorn process in prometheus-client's multiprocess mode
  (PROMETHEUS_MULTIPROC_DIR, wiped when the API starts, dead processes marked in `child_exit`).
- Everything else is read from Redis at scrape time by `RedlineCollector`, so it is exported once
  per scrape whichever process answers, and covers every worker on every machine: the exactly-once
  counters, the workers' histograms (inference time, batch size, queue wait: `RedisHistogram`),
  queue depth and live workers.
- The quality gauges of every (model, detector, window) (`quality_metrics`) cost too much to compute
  per scrape; they are rendered off the scrape path and served from Redis (`quality_snapshot`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from .keys import Keys, text
from .queueing import priority_of

log = logging.getLogger(__name__)

REQUESTS = Counter("redline_http_requests_total", "HTTP requests by route, method and status",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("redline_http_request_duration_seconds", "HTTP request latency", ["route", "method"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class RedisHistogram:
    """A histogram whose buckets live in one Redis hash, so every worker adds to the same series."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.buckets = name, documentation, tuple(buckets)

    def observe(self, pipe: Any, keys: Keys, values: Sequence[float]) -> None:
        """Queue the observations on a Redis pipeline (the caller executes it with its other writes)."""
        key = keys.histogram(self.name)
        for value in values:
            bucket = next((b for b in self.buckets if value <= b), float("inf"))
            pipe.hincrby(key, repr(float(bucket)), 1)
        pipe.hincrbyfloat(key, "sum", float(sum(values)))
        pipe.hincrby(key, "count", len(values))

    def family(self, raw: dict[bytes, bytes]) -> HistogramMetricFamily:
        counts = {k.decode(): float(v) for k, v in raw.items()}
        cumulative, running = [], 0.0
        for bound in (*self.buckets, float("inf")):
            running += counts.get(repr(float(bound)), 0.0)
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, counts.get("sum", 0.0))
        return family


INFERENCE_SECONDS = RedisHistogram("redline_inference_duration_seconds",
                                   "onnxruntime time to score one batch (all detectors)",
                                   (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_SIZE = RedisHistogram("redline_batch_size", "Outputs scored per batch", (1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE_WAIT = RedisHistogram("redline_queue_wait_seconds", "Time from acceptance to scoring start",
                            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
# Per scored output and model: 0 for a response that fits, else how many windows it added
# (workers/windows.py). How often responses outgrow the model, and what they cost in rows.
OUTPUT_WINDOWS = RedisHistogram("redline_output_windows", "Windows a response past the model's max_length "
                                "added to its scoring (0: it fit)", (0, 1, 2, 4, 8, 16, 32, 64, 128))
WORKER_HISTOGRAMS = (INFERENCE_SECONDS, BATCH_SIZE, QUEUE_WAIT, OUTPUT_WINDOWS)

_COUNTERS = {  # Redis counter event -> (metric, help)
    "scored": ("redline_outputs_scored_total", "Outputs scored, by deployed model and detector"),
    "flagged": ("redline_outputs_flagged_total", "Outputs flagged (score >= threshold)"),
    "labeled": ("redline_labels_total", "Outputs given a ground-truth label"),
}


class RedlineCollector(Collector):
    """Reads Redline's state from Redis when Prometheus scrapes; `quality` is the snapshot of quality
    gauges served with it (its age and cost are exported here, so a stalled refresh shows)."""

    def __init__(self, redline: Any, quality: Any = None, redis_up: bool = True) -> None:
        self.redline = redline  # service.core.Redline
        self.quality = quality  # service.quality_snapshot.Snapshot | None
        self.redis_up = redis_up  # False: this scrape already failed to read Redis, so do not wait on it again

    def collect(self) -> Iterator[Any]:
        from_redis: list[Any] = []
        up = self.redis_up
        if up:
            try:
                from_redis = list(self._from_redis())  # all read before any is exported: no half answer
            except RedisError as exc:
                log.warning("metrics: Redis unavailable (%s); exporting redline_redis_up 0", exc)
                up = False
        # Without Redis still a 200 with the request metrics (the 503s of the outage among them): Prometheus
        # sees a Redline whose storage is down, not a Redline that is down.
        yield GaugeMetricFamily("redline_redis_up", "Whether this scrape could read Redline's state from Redis",
                                value=int(up))
        yield from from_redis
        yield from self._detectors()

    def _from_redis(self) -> Iterator[Any]:
        r, keys = self.redline.redis, self.redline.keys
        yield from self._counters(r, keys)
        for histogram in WORKER_HISTOGRAMS:
            yield histogram.family(r.hgetall(keys.histogram(histogram.name)))
        depth = GaugeMetricFamily("redline_queue_depth", "Scoring jobs waiting, by queue priority", labels=["priority"])
        by_priority: dict[str, int] = {}
        for lane, queue in self.redline.queues.by_priority.items():  # the bulk lane's shards as one
            by_priority[priority_of(lane)] = by_priority.get(priority_of(lane), 0) + queue.count
        for priority, count in by_priority.items():
            depth.add_metric([priority], count)
        yield depth
        yield GaugeMetricFamily("redline_outputs_pending", "Outputs accepted and not yet scored",
                                value=r.zcard(keys.pending))
        # Tenants are the keys file's (bounded); REDLINE_MAX_PENDING_PER_TENANT refuses each past its share.
        by_tenant = GaugeMetricFamily("redline_tenant_outputs_pending", "Outputs accepted and not yet scored, "
                                      "by tenant (`default` without API keys)", labels=["tenant"])
        for tenant, count in sorted(self.redline.store.backlog.counts().items()):
            by_tenant.add_metric([tenant], count)
        yield by_tenant
        yield GaugeMetricFamily("redline_workers_alive", "Scoring workers with a recent heartbeat",
                                value=self.redline.fleet.workers_alive())
        versions, files = self.redline.fleet.served()
        yield self._detector_workers(versions)
        yield self._files_match()
        yield self._worker_files(files)
        yield self._review_waiting(r, keys)
        if self.quality is not None:
            yield GaugeMetricFamily("redline_quality_computed_timestamp_seconds",
                                    "When the quality gauges served were computed (unix seconds, Redis clock)",
                                    value=self.quality.computed_at)
            yield GaugeMetricFamily("redline_quality_compute_duration_seconds",
                                    "How long computing the quality gauges served took", value=self.quality.duration_s)

    def _counters(self, r: Redis, keys: Keys) -> Iterator[Any]:
        families = {event: CounterMetricFamily(name, doc, labels=["model", "detector"])
                    for event, (name, doc) in _COUNTERS.items()}
        failed = CounterMetricFamily("redline_outputs_failed_total", "Outputs that could not be scored",
                                     labels=["model"])
        requeued = CounterMetricFamily(
            "redline_outputs_requeued_total", "Outputs queued again: their job was lost (abandoned: a worker "
            "died or stopped mid-batch) or a worker without one of their detectors passed them on (handoff)",
            labels=["model", "reason"])
        # Every deployed model's counts, 0 until the first: Prometheus's increase() cannot see the first
        # event of a series that appears already at 1, so RedlineOutputsFailing would miss it.
        models = [text(m) for m in r.smembers(keys.models)]
        failures = dict.fromkeys(models, 0.0)
        requeues = {(m, reason): 0.0 for m in models for reason in ("abandoned", "handoff")}
        for field, value in r.hgetall(keys.counters).items():
            parts = text(field).split("|")
            if parts[0] in families and len(parts) == 3:
                families[parts[0]].add_metric([parts[2], parts[1]], float(value))
            elif parts[0] == "failed" and len(parts) == 2:
                failures[parts[1]] = float(value)
            elif parts[0] == "requeued" and len(parts) == 3:
                requeues[(parts[2], parts[1])] = float(value)
        for model, count in sorted(failures.items()):
            failed.add_metric([model], count)
        for (model, reason), count in sorted(requeues.items()):
            requeued.add_metric([model, reason], count)
        yield from families.values()
        yield failed
        yield requeued

    def _review_waiting(self, r: Redis, keys: Keys) -> GaugeMetricFamily:
        family = GaugeMetricFamily("redline_review_waiting", "Outputs awaiting a reviewer's label (GET /v1/review)",
                                   labels=["model", "detector"])
        pairs = sorted(text(p).split("|", 1) for p in r.smembers(keys.monitored))  # bounded: models x detectors
        with r.pipeline(transaction=False) as pipe:
            for model, detector in pairs:
                pipe.zcard(keys.review(model, detector))
            counts = pipe.execute()
        for (model, detector), count in zip(pairs, counts, strict=True):
            if detector in self.redline.detectors:
                family.add_metric([model, detector], count)
        return family

    def _detector_workers(self, served: dict[str, dict[str, int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("redline_detector_workers", "Live scoring workers that have a detector loaded, "
                                   "by the version they serve", labels=["detector", "version"])
        # 0 for the version this API serves, so that "no worker loads it" is a series an alert can read.
        for name, config in self.redline.detectors.items():
            served.setdefault(name, {}).setdefault(config.version, 0)
        for detector, versions in sorted(served.items()):
            for version, count in sorted(versions.items()):
                family.add_metric([detector, version], count)
        return family

    def _worker_files(self, files: dict[str, dict[str, dict[str, int]]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("redline_detector_worker_files", "Distinct files (fingerprints) live workers "
                                   "score a detector version with: above 1, that version's windows mix models",
                                   labels=["detector", "version"])
        for detector, versions in sorted(files.items()):
            for version, prints in sorted(versions.items()):
                family.add_metric([detector, version], len(prints))
        return family

    def _files_match(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("redline_detector_files_match", "Whether this API's files for the detector "
                                   "version it serves are those workers claimed it with (1) or not (0); absent "
                                   "until a worker has claimed it", labels=["detector", "version"])
        for name, match in sorted(self.redline.fleet.files_match().items()):
            if match is not None:  # "no worker yet" is RedlineDetectorNotLoaded's to report, not a mismatch
                family.add_metric([name, self.redline.detectors[name].version], int(match))
        return family

    def _detectors(self) -> Iterator[Any]:
        threshold = GaugeMetricFamily("redline_detector_threshold", "Operating threshold", labels=["detector"])
        target = GaugeMetricFamily("redline_detector_target_fnr_ratio", "Target false-negative rate",
                                   labels=["detector"])
        # The version the quality gauges describe (windows are per version): a dashboard marks upgrades,
        # after which those gauges start again.
        info = GaugeMetricFamily("redline_detector_info", "Detector version served (value 1)",
                                 labels=["detector", "version"])
        for name, config in self.redline.detectors.items():
            info.add_metric([name, config.version], 1)
            threshold.add_metric([name], config.threshold)
            if config.target_fnr is not None:
                target.add_metric([name], config.target_fnr)
        yield info
        yield threshold
        yield target


def exposition(redline: Any) -> bytes:
    """The /metrics body: this deployment's request metrics from every API process, Redis state, and
    the latest quality snapshot (its families are not in the registry, so none appears twice)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:  # single process (tests, `flask run`): the instruments live in the default registry
        registry.register(_DefaultRequestMetrics())
    try:
        snapshot, redis_up = redline.quality.serve(), True
    except RedisError as exc:  # the quality gauges go absent, and the collector says why
        log.warning("metrics: Redis unavailable (%s); exporting redline_redis_up 0", exc)
        snapshot, redis_up = None, False
    # One failed read is enough: a black-holed Redis costs a socket timeout (5 s) per call, and two would
    # reach Prometheus's 10 s scrape timeout.
    registry.register(RedlineCollector(redline, snapshot, redis_up))
    return generate_latest(registry) + (snapshot.text if snapshot else b"")


class _DefaultRequestMetrics(Collector):
    def collect(self) -> Iterator[Any]:
        yield from REQUESTS.collect()
        yield from REQUEST_SECONDS.collect()


def observe_request(route: str, method: str, status: int, started: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    REQUEST_SECONDS.labels(route, method).observe(time.perf_counter() - started)
