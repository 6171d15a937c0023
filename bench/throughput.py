"""Service throughput vs raw onnxruntime on the same model, in one run, plus sync latency.

    python -m bench.throughput [--models-dir DIR] [--seconds 10] [--clients 16] [--per-request 8]

Prints outputs/s through the HTTP API (gunicorn + Redis + RQ worker) with concurrent closed-loop clients,
the raw onnxruntime outputs/s of the same detectors at their best batch size, their ratio, and
POST /v1/score latency p50/p99. Without shipped models in models/, it builds a synthetic model
of MiniLM-like compute and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from service.detector_config import load_configs
from service.settings import Settings
from workers.detector import load_detectors

from .common import LocalRedline, bench_models, machine

WORDS = ("the patient said the results were fine but the doctor wanted more tests before the surgery "
         "and the family asked about recovery time after the accident on the highway last week").split()


def make_texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(n)]


def raw_throughput(models_dir: Path, texts: list[str], seconds: float) -> tuple[float, int]:
    """Best outputs/s of one process running every detector's model directly, and the batch size."""
    detectors = load_detectors(load_configs([models_dir]), Settings().providers)
    models = {id(d.model): d.model for d in detectors.values()}.values()
    best = (0.0, 0)
    for batch in (1, 8, 16, 32, 64):
        items = [("", t) for t in texts[:batch]]
        for m in models:
            m.run(items)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            for m in models:
                m.run(items)
            done += batch
        rate = done / (time.perf_counter() - start)
        print(f"  raw onnxruntime batch {batch:>2}: {rate:8.1f} outputs/s")
        best = max(best, (rate, batch))
    return best


def service_throughput(base: str, texts: list[str], seconds: float, clients: int, per_request: int) -> float:
    """Closed loop: each client posts `per_request` outputs to POST /v1/score and waits for their
    scores before sending more, so the rate measured is what the service sustains, not a backlog."""
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def client(n: int) -> None:
        session = requests.Session()
        i = n * 997
        while time.monotonic() < stop:
            batch = [{"model": "bench", "response": texts[(i + k) % len(texts)]} for k in range(per_request)]
            i += per_request
            r = session.post(base + "/v1/score", json={"outputs": batch, "timeout_ms": 30_000}, timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
            counts[n] += per_request

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def sync_latency(base: str, texts: list[str], n: int) -> tuple[float, float]:
    session = requests.Session()
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        r = session.post(base + "/v1/score", json={"outputs": [{"model": "bench", "response": texts[i % len(texts)]}]},
                         timeout=60)
        samples.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(0.99 * (len(samples) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--words", type=int, default=100, help="words per text (~128 tokens with MiniLM)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models_dir = bench_models(args.models_dir, Path(tmp))
        texts = make_texts(512, args.words)
        print(f"machine: {machine()}")
        print(f"models: {models_dir}")
        raw, raw_batch = raw_throughput(models_dir, texts, args.seconds)
        service = LocalRedline(Path(tmp), models_dir, workers=args.workers)
        try:
            served = service_throughput(service.base, texts, args.seconds, args.clients, args.per_request)
            p50, p99 = sync_latency(service.base, texts, args.latency_samples)
        finally:
            service.stop()
    result = {"machine": machine(), "raw_outputs_per_s": round(raw, 1), "raw_best_batch": raw_batch,
              "service_outputs_per_s": round(served, 1), "ratio": round(served / raw, 3),
              "sync_p50_ms": round(p50, 1), "sync_p99_ms": round(p99, 1), "workers": args.workers,
              "clients": args.clients, "per_request": args.per_request}
    print(f"service: {served:.1f} outputs/s with {args.clients} clients x {args.per_request} outputs/request")
    print(f"raw onnxruntime: {raw:.1f} outputs/s (batch {raw_batch})")
    print(f"ratio service/raw: {served / raw:.3f}")
    print(f"POST /v1/score latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
