"""How many CPUs this process may use, which onnxruntime does not ask.

onnxruntime's default intra-op pool has one thread per physical core of the machine. A container
limited to 2 CPUs on a 64-core host (`docker run --cpus 2`, a Kubernetes CPU limit) then runs 32
threads that the CFS quota throttles, and under a cpuset onnxruntime logs pthread_setaffinity_np
errors. Workers size the pool to what the process may use instead, where that is less than the
machine has; elsewhere onnxruntime's default stands.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota on this process's cgroup and the ones above it, in CPUs (cgroup v2
    `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None where there is none.
    `self_cgroup` is the text of /proc/self/cgroup."""
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:  # not Linux
            return None
    quotas = []
    for line in self_cgroup.splitlines():
        if line.count(":") < 2:  # not a cgroup line: nothing to learn from it
            continue
        _, controllers, path = line.split(":", 2)
        if not controllers:  # cgroup v2: one hierarchy, mounted at the root
            quotas += [q for d in _upwards(cgroup_root, path) if (q := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own hierarchy
            base = next((b for b in (cgroup_root / controllers, cgroup_root / "cpu") if b.is_dir()), None)
            if base is not None:
                quotas += [q for d in _upwards(base, path) if (q := _v1_quota(d)) is not None]
    return min(quotas, default=None)


def _upwards(base: Path, path: str) -> Iterator[Path]:
    """The cgroup folder for `path` and every folder above it, up to the mount. In a container the
    mount is the container's own cgroup, where the host's path does not exist: the walk reaches it."""
    folder = base / path.strip("/")
    for above in (folder, *folder.parents):
        yield above
        if above == base:
            return


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def allowed_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (its affinity), capped by its cgroup's CPU quota, at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = quota_cpus(cgroup_root)
    return max(1, min(affinity, math.ceil(quota)) if quota is not None else affinity)


def intra_op_threads(configured: int, cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """The intra-op threads per session (0: onnxruntime's default) and why, for the log."""
    if configured:
        return configured, "REDLINE_INTRA_OP_THREADS"
    allowed, machine = allowed_cpus(cgroup_root), os.cpu_count() or 1
    if allowed < machine:
        return allowed, f"this process may use {allowed} of the machine's {machine} CPUs"
    return 0, f"the process may use all {machine} CPUs"
