"""POST /v1/outputs, POST /v1/score, GET /v1/outputs/<id>."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from ..app import core
from ..errors import NotFound
from ..validation import parse_outputs, parse_timeout_ms, require_object

bp = Blueprint("outputs", __name__)


@bp.post("/v1/outputs")
def submit() -> tuple[dict[str, Any], int]:
    redline = core()
    outputs = parse_outputs(require_object(request.get_json(silent=True)), redline.settings, redline.detectors)
    states, _ = redline.submit(outputs)
    return {"outputs": [_queued_item(o.id, s) for o, s in zip(outputs, states, strict=True)]}, 202


@bp.post("/v1/score")
def score() -> tuple[dict[str, Any], int]:
    redline = core()
    body = require_object(request.get_json(silent=True))
    timeout_ms = parse_timeout_ms(body, redline.settings)
    outputs = parse_outputs(body, redline.settings, redline.detectors, extra_fields=("timeout_ms",))
    ids = [o.id for o in outputs]
    _, token = redline.submit(outputs, sync=True)
    assert token is not None
    pending = redline.wait(ids, token, timeout_ms / 1000)
    views = [redline.output_view(i) for i in ids]
    done = [v for v in views if v and v["id"] not in pending]
    body_out: dict[str, Any] = {"outputs": done}
    if pending:
        body_out["pending"] = [_queued_item(i, "queued") for i in ids if i in pending]
        return body_out, 202
    return body_out, 200


@bp.get("/v1/outputs/<output_id>")
def get_output(output_id: str) -> dict[str, Any]:
    view = core().output_view(output_id)
    if view is None:
        raise NotFound(f"no output with id {output_id!r}")
    return view


def _queued_item(output_id: str, state: str) -> dict[str, str]:
    return {"id": output_id, "status": "queued" if state == "new" else state, "url": f"/v1/outputs/{output_id}"}
