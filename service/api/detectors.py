"""GET /v1/detectors."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from ..app import core
from ..openapi import build

bp = Blueprint("detectors", __name__)


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from the API's models with this deployment's limits."""
    redline = core()
    return build(redline.settings, sorted(redline.detectors), current_app.extensions["redline.keys"] is not None)


@bp.get("/v1/detectors")
def list_detectors() -> dict[str, Any]:
    redline = core()
    (served, files), match = redline.fleet.served(), redline.fleet.files_match()
    return {"detectors": [{**c.describe(), "workers": served.get(name, {}), "files_match": match[name],
                           "worker_files": {version: {fingerprint[:16]: n for fingerprint, n in counts.items()}
                                            for version, counts in files.get(name, {}).items()}}
                          for name, c in redline.detectors.items()]}
