"""GET /v1/review: what reviewers should label next, per deployed model and detector; POST
/v1/review/leases: hand a reviewer outputs no other reviewer holds, and /release: give them back."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core, json_body
from ..validation import parse_review_lease, parse_review_release, query_limit, query_pair

bp = Blueprint("review", __name__)


@bp.get("/v1/review")
def review() -> dict[str, Any]:
    redline = core()
    model, detector = query_pair(request.args, "queue")
    limit = query_limit(request.args.getlist("limit"), default=50, most=redline.settings.max_outputs_per_request,
                        setting="REDLINE_MAX_OUTPUTS_PER_REQUEST")
    return redline.review_queue(model, detector, limit, caller())


@bp.post("/v1/review/leases")
def lease() -> dict[str, Any]:
    redline = core()
    model, detector, limit, lease_s = parse_review_lease(json_body(), redline.settings)
    return redline.lease_review(model, detector, limit, lease_s, caller())


@bp.post("/v1/review/leases/release")
def release() -> dict[str, Any]:
    redline = core()
    model, detector, ids = parse_review_release(json_body(), redline.settings)
    return redline.release_review(model, detector, ids, caller())
