"""One error family: each error carries the HTTP status and a stable code for clients."""

from __future__ import annotations


class RedlineError(Exception):
    """Base of errors that reach a client as `{"error": {"code", "message", "request_id"}}`."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ConfigError(RedlineError):
    """Bad configuration: raised at start-up, never during a request."""

    code = "config_error"


class BadRequest(RedlineError):
    status = 400
    code = "bad_request"


class ValidationFailed(RedlineError):
    status = 422
    code = "validation_failed"


class Unauthorized(RedlineError):
    status = 401
    code = "unauthorized"


class Forbidden(RedlineError):
    status = 403
    code = "forbidden"


class TooLarge(RedlineError):
    """A field over a configured limit (item count, text length, metadata size). The request body as a
    whole over REDLINE_MAX_BODY_BYTES is HTTP's own 413."""

    status = 422
    code = "too_large"


class BodyTooLarge(RedlineError):
    """The request body over REDLINE_MAX_BODY_BYTES once decompressed (as sent, werkzeug's own 413)."""

    status = 413
    code = "request_entity_too_large"


class UnsupportedEncoding(RedlineError):
    status = 415
    code = "unsupported_media_type"


class NotFound(RedlineError):
    status = 404
    code = "not_found"


class Conflict(RedlineError):
    status = 409
    code = "conflict"


class Unavailable(RedlineError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 5, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    """Backpressure: too much accepted and not yet scored; the client should retry later."""

    status = 429
    code = "overloaded"
