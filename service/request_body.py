"""Request bodies -> the JSON object they hold: gzip inflated within the body limit, strict JSON
(`strict_json`), bounded depth and no lone surrogates. Each refusal is a 4xx saying what is wrong."""

from __future__ import annotations

import re
import zlib
from typing import Any

from . import strict_json
from .errors import BadRequest, BodyTooLarge, UnsupportedEncoding, ValidationFailed

# Deeper bodies are refused before Python's recursion limit (about 1,000 levels) is near: past it,
# decoding and every later json.dumps of the value raise RecursionError instead of a client error.
MAX_JSON_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def decompress_body(data: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body as it was before compression. gzip, which HTTP clients offer for large batches (a batch of
    outputs shrinks 5-10x), is inflated at most to `limit` bytes, so a small body that inflates to
    gigabytes is a 413 before it is; any other encoding is a 415."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return data
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported: send gzip or no encoding")
    out, rest = b"", data
    while rest:  # one gzip member after another, as gzip.decompress reads them
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise BadRequest(f"request body is not valid gzip: {exc}", code="invalid_gzip") from None
        if len(out) > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes (REDLINE_MAX_BODY_BYTES) once decompressed")
        if not inflater.eof:
            raise BadRequest("request body is truncated gzip", code="invalid_gzip")
        rest = inflater.unused_data
    return out


def parse_json_body(data: bytes, is_json: bool) -> dict[str, Any]:
    """A request body -> the JSON object it holds, or a 400 `invalid_json` saying what is wrong with it.

    Read as `strict_json` (no `NaN`, `Infinity`, overflowing numbers or repeated keys); a string
    holding a lone UTF-16 surrogate (`"\\ud800"`: no UTF-8 encoding exists, so Redis could not store it)
    is a 422 naming the field.
    """
    if not is_json:
        raise BadRequest("request body must be JSON (Content-Type: application/json)", code="invalid_json")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8: invalid byte at offset {exc.start}",
                         code="invalid_json") from None
    try:
        body = strict_json.loads(text)
    except RecursionError:
        raise BadRequest(f"request body nests more than {MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except strict_json.RepeatedKey as exc:
        raise BadRequest(f"request body repeats key {exc.key!r} in one object", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, our own refusals, ints past Python's 4,300 digits
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    _check_values(body)
    return require_object(body)


def _check_values(body: Any) -> None:
    """Depth and lone surrogates, found iteratively (a recursive walk could itself hit the recursion limit)."""
    stack: list[tuple[Any, str, int]] = [(body, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ValidationFailed(f"{where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                                       "escape), which is not Unicode text")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"request body nests more than {MAX_JSON_DEPTH} levels (at {where[:200]})",
                             code="invalid_json")
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, f"{where}: a key", depth))
                stack.append((item, f"{where}.{key}" if where != "body" else key, depth + 1))
        else:
            stack.extend((item, f"{where}[{n}]", depth + 1) for n, item in enumerate(value))


def require_object(body: Any) -> dict[str, Any]:
    """The parsed JSON body, which must be an object."""
    if body is None:
        raise BadRequest("request body must be JSON (Content-Type: application/json)", code="invalid_json")
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object")
    return body
