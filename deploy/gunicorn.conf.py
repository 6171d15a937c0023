"""gunicorn settings for the Redline API, derived from the same REDLINE_* settings as the app.

Run: gunicorn -c deploy/gunicorn.conf.py 'service.app:create_app()'   (what `redline api` does)
"""

from service.settings import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.api_processes
# Threads: POST /v1/score blocks while it waits for workers, so each process serves many waits.
worker_class = "gthread"
threads = 8
# A sync wait may last up to REDLINE_MAX_SYNC_TIMEOUT_MS; never kill a request that is within it.
timeout = max(30, _settings.max_sync_timeout_ms // 1000 + 10)
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
# App loaded per worker process after fork: each gets its own Redis connection pool.
preload_app = False
