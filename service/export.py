"""Labeled outputs of one (deployed model, detector), a page at a time: data to retrain on, or to
evaluate offline (`redline evaluate` reads the `score` and `label` of each line).

Pages follow a window's order (output time, then id) with a cursor that names the last entry
returned, not a position: the window is trimmed at its old end and late labels land anywhere in
it, so an offset would skip or repeat entries as it changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

from .errors import ValidationFailed
from .keys import ID_PATTERN, Keys
from .store import OutputStore

Cursor = tuple[float, str]  # (created_at, output id) of the last entry returned
_ENTRY = struct.Struct("<ddddd")  # score, label, weight, labeled_at, created_at (store_scripts.py's window_put)


@dataclass
class LabeledEntry:
    id: str
    score: float
    label: int
    weight: float
    labeled_at: float
    created_at: float


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(json.dumps([repr(cursor[0]), cursor[1]]).encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> Cursor:
    """A cursor this API gave (`next`); anything else is a 422, never a 500."""
    try:
        at, output_id = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        created_at = float(at)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("'cursor' is not one this API gave: pass the `next` of the previous page") from None
    if not isinstance(output_id, str) or not re.fullmatch(ID_PATTERN, output_id) or not math.isfinite(created_at):
        raise ValidationFailed("'cursor' is not one this API gave: pass the `next` of the previous page")
    return created_at, output_id


def _order(output_id: bytes) -> bytes:
    # Redis orders members of equal score by their bytes, and a member is `id|` + packed doubles;
    # no id holds '|', so two members compare as their `id|` prefixes do.
    return output_id + b"|"


def labeled_page(redis: Redis, keys: Keys, model: str, detector: str, version: str, start: float,
                 cursor: Cursor | None, limit: int) -> tuple[list[LabeledEntry], Cursor | None]:
    """Up to `limit` labeled entries of the window created at or after `start`, after `cursor`, oldest
    first; and the cursor of the next page (None when this one is the last)."""
    key = keys.window(model, detector, version)
    rows: list[tuple[bytes, float]] = []
    low = repr(start) if math.isfinite(start) else "-inf"
    if cursor is not None and cursor[0] >= start:
        at, last = cursor
        ties = cast("list[tuple[bytes, float]]", redis.zrangebyscore(key, at, at, withscores=True))
        rows = [(m, s) for m, s in ties if _order(m.split(b"|", 1)[0]) > _order(last.encode())]
        low = f"({at!r}"
    if len(rows) <= limit:
        rows += cast("list[tuple[bytes, float]]",
                     redis.zrangebyscore(key, low, "+inf", start=0, num=limit + 1 - len(rows), withscores=True))
    entries = []
    for member, _ in rows[:limit]:
        output_id, packed = member.split(b"|", 1)
        score, label, weight, labeled_at, created_at = _ENTRY.unpack(packed)
        entries.append(LabeledEntry(output_id.decode(), score, int(label), weight, labeled_at, created_at))
    if len(rows) <= limit or not entries:
        return entries, None
    return entries, (rows[limit - 1][1], entries[-1].id)  # the set's own score: what the next page asks for


def records(store: OutputStore, entries: list[LabeledEntry], detector: str) -> list[dict[str, Any] | None]:
    """Each entry's prompt, response, metadata, scores and who labeled it for `detector` (None for a record
    that expired before its window entry: with a record TTL shorter than the window retention)."""
    return store.get_many([e.id for e in entries], ["prompt", "response", "metadata", "scores",
                                                    f"labeled_by:{detector}"])
