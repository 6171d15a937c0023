"""Helpers shared by the benchmarks: machine description and a locally started Redline."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import requests

from models import synthetic, variants
from service.detector_config import load_configs
from service.embedded_redis import EmbeddedRedis
from service.processes import die_with_parent, free_port
from service.settings import Settings
from workers.cpus import CGROUP_ROOT

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__}")


def bench_models(models_dir: Path | None, tmp: Path) -> Path:
    """`models_dir`, else the shipped detectors (their graphs built from the committed files), else a
    synthetic model of MiniLM-like compute built under `tmp` (and said so)."""
    if models_dir is not None:
        return models_dir
    shipped = Settings().models_dirs[0]
    variants.ensure()  # the shipped graphs are built from committed files, not committed
    if load_configs([shipped]):
        return shipped
    synthetic.build(tmp / "synthetic", encoder_layers=6)
    print("no shipped detectors: using a synthetic model of MiniLM-like compute")
    return tmp / "synthetic"


class LocalRedline:
    """Embedded Redis + gunicorn API + N scoring workers, as `redline serve` runs them."""

    def __init__(self, workdir: Path, models_dir: Path, workers: int = 1, **settings: object) -> None:
        self.redis = EmbeddedRedis(workdir / "redis", persist=False).start()
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
        self.env.update({"REDLINE_REDIS_URL": self.redis.url, "REDLINE_PORT": str(self.port),
                         "REDLINE_MODELS_DIRS": str(models_dir), "REDLINE_LOG_LEVEL": "WARNING"})
        self.env.update({f"REDLINE_{k.upper()}": str(v) for k, v in settings.items()})
        self.logs = open(workdir / "processes.log", "wb")  # noqa: SIM115 - closed in stop()
        self.procs = [self._spawn("worker") for _ in range(workers)] + [self._spawn("api")]
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(self.base + "/readyz", timeout=1).json().get("workers_alive") == workers:
                    break
            except (requests.RequestException, ValueError):  # still starting
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service did not become ready; see {workdir / 'processes.log'}")
            time.sleep(0.2)

    def _spawn(self, role: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "service.cli", role], env=self.env, cwd=ROOT,
                                stdout=self.logs, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.stop()
        self.logs.close()


@contextlib.contextmanager
def cgroup_with_cpu_quota(cpus: float) -> Iterator[Path]:
    """A cgroup whose CPU quota is `cpus` (what `docker run --cpus` sets up: cgroup v1's cpu
    controller, or v2 with cpu delegated); yields its cgroup.procs, into which a process moves by
    writing its PID. Raises OSError where this process cannot make one (it needs root)."""
    name = f"redline-{os.getpid()}-{time.monotonic_ns()}"
    v1, v2 = CGROUP_ROOT / "cpu", CGROUP_ROOT
    period = 100_000
    if (v1 / "cpu.cfs_quota_us").exists():
        folder = v1 / name
        folder.mkdir()
        (folder / "cpu.cfs_period_us").write_text(str(period))
        (folder / "cpu.cfs_quota_us").write_text(str(round(cpus * period)))
    elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
        folder = v2 / name
        folder.mkdir()
        (folder / "cpu.max").write_text(f"{round(cpus * period)} {period}")
    else:
        raise OSError("no cpu controller to set a quota with")
    try:
        yield folder / "cgroup.procs"
    finally:
        folder.rmdir()


def in_cgroup(procs: Path, command: list[str]) -> list[str]:
    """`command`, started inside the cgroup whose cgroup.procs is `procs`."""
    return ["sh", "-c", f'echo $$ > {shlex.quote(str(procs))} && exec "$@"', "sh", *command]
