"""A detector's score of one output, as workers write it into the output's record."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class DetectorScore:
    score: float
    flagged: bool
    threshold: float
    version: str
    span: tuple[int, int] | None = None  # a long response: the characters of the window that scored highest


def stored_scores(scores: Mapping[str, DetectorScore]) -> str:
    """The record's `scores` field: by detector, with `span` only where a window gave the score, so
    every other score keeps the shape it always had."""
    return json.dumps({d: {k: v for k, v in s.__dict__.items() if v is not None} for d, s in scores.items()})
