"""GET /v1/monitor: rolling quality per (deployed model, detector, window)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import caller, core
from ..core import iso
from ..errors import ValidationFailed
from ..monitoring import MAX_WINDOWS_PER_REQUEST, Window, listing_row
from ..validation import single_query_value

bp = Blueprint("monitor", __name__)


@bp.get("/v1/monitor")
def monitor() -> dict[str, Any]:
    redline, who = core(), caller()
    model = single_query_value(request.args.getlist("model"), "model")
    detector = single_query_value(request.args.getlist("detector"), "detector")
    # `window` may repeat (`window=1h&window=24h`): those windows, each once, in the order asked. Bounded:
    # a window nothing computes in the background is evaluated for every pair on this request's time.
    given = request.args.getlist("window")
    if len(given) > MAX_WINDOWS_PER_REQUEST:  # counted as sent, as the OpenAPI document's maxItems counts
        raise ValidationFailed(f"{len(given)} windows in one request; the limit is {MAX_WINDOWS_PER_REQUEST}")
    windows = [Window.parse(w) for w in list(dict.fromkeys(given)) or redline.settings.monitor_windows]
    if model and detector:
        internal = who.model(model)
        results = [{**r, "model": model} for r in redline.monitor.evaluate_windows(internal, detector, windows)]
        if len(windows) == 1:
            return results[0]
        return {"model": model, "detector": detector, "windows": results}
    if model or detector:
        raise ValidationFailed("give both model and detector, or neither to list every pair")
    names = {w.name for w in windows}
    if names <= set(redline.settings.monitor_windows):
        # Every pair's numbers, as /metrics has them: computed in the background (quality_snapshot), since
        # computing them here took seconds per request at a few dozen pairs.
        rows, computed_at = redline.quality.listing()
    else:  # a window nothing computes in the background: this request computes it, for this caller's pairs
        computed_at = redline.store.clock()
        rows = [listing_row(r) for r in redline.monitor.evaluate_pairs(windows, owns=who.owns)]
    return {"monitors": [{**row, "model": who.public_model(row["model"])} for row in rows
                         if row["window"] in names and row["detector"] in redline.detectors and who.owns(row["model"])],
            "computed_at": iso(computed_at)}
