"""How long one tenant's outputs wait while other tenants' backfills drain, with and without
REDLINE_TENANT_FAIR_SHARE, in one run on one machine.

    python -m bench.fairness [--models-dir DIR] [--backfill 2000] [--second 500] [--share 200] [--probes 20]

Each scenario starts the service (embedded Redis, gunicorn API, one worker, API keys for three
tenants), has tenant `backfill` submit `--backfill` outputs at once and a second tenant `--second`
right after, then has tenant `small` submit one output every `--probe-every-s` seconds while those
backlogs drain. It reports the small tenant's time from submission to score (p50, p90, max, from the
records' created_at and scored_at) and how long each backfill took to drain. Three scenarios: no fair
share (one lane); a fair share with the second tenant hashed to the first's bulk lane (as when the
bulk lane was one queue); and with it in a bulk lane of its own. Without shipped models in models/,
it uses a synthetic model.
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
from service.queueing import bulk_lane

from .common import LocalRedline, bench_models, machine
from .throughput import make_texts

SCOPES = ["outputs:write", "read"]


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def second_tenant(same_lane: bool) -> str:
    """A name for the second backfilling tenant whose bulk lane is (or is not) `backfill`'s."""
    return next(name for name in (f"second{i}" for i in range(100))
                if (bulk_lane(name) == bulk_lane("backfill")) == same_lane)


def scenario(workdir: Path, models_dir: Path, share: int, second: str, args: argparse.Namespace) -> dict[str, Any]:
    keys = workdir / "keys.txt"
    sessions = {}
    for tenant in ("backfill", second, "small"):
        sessions[tenant] = requests.Session()
        sessions[tenant].headers["Authorization"] = f"Bearer {create_key(keys, tenant, SCOPES)}"
    service = LocalRedline(workdir, models_dir, api_keys_file=keys, tenant_fair_share=share,
                           max_pending_per_tenant=0)
    texts = make_texts(512, args.words)
    try:
        for tenant, prefix, count in (("backfill", "b", args.backfill), (second, "c", args.second)):
            for start in range(0, count, 100):  # requests of 100, as a backfill job would send
                batch = [{"id": f"{prefix}{i}", "model": "bench", "response": texts[i % len(texts)]}
                         for i in range(start, min(count, start + 100))]
                r = sessions[tenant].post(service.base + "/v1/outputs", json={"outputs": batch}, timeout=60)
                r.raise_for_status()
        probes = []
        for n in range(args.probes):
            r = sessions["small"].post(service.base + "/v1/outputs", timeout=60,
                                       json={"outputs": [{"id": f"s{n}", "model": "bench", "response": texts[n]}]})
            r.raise_for_status()
            probes.append(f"s{n}")
            time.sleep(args.probe_every_s)
        waits = sorted(_wait_scored(sessions["small"], service.base, i) for i in probes)
        drained = {tenant: _drain_time(sessions[tenant], service.base, f"{prefix}0", f"{prefix}{count - 1}")
                   for tenant, prefix, count in (("backfill", "b", args.backfill), (second, "c", args.second))}
    finally:
        service.stop()
    return {"share": share, "second_tenant_lane": "same" if bulk_lane(second) == bulk_lane("backfill") else "own",
            "small_p50_s": round(statistics.median(waits), 2),
            "small_p90_s": round(waits[int(0.9 * (len(waits) - 1))], 2),
            "small_max_s": round(waits[-1], 2), "backfill_drained_s": round(drained["backfill"], 1),
            "second_drained_s": round(drained[second], 1)}


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


def _drain_time(session: requests.Session, base: str, first_id: str, last_id: str) -> float:
    """Seconds from a backfill's first output's acceptance to its last one's score, by the records (its
    last output is scored last: each lane is first in, first out)."""
    deadline = time.monotonic() + 600
    while (last := session.get(f"{base}/v1/outputs/{last_id}", timeout=30).json())["status"] == "queued":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{last_id} was not scored within 600 s")
        time.sleep(0.2)
    first = session.get(f"{base}/v1/outputs/{first_id}", timeout=30).json()
    return _seconds(last["scored_at"]) - _seconds(first["created_at"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--backfill", type=int, default=2000, help="outputs the backfilling tenant submits at once")
    parser.add_argument("--second", type=int, default=500, help="outputs a second tenant submits right after")
    parser.add_argument("--share", type=int, default=200, help="REDLINE_TENANT_FAIR_SHARE of the second run")
    parser.add_argument("--probes", type=int, default=20, help="outputs the small tenant submits meanwhile")
    parser.add_argument("--probe-every-s", type=float, default=0.5)
    parser.add_argument("--words", type=int, default=100, help="words per text (~128 tokens with MiniLM)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models_dir = bench_models(args.models_dir, Path(tmp))
        print(f"machine: {machine()}")
        results = []
        for n, (share, same_lane) in enumerate(((0, True), (args.share, True), (args.share, False))):
            workdir = Path(tmp) / f"scenario-{n}"
            workdir.mkdir()
            result = scenario(workdir, models_dir, share, second_tenant(same_lane), args)
            print(f"REDLINE_TENANT_FAIR_SHARE={share}, second tenant in the {result['second_tenant_lane']} bulk lane: "
                  f"the small tenant's outputs waited p50 {result['small_p50_s']} s, p90 {result['small_p90_s']} s, "
                  f"max {result['small_max_s']} s; the backfills of {args.backfill} and {args.second} drained in "
                  f"{result['backfill_drained_s']} s and {result['second_drained_s']} s")
            results.append(result)
    print(json.dumps({"machine": machine(), "backfill": args.backfill, "second": args.second, "probes": args.probes,
                      "results": results}))


if __name__ == "__main__":
    main()
