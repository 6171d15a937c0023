"""GET /v1/monitor: rolling quality per (deployed model, detector, window)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core
from ..errors import ValidationFailed
from ..monitoring import Window

bp = Blueprint("monitor", __name__)

HEADLINE = ("labeled", "positives", "negatives", "auc", "n_auc", "fnr", "label_coverage", "withheld")


@bp.get("/v1/monitor")
def monitor() -> dict[str, Any]:
    redline, who = core(), caller()
    model, detector = request.args.get("model"), request.args.get("detector")
    windows = [Window.parse(request.args["window"])] if "window" in request.args else \
        [Window.parse(w) for w in redline.settings.monitor_windows]
    if model and detector:
        internal = who.model(model)
        results = [{**r, "model": model} for r in redline.monitor.evaluate_windows(internal, detector, windows)]
        if len(windows) == 1:
            return results[0]
        return {"model": model, "detector": detector, "windows": results}
    if model or detector:
        raise ValidationFailed("give both model and detector, or neither to list every pair")
    rows = []
    for m, d in redline.monitor.pairs():
        if d not in redline.detectors or not who.owns(m):
            continue  # a detector since removed from the configuration, or another tenant's model
        for full in redline.monitor.evaluate_windows(m, d, windows):
            rows.append({"model": who.public_model(m), "detector": d, "window": full["window"],
                         **{k: full[k] for k in HEADLINE},
                         "psi": full["drift"]["psi"]})
    return {"monitors": rows}
