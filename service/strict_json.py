"""JSON as RFC 8259 defines it, which Python's `json.loads` is not: `NaN`, `Infinity` and numbers
that overflow to infinity are refused (stored, they would make every later answer unparsable, and a
NaN threshold compares false with every score), as is a key repeated within one object (which value
counts differs between parsers). Request bodies and model.json files are read with it."""

from __future__ import annotations

import json
import math
from typing import Any


class RepeatedKey(ValueError):
    """A key that occurs twice in one object; `key` names it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} is repeated in one object")
        self.key = key


def loads(text: str) -> Any:
    """`json.loads`, refusing what JSON is not; every refusal is a ValueError saying what it found."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key repeats (`{"injury": 1, "injury": 0}`) would keep its last value silently, where
    another parser (a proxy's, a log pipeline's) may keep the first: refused instead."""
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return body


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a 64-bit float")
    return value
