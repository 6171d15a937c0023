"""`redline retry`: queue failed outputs for scoring again through a running API, once their cause is
fixed (a worker with the missing detector deployed, memory raised). It pages through the dead letters
(`GET /v1/dead-letters`, newest first), keeps those whose error contains `--error` and of `--model`,
and retries them (`POST /v1/dead-letters/retry`) a chunk at a time as it goes: the last step of the
failure runbooks as one command. One pass: outputs that fail again at once are listed again as newer
than the pages already read, so they end the run instead of looping.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .api_client import ApiError, call, pages, read_key

PAGE = 1000  # the most dead letters one GET /v1/dead-letters answers with


@dataclass
class RetryReport:
    """What a run did: the API's answers, summed."""

    requeued: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # already queued again, or scored
    missing: list[str] = field(default_factory=list)  # erased or expired since they were listed
    matching: list[str] = field(default_factory=list)  # with `dry_run`: what would be retried


def retry_failed(url: str, key: str | None, error: str | None = None, model: str | None = None,
                 chunk: int = 100, dry_run: bool = False, sleep: Callable[[float], None] = time.sleep,
                 page_size: int = PAGE) -> RetryReport:
    """Retry every dead letter that matches; with `dry_run`, only list them."""
    base = url.rstrip("/")
    report = RetryReport()
    for page in pages(f"{base}/v1/dead-letters", {"limit": page_size}, key, sleep):
        todo = [o["id"] for o in page["outputs"] if _matches(o, error, model)]
        if dry_run:
            report.matching += todo
            todo = []
        for start in range(0, len(todo), chunk):
            answer = call(f"{base}/v1/dead-letters/retry", key, {"ids": todo[start:start + chunk]}, sleep=sleep)
            report.requeued += answer["requeued"]
            report.skipped += answer["skipped"]
            report.missing += answer["missing"]
    return report


def _matches(output: dict[str, Any], error: str | None, model: str | None) -> bool:
    return (error is None or error in (output.get("error") or "")) and (model is None or output.get("model") == model)


def main(args: Any) -> int:
    """`redline retry` (see cli.py for its arguments)."""
    try:
        report = retry_failed(args.url, read_key(args.key_file), args.error, args.model, args.chunk, args.dry_run)
    except ApiError as exc:
        print(f"redline retry: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        for output_id in report.matching:
            print(output_id)
        print(f"redline retry: {len(report.matching)} failed outputs match (none retried: --dry-run)", file=sys.stderr)
    else:
        print(f"redline retry: {len(report.requeued)} failed outputs queued for scoring again; "
              f"{len(report.skipped)} already queued or scored, {len(report.missing)} gone", file=sys.stderr)
    return 0
