"""GET /v1/review: what reviewers should label next, per deployed model and detector."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core
from ..errors import ValidationFailed
from ..validation import query_limit, single_query_value

bp = Blueprint("review", __name__)


@bp.get("/v1/review")
def review() -> dict[str, Any]:
    redline = core()
    model = single_query_value(request.args.getlist("model"), "model")
    detector = single_query_value(request.args.getlist("detector"), "detector")
    if not model or not detector:
        raise ValidationFailed("give the queue to read as ?model=<deployed model>&detector=<detector>")
    limit = query_limit(request.args.getlist("limit"), default=50, most=redline.settings.max_outputs_per_request,
                        setting="REDLINE_MAX_OUTPUTS_PER_REQUEST")
    return redline.review_queue(model, detector, limit, caller())
