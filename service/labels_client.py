"""`redline export`: every labeled output of one (deployed model, detector) as JSON Lines, read from a
running API through `GET /v1/labels`, one page after another.

It is a client of the HTTP API, not of Redis, so it runs wherever a reviewer or a training job can
reach the API, with an API key's tenant and scopes. Each line is one item of the API's `outputs`
(score, label, audit weight, texts), which `redline evaluate` reads as it is. Standard library
only: the service's runtime requirements have no HTTP client.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# A 503 means Redis is away for now (a restart, a failover): wait as the API asks, a few times.
RETRIES, MAX_WAIT_S = 5, 10.0


class ExportFailed(Exception):
    """The API refused or could not be reached; the message says which and why."""


def pages(url: str, model: str, detector: str, key: str | None = None, window: str | None = None,
          version: str | None = None, limit: int = 100,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """The API's pages of labeled outputs, oldest first, following `next` until it is null."""
    query = {"model": model, "detector": detector, "limit": str(limit),
             **({"window": window} if window else {}), **({"version": version} if version else {})}
    cursor: str | None = None
    while True:
        page = _get(f"{url.rstrip('/')}/v1/labels?"
                    + urllib.parse.urlencode({**query, **({"cursor": cursor} if cursor else {})}), key, sleep)
        yield page
        cursor = page.get("next")
        if not cursor:
            return


def export(out: IO[str], url: str, model: str, detector: str, **options: Any) -> tuple[int, str | None]:
    """Write every labeled output as one JSON line each; returns how many, and the detector version."""
    count, version = 0, None
    for page in pages(url, model, detector, **options):
        version = page.get("version")
        for item in page.get("outputs", []):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count, version


def _get(url: str, key: str | None, sleep: Callable[[float], None]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                  **({"Authorization": f"Bearer {key}"} if key else {})})
    for attempt in range(RETRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 503 and attempt < RETRIES:
                sleep(min(float(exc.headers.get("Retry-After") or 1), MAX_WAIT_S))
                continue
            raise ExportFailed(f"{exc.code} from {url.split('?')[0]}: {_message(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ExportFailed(f"cannot reach {url.split('?')[0]}: {reason}") from None
    raise AssertionError("unreachable")


def _message(exc: urllib.error.HTTPError) -> str:
    """The API's own error message (`{"error": {"message"}}`), or the status line."""
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)


def main(args: Any) -> int:
    """`redline export` (see cli.py for its arguments)."""
    key = None
    if args.key_file:
        try:
            key = Path(args.key_file).read_text().strip()
        except OSError as exc:
            print(f"redline export: cannot read the key file: {exc}", file=sys.stderr)
            return 2
    options = {"key": key, "window": args.window, "version": args.version, "limit": args.limit}
    target = None if args.out in (None, "-") else Path(args.out)
    # Into a file beside the target, renamed when complete: a failed export leaves no partial file
    # that looks like a whole one.
    partial = None if target is None else target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        if partial is None:
            count, version = export(sys.stdout, args.url, args.model, args.detector, **options)
        else:
            with partial.open("w", encoding="utf-8") as out:
                count, version = export(out, args.url, args.model, args.detector, **options)
            partial.replace(target)  # type: ignore[arg-type]
    except ExportFailed as exc:
        print(f"redline export: {exc}", file=sys.stderr)
        return 1
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    where = "standard output" if target is None else str(target)
    print(f"redline export: {count} labeled outputs of {args.model} / {args.detector} (version {version}) "
          f"to {where}", file=sys.stderr)
    return 0
