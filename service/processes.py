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


def bind_problem(host: str, port: int) -> str | None:
    """Why gunicorn could not bind host:port, or None: bound here as gunicorn binds (with SO_REUSEADDR,
    so a port left in TIME_WAIT by a server just stopped is free), and closed again."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except socket.gaierror as exc:  # a name that does not resolve
        return f"does not resolve ({exc.strerror})"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return IN_USE
        return f"cannot be bound here ({exc.strerror})"  # e.g. an address of another machine
    return None


IN_USE = "in use (another Redline API, or another server)"


def die_with_parent() -> None:
    """`preexec_fn` for children that must not outlive their parent, even when the parent is
    SIGKILLed (Linux only; elsewhere a no-op). The child gets SIGTERM and shuts down cleanly.
    Linux sends it when the *thread* that started the child exits, so start such children from a
    thread that lives as long as they should (the main thread does)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
