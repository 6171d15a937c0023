"""Start real Redline processes (gunicorn API, scoring workers) for integration tests, or a real worker in
process (`run_burst`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import requests
from redis import Redis

from service.processes import die_with_parent, free_port
from service.settings import Settings
from workers.worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


def redline_env(redis_url: str, models_dirs: Path | list[Path], prefix: str, **extra: object) -> dict[str, str]:
    dirs = models_dirs if isinstance(models_dirs, list) else [models_dirs]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({"REDLINE_REDIS_URL": redis_url, "REDLINE_MODELS_DIRS": os.pathsep.join(map(str, dirs)),
                "REDLINE_QUEUE_PREFIX": prefix, "REDLINE_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
                # Tests compare a worker's scores with CPU predictions to 1e-5: on a GPU machine the
                # CUDA kernels differ by ~1e-4, so workers stay on CPU unless a test (test_gpu) says so.
                "REDLINE_PROVIDERS": "CPUExecutionProvider"})
    env.update({f"REDLINE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class Proc:
    """A child process whose output goes to a log file shown when a test fails."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = ROOT) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=die_with_parent)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return int(self.popen.returncode)


def worker_pid(name: str) -> int:
    """The PID in a worker's name (`host.pid.suffix`, workers.runtime.build_scorer)."""
    return int(name.rsplit(".", 2)[1])


def start_worker(env: Mapping[str, str], log_path: Path, redis: Redis, prefix: str, timeout: float = 30) -> Proc:
    """A real `redline worker` process; returns once it has published liveness."""
    before = set(redis.zrange(f"{prefix}:workers", 0, -1))
    proc = Proc([sys.executable, "-m", "service.cli", "worker"], env, log_path)
    deadline = time.monotonic() + timeout
    while set(redis.zrange(f"{prefix}:workers", 0, -1)) <= before:
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"worker did not start:\n{proc.log()}")
        time.sleep(0.05)
    return proc


def run_burst_worker(env: Mapping[str, str], wrap: Sequence[str] = ()) -> str:
    """Run a real `redline worker --burst` to its end (it loads its models, finds its queues empty
    and exits), started through `wrap` (taskset, a cgroup); returns its log."""
    done = subprocess.run([*wrap, sys.executable, "-m", "service.cli", "worker", "--burst"], cwd=ROOT, env=dict(env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def start_api(env: Mapping[str, str], log_path: Path, timeout: float = 30) -> tuple[Proc, str]:
    """A real gunicorn serving the API on a free port; returns (process, base URL)."""
    port = free_port()
    env = {**env, "REDLINE_PORT": str(port), "REDLINE_API_PROCESSES": "2"}
    proc = Proc([sys.executable, "-m", "service.cli", "api"], env, log_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(base + "/healthz", timeout=5).status_code == 200:
                return proc, base
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            pass
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"API did not start:\n{proc.log()}")
        time.sleep(0.1)


@contextlib.contextmanager
def api_and_worker(redis_url: str, models: Path, tmp: Path, prefix: str, **settings: object) -> Iterator[str]:
    """Real gunicorn and one real worker on `prefix`, for a module of tests; yields the API's base URL."""
    env = redline_env(redis_url, models, prefix, **settings)
    api, base = start_api(env, tmp / "api.log")
    try:
        worker = start_worker(env, tmp / "worker.log", Redis.from_url(redis_url), prefix)
        try:
            yield base
        finally:
            worker.stop()
    finally:
        api.stop()


def start_serve(env: Mapping[str, str], log_path: Path, timeout: float = 90, cwd: Path = ROOT) -> tuple[Proc, str]:
    """`redline serve` (Redis, API and workers) on a free port; returns (process, base URL) once
    `/readyz` answers 200 with a worker alive."""
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "serve"], {**env, "REDLINE_PORT": str(port)}, log_path, cwd)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not is_ready(base):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"redline serve did not become ready:\n{proc.log()}")
        time.sleep(0.1)
    return proc, base


def ctrl_c(proc: Proc, timeout: float = 60) -> tuple[int, str]:
    """Stop a `redline serve` as Ctrl-C does (SIGINT); returns its exit code and its log."""
    proc.popen.send_signal(signal.SIGINT)
    code = proc.popen.wait(timeout=timeout)
    log = proc.log()
    proc.stop()
    return code, log


def is_ready(base: str, timeout: float = 5) -> bool:
    """Whether the service at base takes requests (`/readyz` 200: Redis up) and scores them (a worker alive)."""
    try:
        r = requests.get(base + "/readyz", timeout=timeout)
        return r.status_code == 200 and r.json()["workers_alive"] > 0
    except (requests.RequestException, ValueError):  # not listening yet, or too busy starting to answer
        return False


def wait_for(predicate, timeout: float = 20, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def copy_models(models: Path, to: Path, detectors: tuple[str, ...] = ("injury",), **changes: object) -> Path:
    """A copy of a models folder with fields of these detectors' model.json changed."""
    shutil.copytree(models, to)
    for detector in detectors:
        path = to / detector / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return to


def run_burst(redis: Redis, settings: Settings) -> None:
    """A ScoringWorker in this process that scores what is queued, then stops."""
    build_worker(redis, settings).work(burst=True)
