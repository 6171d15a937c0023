"""PUT /v1/outputs/<id>/labels and POST /v1/labels: reviewers' ground truth; GET /v1/labels: the labeled
outputs, a page at a time."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core, json_body
from ..errors import ValidationFailed
from ..validation import parse_label_batch, parse_label_map, query_limit, query_pair, single_query_value

bp = Blueprint("labels", __name__)


@bp.put("/v1/outputs/<output_id>/labels")
def put_labels(output_id: str) -> dict[str, Any]:
    redline = core()
    labels = parse_label_map(json_body(), "body", redline.detectors)
    results = redline.apply_labels([(output_id, d, v) for d, v in labels.items()], caller())
    return {"id": output_id, "labels": {r["detector"]: {"label": r["label"], "result": r["result"]} for r in results}}


@bp.post("/v1/labels")
def post_labels() -> dict[str, Any]:
    redline = core()
    items = parse_label_batch(json_body(), redline.settings, redline.detectors)
    results = redline.apply_labels(items, caller())
    counts = {k: sum(r["result"] == k for r in results) for k in ("new", "changed", "unchanged")}
    return {"labels": results, **counts}


@bp.get("/v1/labels")
def get_labels() -> dict[str, Any]:
    redline = core()
    model, detector = query_pair(request.args, "labeled outputs")
    one = {name: single_query_value(request.args.getlist(name), name) for name in ("window", "version", "cursor")}
    if one["version"] is not None and not 1 <= len(one["version"]) <= 128:
        raise ValidationFailed("'version' must be 1 to 128 characters")
    limit = query_limit(request.args.getlist("limit"), default=100, most=redline.settings.max_outputs_per_request,
                        setting="REDLINE_MAX_OUTPUTS_PER_REQUEST")
    return redline.labeled(model, detector, one["window"], one["version"], one["cursor"], limit, caller())
