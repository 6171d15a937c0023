"""POST /v1/outputs, POST /v1/score, GET /v1/outputs/<id>, GET /v1/outputs?id=...&id=...,
DELETE /v1/outputs/<id>."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, request

from ..app import caller, core, json_body
from ..auth import Principal
from ..errors import NotFound
from ..store import NewOutput
from ..validation import parse_id_list, parse_outputs, parse_timeout_ms

bp = Blueprint("outputs", __name__)


@bp.post("/v1/outputs")
def submit() -> tuple[dict[str, Any], int]:
    redline, who = core(), caller()
    outputs = parse_outputs(json_body(), redline.settings, redline.detectors)
    public = [o.id for o in outputs]
    states, _ = redline.submit(_owned(outputs, who))
    return {"outputs": [_queued_item(i, s) for i, s in zip(public, states, strict=True)]}, 202


def _owned(outputs: list[NewOutput], who: Principal) -> list[NewOutput]:
    """The caller's outputs under their tenant's internal names."""
    return [dataclasses.replace(o, id=who.output_id(o.id), model=who.model(o.model), labeled_by=who.key_id)
            for o in outputs]


@bp.post("/v1/score")
def score() -> tuple[dict[str, Any], int]:
    redline = core()
    body = json_body()
    timeout_ms = parse_timeout_ms(body, redline.settings)
    outputs = parse_outputs(body, redline.settings, redline.detectors, extra_fields=("timeout_ms",))
    who = caller()
    ids = [o.id for o in outputs]
    _, token = redline.submit(_owned(outputs, who), sync=True)
    assert token is not None
    pending = {who.public_id(i) for i in redline.wait([who.output_id(i) for i in ids], token, timeout_ms / 1000)}
    views = redline.output_views(ids, who)
    done = [v for v in views if v and v["id"] not in pending]
    body_out: dict[str, Any] = {"outputs": done}
    if pending:
        body_out["pending"] = [_queued_item(i, "queued") for i in ids if i in pending]
        return body_out, 202
    return body_out, 200


@bp.get("/v1/outputs")
def get_outputs() -> dict[str, Any]:
    """Many outputs in one request (one Redis pipeline), for clients that would otherwise poll each."""
    redline = core()
    ids = parse_id_list(request.args.getlist("id"), redline.settings)
    views = redline.output_views(ids, caller())
    return {"outputs": [v for v in views if v is not None],
            "missing": [i for i, v in zip(ids, views, strict=True) if v is None]}


@bp.get("/v1/outputs/<output_id>")
def get_output(output_id: str) -> dict[str, Any]:
    view = core().output_view(output_id, caller())
    if view is None:
        raise NotFound(f"no output with id {output_id!r}")
    return view



@bp.delete("/v1/outputs/<output_id>")
def delete_output(output_id: str) -> dict[str, Any]:
    core().delete_output(output_id, caller())
    return {"id": output_id, "deleted": True}

def _queued_item(output_id: str, state: str) -> dict[str, str]:
    return {"id": output_id, "status": "queued" if state == "new" else state, "url": f"/v1/outputs/{output_id}"}
