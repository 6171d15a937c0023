"""PUT /v1/outputs/<id>/labels and POST /v1/labels: reviewers' ground truth."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ..app import caller, core, json_body
from ..validation import parse_label_batch, parse_label_map

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
