"""Child-process helpers shared by `redline serve`, the embedded Redis, tests and benchmarks."""

from __future__ import annotations

import ctypes
import errno
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for test and benchmark servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (bound as gunicorn binds, with SO_REUSEADDR, so a
    port left in TIME_WAIT by a server just stopped does not count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def die_with_parent() -> None:
    """`preexec_fn` for children that must not outlive their parent, even when the parent is
    SIGKILLed (Linux only; elsewhere a no-op). The child gets SIGTERM and shuts down cleanly.
    Linux sends it when the *thread* that started the child exits, so start such children from a
    thread that lives as long as they should (the main thread does)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
