"""Monitoring costs: metrics for a 100,000-label window, and label ingest through the API.

    python -m bench.monitoring [--window 100000] [--labels 20000] [--models 10]

Prints (1) the pure metric recompute (AUC, N-AUCs, (N,M)-AUCs, FNR/FPR with intervals, IPW) on
arrays, (2) the same through `GET /v1/monitor`'s code path including the Redis read, (3) labels/s
through `POST /v1/labels` (batches of 500, 4 concurrent clients), and (4) with `--models` deployed
models x 3 detectors holding full windows, how long the background refresh of the quality gauges
takes and how long a `GET /metrics` and the listing `GET /v1/monitor` take, with the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from redis import Redis

from models import variants
from service.detector_config import load_configs
from service.keys import Keys
from service.monitoring import Entries, Monitor, Window, quality
from service.settings import Settings

from .common import ROOT, LocalRedline, machine


def timed(fn, repeat: int = 7) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=10, help="deployed models for the scrape measurement (0: skip)")
    args = parser.parse_args()
    variants.ensure()  # the shipped graphs are built from committed files, not committed
    settings = Settings()
    configs = load_configs([ROOT / "models"])
    config = configs["injury"]
    rng = np.random.default_rng(0)
    n = args.window
    labels = (rng.random(n) < 0.3).astype(np.int8)
    scores = np.round(np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1), 3)  # rounding makes ties
    now = time.time()
    entries = Entries(scores, labels, np.where(scores >= config.threshold, 1.0, 20.0), now - rng.random(n) * 3600,
                      now - 3600 - rng.random(n) * 3600)
    pure = timed(lambda: quality(entries, config, list(settings.monitor_ns),
                                 [(5, 2), (20, 5)], settings.monitor_min_positives))
    print(f"machine: {machine()}")
    print(f"pure metrics, {n:,}-label window: {pure:.1f} ms (median of 7)")

    with tempfile.TemporaryDirectory() as tmp:
        service = LocalRedline(Path(tmp), ROOT / "models", workers=1)
        try:
            redis = Redis.from_url(service.redis.url)
            keys, version = Keys(settings.queue_prefix), configs["injury"].version
            sc, lb, wt = scores.tolist(), labels.tolist(), entries.weights.tolist()
            la, ca = entries.labeled_at.tolist(), entries.created_at.tolist()
            with redis.pipeline(transaction=False) as pipe:
                for start in range(0, n, 10_000):
                    stop = min(n, start + 10_000)
                    pipe.zadd(keys.window("bench", "injury", version), {
                        f"o{i}|".encode() + struct.pack("<ddddd", sc[i], lb[i], wt[i], la[i], ca[i]): ca[i]
                        for i in range(start, stop)})
                    pipe.zadd(keys.scores("bench", "injury", version),
                              {f"o{i}|".encode() + struct.pack("<d", sc[i]): ca[i] for i in range(start, stop)})
                pipe.sadd(keys.monitored, "bench|injury")
                pipe.execute()
            monitor = Monitor(redis, dataclasses.replace(settings, monitor_cache_s=0), configs)
            full = timed(lambda: monitor.evaluate("bench", "injury", Window.parse("24h")))
            print(f"GET /v1/monitor code path (Redis read + parse + metrics + drift), {n:,} labels: {full:.1f} ms")

            ids = []
            session = requests.Session()
            for start in range(0, args.labels, 256):
                batch = [{"model": "ingest", "response": "hello", "detectors": ["injury"]}
                         for _ in range(min(256, args.labels - start))]
                ids += [o["id"] for o in session.post(service.base + "/v1/outputs", json={"outputs": batch},
                                                      timeout=60).json()["outputs"]]
            chunks = [ids[i:i + 500] for i in range(0, len(ids), 500)]
            lock = threading.Lock()

            def client() -> None:
                s = requests.Session()
                while True:
                    with lock:
                        if not chunks:
                            return
                        chunk = chunks.pop()
                    body = {"labels": [{"id": i, "detector": "injury", "label": int(k % 3 == 0)}
                                       for k, i in enumerate(chunk)]}
                    s.post(service.base + "/v1/labels", json=body, timeout=60).raise_for_status()

            began = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = len(ids) / (time.perf_counter() - began)
            print(f"label ingest through POST /v1/labels: {rate:,.0f} labels/s ({len(ids):,} labels)")
            if args.models:
                scrape(service, redis, keys, configs, args.models, n, rng)
        finally:
            service.stop()


def fill(redis: Redis, keys: Keys, model: str, detector: str, version: str, n: int,
         rng: np.random.Generator) -> None:
    """A full window and score history for one pair: n labeled outputs over the last 6 days."""
    labels = (rng.random(n) < 0.3).astype(float).tolist()
    scores = np.clip(rng.normal(0.3, 0.2, n) + 0.4 * np.array(labels), 0, 1).tolist()
    created = (time.time() - rng.random(n) * 6 * 86400).tolist()
    with redis.pipeline(transaction=False) as pipe:
        for start in range(0, n, 10_000):
            rows = range(start, min(n, start + 10_000))
            pipe.zadd(keys.window(model, detector, version), {
                f"{model}-{i}|".encode() + struct.pack("<ddddd", scores[i], labels[i], 1.0, created[i] + 60,
                                                       created[i]): created[i] for i in rows})
            pipe.zadd(keys.scores(model, detector, version),
                      {f"{model}-{i}|".encode() + struct.pack("<d", scores[i]): created[i] for i in rows})
        pipe.sadd(keys.monitored, f"{model}|{detector}")
        pipe.execute()


def scrape(service: LocalRedline, redis: Redis, keys: Keys, configs: dict, models: int, n: int,
           rng: np.random.Generator) -> None:
    """GET /metrics with `models` x every detector at full windows: the refresh behind it and the scrape."""
    for m in range(models):
        for name, config in configs.items():
            fill(redis, keys, f"scrape{m}", name, config.version, n, rng)
    session = requests.Session()

    def sample(name: str) -> float | None:
        body = session.get(service.base + "/metrics", timeout=600).text
        values = [float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " ")]
        return values[0] if values else None

    redis.delete(keys.quality_snapshot)
    started = time.time()
    sample("redline_quality_compute_duration_seconds")  # starts a refresh that covers the new pairs
    while (computed := sample("redline_quality_computed_timestamp_seconds")) is None or computed < started:
        time.sleep(0.5)
    refresh = sample("redline_quality_compute_duration_seconds") or 0.0
    latency = timed(lambda: session.get(service.base + "/metrics", timeout=600).raise_for_status())
    listing = timed(lambda: session.get(service.base + "/v1/monitor", timeout=600).raise_for_status())
    pairs = models * len(configs)
    print(f"{models} models x {len(configs)} detectors ({pairs} pairs) at {n:,}-entry windows, "
          f"windows {','.join(Settings().monitor_windows)}: "
          f"background refresh {refresh:.2f} s ({refresh / pairs * 1000:.0f} ms a pair); "
          f"GET /metrics {latency:.1f} ms, GET /v1/monitor (every pair) {listing:.1f} ms (medians of 7)")


if __name__ == "__main__":
    main()
