"""How long one tenant's outputs wait while another tenant's backfill drains, with and without
REDLINE_TENANT_FAIR_SHARE, in one run on one machine.

    python -m bench.fairness [--models-dir DIR] [--backfill 2000] [--share 200] [--probes 20]

For each setting it starts the service (embedded Redis, gunicorn API, one worker, API keys for two
tenants), has tenant `backfill` submit `--backfill` outputs at once, then has tenant `small` submit
one output every `--probe-every-s` seconds while that backlog drains, and reports the small tenant's
time from submission to score (p50, p90, max, from the records' created_at and scored_at) and how
long the backfill took to drain. Without shipped models in models/, it uses a synthetic model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from service.auth import create_key

from .common import LocalRedline, bench_models, machine
from .throughput import make_texts

SCOPES = ["outputs:write", "read"]


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def scenario(workdir: Path, models_dir: Path, share: int, args: argparse.Namespace) -> dict[str, Any]:
    keys = workdir / "keys.txt"
    backfill_key = create_key(keys, "backfill", SCOPES)
    small_key = create_key(keys, "small", SCOPES)
    service = LocalRedline(workdir, models_dir, api_keys_file=keys, tenant_fair_share=share,
                           max_pending_per_tenant=0)
    texts = make_texts(512, args.words)
    try:
        backfill = requests.Session()
        backfill.headers["Authorization"] = f"Bearer {backfill_key}"
        small = requests.Session()
        small.headers["Authorization"] = f"Bearer {small_key}"
        started = time.monotonic()
        for start in range(0, args.backfill, 100):  # requests of 100, as a backfill job would send
            batch = [{"id": f"b{i}", "model": "bench", "response": texts[i % len(texts)]}
                     for i in range(start, min(args.backfill, start + 100))]
            r = backfill.post(service.base + "/v1/outputs", json={"outputs": batch}, timeout=60)
            r.raise_for_status()
        probes = []
        for n in range(args.probes):
            r = small.post(service.base + "/v1/outputs", timeout=60,
                           json={"outputs": [{"id": f"s{n}", "model": "bench", "response": texts[n]}]})
            r.raise_for_status()
            probes.append(f"s{n}")
            time.sleep(args.probe_every_s)
        waits = [_wait_scored(small, service.base, i) for i in probes]
        drained = _drain_time(backfill, service.base, args.backfill, started)
    finally:
        service.stop()
    waits.sort()
    return {"share": share, "small_p50_s": round(statistics.median(waits), 2),
            "small_p90_s": round(waits[int(0.9 * (len(waits) - 1))], 2), "small_max_s": round(waits[-1], 2),
            "backfill_drained_s": round(drained, 1)}


def _wait_scored(session: requests.Session, base: str, output_id: str) -> float:
    """Seconds from the output's submission to its score, by the service's own record."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        record = session.get(f"{base}/v1/outputs/{output_id}", timeout=30).json()
        if record["status"] != "queued":
            assert record["status"] == "scored", record
            return _seconds(record["scored_at"]) - _seconds(record["created_at"])
        time.sleep(0.2)
    raise RuntimeError(f"{output_id} was not scored within 600 s")


def _drain_time(session: requests.Session, base: str, n: int, started: float) -> float:
    """Seconds from the backfill's first request until its last output was scored."""
    while session.get(f"{base}/v1/outputs/b{n - 1}", timeout=30).json()["status"] == "queued":
        time.sleep(0.2)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--backfill", type=int, default=2000, help="outputs the backfilling tenant submits at once")
    parser.add_argument("--share", type=int, default=200, help="REDLINE_TENANT_FAIR_SHARE of the second run")
    parser.add_argument("--probes", type=int, default=20, help="outputs the small tenant submits meanwhile")
    parser.add_argument("--probe-every-s", type=float, default=0.5)
    parser.add_argument("--words", type=int, default=100, help="words per text (~128 tokens with MiniLM)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models_dir = bench_models(args.models_dir, Path(tmp))
        print(f"machine: {machine()}")
        results = []
        for share in (0, args.share):
            workdir = Path(tmp) / f"share-{share}"
            workdir.mkdir()
            result = scenario(workdir, models_dir, share, args)
            print(f"REDLINE_TENANT_FAIR_SHARE={share}: the small tenant's outputs waited p50 "
                  f"{result['small_p50_s']} s, p90 {result['small_p90_s']} s, max {result['small_max_s']} s; "
                  f"the backfill of {args.backfill} drained in {result['backfill_drained_s']} s")
            results.append(result)
    print(json.dumps({"machine": machine(), "backfill": args.backfill, "probes": args.probes, "results": results}))


if __name__ == "__main__":
    main()
