"""onnxruntime's telemetry to Microsoft stays off in Redline's workers unless the operator turns it on.

onnxruntime's Linux wheels (1.29 and later) keep a device id in ~/.cache/Microsoft and upload usage
events unless ORT_DISABLE_TELEMETRY is set; with it set, neither happens. The id file is what a test
can see without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from .procs import redline_env, run_burst_worker

pytestmark = pytest.mark.integration

# onnxruntime also stays quiet under these CI markers: left in, they would hide a regression in CI.
QUIETING = ("ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS", "CI", "GITHUB_ACTIONS", "TF_BUILD")


def _worker_leaves_in_home(home: Path, redis_url: str, models: Path, prefix: str, **operator: str) -> list[str]:
    """Files a real `redline worker --burst` (which loads the models, then finds its queues empty)
    leaves under HOME, started from an operator's shell that sets only `operator`."""
    env = {k: v for k, v in redline_env(redis_url, models, prefix).items() if k not in QUIETING}
    env.update(HOME=str(home), **operator)
    run_burst_worker(env)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_workers_keep_onnxruntime_telemetry_off_unless_the_operator_turns_it_on(
        tmp_path: Path, redis_url: str, synthetic_models: Path, prefix: str) -> None:
    opted_in = _worker_leaves_in_home(tmp_path / "in", redis_url, synthetic_models, prefix, ORT_DISABLE_TELEMETRY="0")
    if not any("Microsoft" in f for f in opted_in):
        pytest.skip(f"this onnxruntime build keeps no telemetry device id (left {opted_in}): nothing to turn off")
    assert _worker_leaves_in_home(tmp_path / "default", redis_url, synthetic_models, prefix) == []
