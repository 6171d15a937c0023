"""GET /v1/monitor: rolling quality per (deployed model, detector, window)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import core
from ..errors import ValidationFailed
from ..monitoring import Window

bp = Blueprint("monitor", __name__)

HEADLINE = ("labeled", "positives", "negatives", "auc", "n_auc", "fnr", "label_coverage", "withheld")


@bp.get("/v1/monitor")
def monitor() -> dict[str, Any]:
    redline = core()
    model, detector = request.args.get("model"), request.args.get("detector")
    windows = [Window.parse(request.args["window"])] if "window" in request.args else \
        [Window.parse(w) for w in redline.settings.monitor_windows]
    if model and detector:
        if len(windows) == 1:
            return redline.monitor.evaluate(model, detector, windows[0])
        return {"model": model, "detector": detector,
                "windows": [redline.monitor.evaluate(model, detector, w) for w in windows]}
    if model or detector:
        raise ValidationFailed("give both model and detector, or neither to list every pair")
    rows = []
    for m, d in redline.monitor.pairs():
        if d not in redline.detectors:
            continue  # a detector since removed from the configuration
        for w in windows:
            full = redline.monitor.evaluate(m, d, w)
            rows.append({"model": m, "detector": d, "window": w.name, **{k: full[k] for k in HEADLINE},
                         "psi": full["drift"]["psi"]})
    return {"monitors": rows}
