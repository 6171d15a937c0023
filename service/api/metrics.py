"""GET /metrics: Prometheus exposition (open by design; protect it at the network or proxy)."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..app import core
from ..metrics import exposition

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(exposition(core()), mimetype=CONTENT_TYPE_LATEST)
