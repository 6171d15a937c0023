"""Workers size onnxruntime's intra-op pool to the CPUs the process may use (workers/cpus.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from bench.common import cgroup_with_cpu_quota, in_cgroup
from workers import cpus

from .procs import redline_env, run_burst_worker


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "max 100000\n", "pod/cpu.max": "150000 100000\n",
                             "pod/app/cpu.max": "max 100000\n"})
    assert cpus.quota_cpus(root, "0::/pod/app\n") == 1.5
    assert cpus.quota_cpus(root, "0::/\n") is None  # "max": no quota
    # Inside a container the mount is the container's own cgroup: the host's path is not there.
    container = _write(tmp_path / "c", {"cpu.max": "200000 100000\n"})
    assert cpus.quota_cpus(container, "0::/kubepods/burstable/pod12/abc\n") == 2.0


def test_cgroup_v1_quota_is_read_from_the_cpu_hierarchy(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                             "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n",
                             "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"})
    text = "4:memory:/docker/x\n2:cpu,cpuacct:/docker/x\n"
    assert cpus.quota_cpus(root, text) == 0.5
    assert cpus.quota_cpus(root, "2:cpu,cpuacct:/\n") is None  # -1: no quota
    assert cpus.quota_cpus(tmp_path / "absent", text) is None
    assert cpus.quota_cpus(root, "garbage\n" + text) == 0.5  # an odd line does not stop a worker


def test_threads_follow_the_allowance_only_where_the_process_is_limited(tmp_path: Path) -> None:
    assert cpus.intra_op_threads(3, tmp_path)[0] == 3  # the operator's setting wins
    machine = os.cpu_count() or 1
    threads, why = cpus.intra_op_threads(0, tmp_path)  # no cgroup quota under tmp_path
    allowed = len(os.sched_getaffinity(0))
    assert threads == (allowed if allowed < machine else 0), why


def _worker_log(redis_url: str, models: Path, prefix: str, wrap: list[str]) -> str:
    return run_burst_worker(redline_env(redis_url, models, prefix, log_level="INFO"), wrap)


@pytest.mark.integration
def test_a_worker_pinned_to_one_cpu_runs_one_intra_op_thread(
        tmp_path: Path, redis_url: str, synthetic_models: Path, prefix: str) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("this process may use only one CPU: pinning a worker to one limits nothing")
    default = _worker_log(redis_url, synthetic_models, prefix, [])
    assert "intra-op threads: onnxruntime's default" in default
    pinned = _worker_log(redis_url, synthetic_models, prefix, ["taskset", "-c", str(allowed[0])])
    assert "intra-op threads: 1\n" in pinned, pinned  # read back from the onnxruntime session


@pytest.mark.integration
def test_a_worker_under_a_cpu_quota_runs_as_many_threads_as_the_quota_allows(
        tmp_path: Path, redis_url: str, synthetic_models: Path, prefix: str) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("a one-CPU machine: a quota of one CPU limits nothing")
    with contextlib.ExitStack() as stack:
        try:
            procs = stack.enter_context(cgroup_with_cpu_quota(1))  # what `docker run --cpus 1` sets up
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup with a CPU quota here (needs root and a writable cgroupfs): {exc}")
        log = _worker_log(redis_url, synthetic_models, prefix, in_cgroup(procs, []))
    assert "this process may use 1 of the machine's" in log and "intra-op threads: 1\n" in log, log
