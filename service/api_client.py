"""A client of Redline's own HTTP API, for the commands that work through a running API rather than
Redis (`redline export`, `redline retry`), so they run wherever a reviewer or an operator can reach
the API, with an API key's tenant and scopes. Standard library only: the service's runtime
requirements have no HTTP client.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# A 503 means Redis is away for now (a restart, a failover), a 429 that the backlog is full: wait as the
# API asks (Retry-After), a few times.
RETRIES, MAX_WAIT_S = 5, 10.0


class ApiError(Exception):
    """The API refused or could not be reached; the message says which and why."""


class BadLine(ValueError):
    """A line of an input file that is not what the command sends; nothing was sent."""


def call(url: str, key: str | None, body: Any = None, sleep: Callable[[float], None] = time.sleep,
         retries: int = RETRIES) -> dict[str, Any]:
    """GET `url`, or POST `body` to it as JSON, and return the JSON answer; a 429 or 503 is waited out
    `retries` times."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        "Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {}),
        **({"Authorization": f"Bearer {key}"} if key else {})})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code in (429, 503) and attempt < retries:
                sleep(min(float(exc.headers.get("Retry-After") or 1), MAX_WAIT_S))
                continue
            raise ApiError(f"{exc.code} from {url.split('?')[0]}: {_message(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach {url.split('?')[0]}: {reason}") from None
    raise AssertionError("unreachable")


def pages(url: str, query: dict[str, Any], key: str | None,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """GET `url` with `query`, then each page after it, passing its `next` as `cursor` until it is null
    (the API's cursors name the last item returned, so the pages cover a changing list once)."""
    cursor: str | None = None
    while True:
        page = call(f"{url}?" + urllib.parse.urlencode({**query, **({"cursor": cursor} if cursor else {})}), key,
                    sleep=sleep)
        yield page
        cursor = page.get("next")
        if not cursor:
            return


def post_in_chunks(url: str, key: str | None, field: str, items: Iterable[tuple[int, dict[str, Any]]], chunk: int,
                   sleep: Callable[[float], None] = time.sleep, retries: int = RETRIES) -> Iterator[dict[str, Any]]:
    """POST `{field: [...]}` of `items` (line number, item) `chunk` at a time, as they are read, yielding
    each answer. The API takes a request whole or not at all: a refused one raises ApiError naming its
    lines, and the requests before it stand."""
    sent, part = 0, []
    for item in items:
        part.append(item)
        if len(part) == chunk:
            yield _post_part(url, key, field, part, sent, sleep, retries)
            sent, part = sent + len(part), []
    if part:
        yield _post_part(url, key, field, part, sent, sleep, retries)


def _post_part(url: str, key: str | None, field: str, part: list[tuple[int, dict[str, Any]]], sent: int,
               sleep: Callable[[float], None], retries: int) -> dict[str, Any]:
    try:
        return call(url, key, {field: [item for _, item in part]}, sleep=sleep, retries=retries)
    except ApiError as exc:
        raise ApiError(f"lines {part[0][0]}-{part[-1][0]} were refused, and none of them was taken ({exc}); "
                       f"the {sent} {field} before them were") from None


def read_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file, read as they are asked for:
    a backfill's file may not fit in memory. Commands read it once to check it, then again to send it."""
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise BadLine(f"line {number}: not JSON") from None
            if not isinstance(row, dict):
                raise BadLine(f"line {number}: not a JSON object")
            yield number, row


def read_key(path: str | None) -> str | None:
    """The API key in `path` (a file, never a command-line argument: shell history and process
    listings would keep it), or None without one."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ApiError(f"cannot read the key file: {exc}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    """The API's own error message (`{"error": {"message"}}`), or the status line."""
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)
