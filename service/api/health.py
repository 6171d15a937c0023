"""GET /healthz (process up) and GET /readyz (able to take requests: Redis reachable; workers reported)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ..app import core

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    state = core().readiness()
    return state, 200 if state["ready"] else 503
