"""GET /v1/detectors."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ..app import core

bp = Blueprint("detectors", __name__)


@bp.get("/v1/detectors")
def list_detectors() -> dict[str, Any]:
    return {"detectors": [c.describe() for c in core().detectors.values()]}
