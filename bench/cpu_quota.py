"""The shipped graph under a CPU quota (`docker run --cpus`, a Kubernetes CPU limit): onnxruntime's
default pool (one thread per core of the machine) against the pool a worker sizes to its quota
(workers/cpus.py). Needs root, to make the cgroup.

    sudo .venv/bin/python -m bench.cpu_quota [--cpus 1] [--rounds 2] [--seconds 15]

Each round runs both in fresh processes inside the cgroup, one after the other, and the ratio is
taken within the round, so the machine's drift between rounds cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from models import variants
from service.detector_config import load_configs
from workers import cpus
from workers.detector import load_detectors

from .common import ROOT, cgroup_with_cpu_quota, in_cgroup, machine
from .model_speed import measure


def child(pool: str, args: argparse.Namespace) -> float:
    """Outputs/s of the graph CPU workers serve, with onnxruntime's default pool or the worker's."""
    threads = 0 if pool == "default" else cpus.intra_op_threads(0)[0]
    detectors = load_detectors(load_configs([ROOT / "models"]), ["CPUExecutionProvider"], threads)
    return measure(next(iter(detectors.values())).model, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=float, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", choices=("default", "worker"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child, args))
        return
    variants.ensure()
    rounds = []
    with cgroup_with_cpu_quota(args.cpus) as procs:
        for _ in range(args.rounds):
            rate = {}
            for pool in ("default", "worker"):
                command = [sys.executable, "-m", "bench.cpu_quota", "--child", pool, "--seconds", str(args.seconds),
                           "--tokens", str(args.tokens), "--batch", str(args.batch)]
                rate[pool] = float(subprocess.run(in_cgroup(procs, command), cwd=ROOT, check=True,
                                                  capture_output=True, text=True).stdout.split()[-1])
            rounds.append({**rate, "ratio_worker_over_default": round(rate["worker"] / rate["default"], 3)})
    print(json.dumps({"machine": machine(), "machine_cpus": os.cpu_count(), "quota_cpus": args.cpus,
                      "tokens": args.tokens, "batch": args.batch, "outputs_per_s": rounds}))


if __name__ == "__main__":
    main()
