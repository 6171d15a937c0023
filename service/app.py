"""Flask app factory. gunicorn runs `service.app:create_app()`; no module-level app exists."""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from redis import Redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from werkzeug.exceptions import HTTPException

from .auth import OPEN, KeyStore, Principal, is_loopback
from .core import Redline
from .errors import ConfigError, RedlineError, Unavailable
from .request_body import decompress_body, parse_json_body
from .schemas import REQUEST_ID_PATTERN
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
    app.extensions["redline.keys"] = open_or_keys(settings)

    from .api import dead_letters, detectors, health, labels, metrics, monitor, outputs, review

    for module in (outputs, labels, review, monitor, detectors, dead_letters, health, metrics):
        app.register_blueprint(module.bp)
    _register_error_handlers(app)
    _register_request_ids(app)  # before auth: its log lines (a keys-file reload) name the request too
    _register_auth(app)
    _register_request_metrics(app)
    return app


# A malformed X-Request-ID is replaced, not refused: the header is optional, and a request must not
# fail over it.
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_id() -> str:
    """This request's id: the client's X-Request-ID when well-formed, else one made for it."""
    if "request_id" not in g:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    return g.request_id  # type: ignore[no-any-return]


def _register_request_ids(app: Flask) -> None:
    """Every response carries X-Request-ID, every error body its `request_id`, and the app's log lines
    during a request and gunicorn's access log name it: a client's report finds the server's traceback."""
    @app.before_request
    def assign() -> None:  # a before_request that returned the id would become the response
        request_id()

    @app.after_request
    def echo(response: Response) -> Response:
        response.headers["X-Request-ID"] = request_id()
        return response


def _register_request_metrics(app: Flask) -> None:
    from .metrics import observe_request

    @app.before_request
    def start_timer() -> None:
        g.redline_started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        # The URL rule, not the path: a bounded label ("/v1/outputs/<output_id>"), never an id.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        if route != "/metrics":
            observe_request(route, request.method, response.status_code, g.get("redline_started", time.perf_counter()))
        return response


def core() -> Redline:
    """The Redline core of the app handling this request."""
    return current_app.extensions["redline"]


def json_body() -> dict[str, Any]:
    """This request's body as a JSON object; a 400 or 422 naming what is wrong with it otherwise."""
    data = request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A chunked body (no Content-Length) is cut at the limit without an error, which then read
        # as truncated JSON (a 400 about a string never closed). Reading on raises werkzeug's 413.
        request.stream.read(1)
    data = decompress_body(data, request.headers.get("Content-Encoding"), limit)
    return parse_json_body(data, request.is_json)


def caller() -> Principal:
    """The authenticated caller of this request (the open tenant when auth is off)."""
    return g.principal  # type: ignore[no-any-return]


def open_or_keys(settings: Settings) -> KeyStore | None:
    """The key store, or None for open mode; refuses open mode beyond loopback unless REDLINE_AUTH=off."""
    if settings.api_keys_file:
        return KeyStore.load(Path(settings.api_keys_file))
    if settings.auth != "off" and not is_loopback(settings.host):
        raise ConfigError(f"refusing to serve on {settings.host} without API keys: set REDLINE_API_KEYS_FILE "
                          "(create keys with `redline keys create`) or, on a trusted network, REDLINE_AUTH=off")
    log.warning("Redline API is OPEN (no REDLINE_API_KEYS_FILE): anyone who can reach %s can read and "
                "write. Create keys with `redline keys create` and set REDLINE_API_KEYS_FILE.",
                settings.bind_address)
    return None


# Scopes needed per (method, URL rule), "read" for the rest; /healthz, /readyz and /metrics stay open.
_OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
_WRITE_SCOPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/outputs"): ("outputs:write",), ("POST", "/v1/score"): ("outputs:write",),
    ("PUT", "/v1/outputs/<output_id>/labels"): ("labels:write",), ("POST", "/v1/labels"): ("labels:write",),
    ("POST", "/v1/dead-letters/retry"): ("outputs:write",),
    ("POST", "/v1/review/leases"): ("labels:write", "read"),  # a lease's answer holds the outputs' texts
    ("POST", "/v1/review/leases/release"): ("labels:write",),
    ("DELETE", "/v1/outputs/<output_id>"): ("outputs:write",)}


def _register_auth(app: Flask) -> None:
    @app.before_request
    def authenticate() -> None:
        rule = request.url_rule.rule if request.url_rule else None
        if rule in _OPEN_ROUTES:
            return
        keys: KeyStore | None = app.extensions["redline.keys"]
        g.principal = OPEN if keys is None else keys.authenticate(request.headers.get("Authorization"))
        if rule is not None:
            for scope in _WRITE_SCOPES.get((request.method, rule), ("read",)):
                g.principal.require(scope)


def _register_error_handlers(app: Flask) -> None:
    def error(code: str, message: str) -> Response:
        return jsonify({"error": {"code": code, "message": message, "request_id": request_id()}})

    @app.errorhandler(RedlineError)
    def redline_error(exc: RedlineError):  # type: ignore[no-untyped-def]
        response = error(exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="redline"'
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response, exc.status

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError):  # type: ignore[no-untyped-def]
        # Nothing was accepted: a create is one atomic script, so the client may simply retry.
        log.warning("Redis unavailable: %s", exc)
        if isinstance(exc, OutOfMemoryError):  # maxmemory under noeviction: an operator must act
            what = "storage is full (Redis maxmemory reached)"
            retry_s = app.extensions["redline"].settings.retry_after_s
        elif isinstance(exc, ReadOnlyError):  # a replica, as during a failover
            what, retry_s = "storage is read-only (Redis is a replica)", 2
        else:
            what, retry_s = "storage is unavailable", 2
        return redline_error(Unavailable(f"{what}; nothing was stored, retry shortly", retry_after_s=retry_s))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = (exc.name or "error").lower().replace(" ", "_")
        allowed = sorted(getattr(exc, "valid_methods", None) or [])
        if exc.code == 413:
            message = f"request body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes (REDLINE_MAX_BODY_BYTES)"
        elif allowed:
            message = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}"
        else:
            message = exc.description or exc.name
        response = error(code, message)
        if allowed:  # a 405 must say what is allowed (RFC 9110), and werkzeug's header was on its own response
            response.headers["Allow"] = ", ".join(allowed)
        return response, exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        # Log the traceback for operators (with the request id the client is given); clients get no internals.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error("internal_error", "internal server error (quote its request_id to the operator)"), 500
