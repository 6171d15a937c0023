"""`redline import`: reviewers' labels from a JSON Lines file, sent to a running API through
`POST /v1/labels` a chunk at a time (`api_client`), for labels made outside Redline: in a labeling
tool, a spreadsheet, or by editing the lines `redline export` wrote.

Each line is `{"id", "detector", "label"}`, the API's own label item; `--detector` stands in for a
line without one (so `redline export`'s lines, which are of one detector, can come back as they are;
their other fields are not sent). The whole file is read and checked before anything is sent. The API
applies each request whole or not at all, and labels are idempotent, so after a refused chunk the
file can be sent again once mended: what was applied comes back `unchanged`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .api_client import ApiError, BadLine, post_in_chunks, read_key, read_objects


def read_labels(path: str | Path, detector: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, label item) for each non-blank line, as they are read."""
    for number, row in read_objects(path):
        if "id" not in row or "label" not in row:
            raise BadLine(f"line {number}: a label is an object with \"id\" and \"label\"")
        name = row.get("detector", detector)
        if name is None:
            raise BadLine(f"line {number}: no \"detector\" (or pass --detector)")
        yield number, {"id": row["id"], "detector": name, "label": row["label"]}


def send(items: Iterable[tuple[int, dict[str, Any]]], url: str, key: str | None, chunk: int = 500,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """POST the labels `chunk` at a time; the summed `new`, `changed` and `unchanged` counts."""
    totals = {"new": 0, "changed": 0, "unchanged": 0}
    for answer in post_in_chunks(f"{url.rstrip('/')}/v1/labels", key, "labels", items, chunk, sleep):
        for name in totals:
            totals[name] += int(answer[name])
    return totals


def main(args: Any) -> int:
    """`redline import` (see cli.py for its arguments)."""
    try:
        key = read_key(args.key_file)
        count = sum(1 for _ in read_labels(args.file, args.detector))  # checked whole before anything is sent
    except (ApiError, BadLine, OSError) as exc:
        print(f"redline import: {exc}", file=sys.stderr)
        return 2
    try:
        totals = send(read_labels(args.file, args.detector), args.url, key, args.chunk)
    except ApiError as exc:
        print(f"redline import: {exc}", file=sys.stderr)
        return 1
    print(f"redline import: {count} labels from {args.file}: {totals['new']} new, {totals['changed']} changed, "
          f"{totals['unchanged']} unchanged", file=sys.stderr)
    return 0
