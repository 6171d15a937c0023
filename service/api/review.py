"""GET /v1/review: what reviewers should label next, per deployed model and detector."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core
from ..validation import query_limit, query_pair

bp = Blueprint("review", __name__)


@bp.get("/v1/review")
def review() -> dict[str, Any]:
    redline = core()
    model, detector = query_pair(request.args, "queue")
    limit = query_limit(request.args.getlist("limit"), default=50, most=redline.settings.max_outputs_per_request,
                        setting="REDLINE_MAX_OUTPUTS_PER_REQUEST")
    return redline.review_queue(model, detector, limit, caller())
