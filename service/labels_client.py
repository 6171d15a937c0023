"""`redline export`: every labeled output of one (deployed model, detector) as JSON Lines, read from a
running API through `GET /v1/labels`, one page after another (`api_client`).

Each line is one item of the API's `outputs` (score, label, audit weight, texts), which
`redline evaluate` reads as it is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from . import api_client
from .api_client import ApiError, read_key


def pages(url: str, model: str, detector: str, key: str | None = None, window: str | None = None,
          version: str | None = None, limit: int = 100,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """The API's pages of labeled outputs, oldest first, following `next` until it is null."""
    query = {"model": model, "detector": detector, "limit": str(limit),
             **({"window": window} if window else {}), **({"version": version} if version else {})}
    return api_client.pages(f"{url.rstrip('/')}/v1/labels", query, key, sleep)


def export(out: IO[str], url: str, model: str, detector: str, **options: Any) -> tuple[int, str | None]:
    """Write every labeled output as one JSON line each; returns how many, and the detector version."""
    count, version = 0, None
    for page in pages(url, model, detector, **options):
        version = page.get("version")
        for item in page.get("outputs", []):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count, version


def main(args: Any) -> int:
    """`redline export` (see cli.py for its arguments)."""
    try:
        key = read_key(args.key_file)
    except ApiError as exc:
        print(f"redline export: {exc}", file=sys.stderr)
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
    except ApiError as exc:
        print(f"redline export: {exc}", file=sys.stderr)
        return 1
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)
    where = "standard output" if target is None else str(target)
    print(f"redline export: {count} labeled outputs of {args.model} / {args.detector} (version {version}) "
          f"to {where}", file=sys.stderr)
    return 0
