"""Flask app factory. gunicorn runs `service.app:create_app()`; no module-level app exists."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify
from redis import Redis
from werkzeug.exceptions import HTTPException

from .core import Redline
from .errors import ConfigError, RedlineError
from .settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, redis: Redis | None = None) -> Flask:
    """Build the API. Settings come from REDLINE_* variables unless given."""
    settings = settings or Settings.from_env()
    if redis is None:
        if not settings.redis_url:
            raise ConfigError("REDLINE_REDIS_URL is not set (`redline serve` sets it for the processes it starts)")
        redis = Redis.from_url(settings.redis_url)
    app = Flask("redline")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["redline"] = Redline(settings, redis)

    from .api import detectors, health, labels, monitor, outputs

    for module in (outputs, labels, monitor, detectors, health):
        app.register_blueprint(module.bp)
    _register_error_handlers(app)
    return app


def core() -> Redline:
    """The Redline core of the app handling this request."""
    return current_app.extensions["redline"]


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(RedlineError)
    def redline_error(exc: RedlineError):  # type: ignore[no-untyped-def]
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = (exc.name or "error").lower().replace(" ", "_")
        if exc.code == 413:
            message = f"request body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes (REDLINE_MAX_BODY_BYTES)"
        else:
            message = exc.description or exc.name
        return jsonify({"error": {"code": code, "message": message}}), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        # Log the traceback for operators; clients get no internals.
        log.exception("unhandled error")
        return jsonify({"error": {"code": "internal_error", "message": "internal server error"}}), 500
