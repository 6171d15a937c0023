"""gunicorn settings for the Redline API, derived from the same REDLINE_* settings as the app.

Run: gunicorn -c deploy/gunicorn.conf.py 'service.app:create_app()'   (what `redline api` does)
"""

from service.cli import configure_logging
from service.settings import Settings

_settings = Settings.from_env()
# The app's own loggers (gunicorn configures only its own); set before fork, so every process has it.
configure_logging(_settings.log_level)

bind = _settings.bind_address  # an IPv6 host in brackets: gunicorn read "::1:8080" as host "::1:8080", port ""
workers = _settings.api_processes
# Threads: POST /v1/score blocks while it waits for workers, so each process serves many waits.
worker_class = "gthread"
threads = 8
# One connection per request, taken only by a process with a free thread. With gthread's defaults
# (1,000 connections per process, keep-alive) one process took every bench client's kept-alive
# connection while the others idled: on a GPU host 32 clients landed in one GIL-bound process (104%
# CPU, 1,411 outputs/s). With worker_connections = threads a busy process stops accepting, and gthread
# keeps no connection alive (it needs spare connection slots for that), so the next request goes to
# a process with a free thread: 4 processes at ~47% CPU each, 2,616 outputs/s in the same run. The
# cost is a TCP handshake per request; a proxy in front (TLS, keep-alive to clients) hides it.
worker_connections = threads
keepalive = 0
# A sync wait may last up to REDLINE_MAX_SYNC_TIMEOUT_MS; never kill a request that is within it.
timeout = max(30, _settings.max_sync_timeout_ms // 1000 + 10)
graceful_timeout = 30
# GET /v1/outputs?id=...&id=...: gunicorn's default 4,094-byte request line held about 110 generated ids,
# under half of REDLINE_MAX_OUTPUTS_PER_REQUEST's default. 8,190 is the most it allows short of no limit.
limit_request_line = 8190
# gunicorn 25.1+ opens a control socket for `gunicornc` (worker status, adding workers, reloads), by
# default at ~/.gunicorn/gunicorn.ctl: one path per user, so a second API on the host took over the
# first one's socket, and where the user has no writable home (the Docker image) it failed at every
# start. One per API port, in the data dir beside its metrics directory. (Older gunicorns ignore it.)
control_socket = str(_settings.data_dir / f"gunicorn-api-{_settings.port}.ctl")
accesslog = "-"
# gunicorn's default format plus the duration and the X-Request-ID every response carries.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms %({x-request-id}o)s'
errorlog = "-"
loglevel = _settings.log_level.lower()
# App loaded per worker process after fork: each gets its own Redis connection pool.
preload_app = False


def on_starting(server):  # noqa: ANN001 - gunicorn hook signature
    """prometheus-client multiprocess mode: start from an empty directory, so counters of a previous
    run are not summed into this one (`redline api` sets PROMETHEUS_MULTIPROC_DIR)."""
    import os
    import shutil

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):  # noqa: ANN001 - gunicorn hook signature
    """Drop a dead process's live gauges; its counters stay in the directory, as they should."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
