"""GET /v1/review: what reviewers should label next, per deployed model and detector."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, request

from ..app import caller, core
from ..errors import ValidationFailed
from ..validation import single_query_value

bp = Blueprint("review", __name__)


@bp.get("/v1/review")
def review() -> dict[str, Any]:
    redline = core()
    model = single_query_value(request.args.getlist("model"), "model")
    detector = single_query_value(request.args.getlist("detector"), "detector")
    if not model or not detector:
        raise ValidationFailed("give the queue to read as ?model=<deployed model>&detector=<detector>")
    cap = redline.settings.max_outputs_per_request
    given = single_query_value(request.args.getlist("limit"), "limit")
    raw = "50" if given is None else given  # `limit=` (empty) is a bad value, not an absent one
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= cap:  # ASCII digits: int() refuses "²"
        raise ValidationFailed(f"'limit' must be an integer from 1 to {cap} (REDLINE_MAX_OUTPUTS_PER_REQUEST)")
    return redline.review_queue(model, detector, int(raw), caller())
