"""`redline submit`: outputs from a JSON Lines file, one `POST /v1/outputs` item a line, sent to a
running API a chunk at a time (`api_client`): a backfill of past traffic, or a test set to score.

A backfill outruns the workers, so the API's backpressure (`429`, with `Retry-After`) is waited out
for as long as it lasts rather than taken for an error. Give each line an `id`: a second run then
resubmits the same outputs, which the API accepts without scoring them again (their status is
counted instead), so a run stopped halfway can simply be started again. A line without one gets a new
id each run. The whole file is read and checked before anything is sent; a refused request (`422`:
a bad field) stops the run, naming its lines: nothing of it was stored, the requests before it were.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .api_client import ApiError, post_in_chunks, read_key, read_objects

# 429s waited out a request, each for its Retry-After (at most 10 s): hours, longer than any backlog.
BACKPRESSURE_RETRIES = 10_000


def submit(items: Iterable[tuple[int, dict[str, Any]]], url: str, key: str | None, chunk: int = 100,
           sleep: Callable[[float], None] = time.sleep) -> Counter[str]:
    """POST the outputs `chunk` at a time; how many came back in each status (`queued` for new ones)."""
    statuses: Counter[str] = Counter()
    for answer in post_in_chunks(f"{url.rstrip('/')}/v1/outputs", key, "outputs", items, chunk, sleep,
                                 retries=BACKPRESSURE_RETRIES):
        statuses.update(o["status"] for o in answer["outputs"])
    return statuses


class _Patience:
    """The sleep between refusals, saying once a minute that the run is waiting, and why: with no live
    worker the backlog never drains, and a silent wait would look like a hang."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.waited = self.said = 0.0
        self.every_s = every_s

    def __call__(self, seconds: float) -> None:
        time.sleep(seconds)
        self.waited += seconds
        if self.waited - self.said >= self.every_s:
            self.said = self.waited
            print(f"redline submit: waiting for the backlog to drain (429) or Redis (503), {self.waited:.0f} s "
                  "so far; are workers running?", file=sys.stderr)


def main(args: Any) -> int:
    """`redline submit` (see cli.py for its arguments)."""
    try:
        key = read_key(args.key_file)
        # Checked whole before anything is sent (the API checks the fields), and counted.
        count, without_id = 0, 0
        for _, row in read_objects(args.file):
            count, without_id = count + 1, without_id + ("id" not in row)
    except (ApiError, ValueError, OSError) as exc:
        print(f"redline submit: {exc}", file=sys.stderr)
        return 2
    try:
        statuses = submit(read_objects(args.file), args.url, key, args.chunk, _Patience())
    except ApiError as exc:
        print(f"redline submit: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    print(f"redline submit: {count} outputs from {args.file}: {counts or 'none'}"
          + (f" ({without_id} without an id: sent again, they would be scored again)" if without_id else ""),
          file=sys.stderr)
    return 0
