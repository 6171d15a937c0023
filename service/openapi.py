"""Build the OpenAPI 3.1 document from the pydantic models in `schemas.py`, with this deployment's
limits and detector names filled in, so the document always matches the running configuration."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from . import __version__
from . import monitor_schemas as m
from . import schemas as s
from .monitoring import MAX_WINDOWS_PER_REQUEST, Window
from .settings import Settings

REF = "#/components/schemas/{model}"
_REQUESTS = (s.SubmitRequest, s.ScoreRequest, s.LabelBatch, s.RetryRequest, s.ReviewLeaseRequest,
             s.ReviewReleaseRequest)
_RESPONSES = (s.SubmitResponse, s.ScoreResponse, s.OutputRecord, s.OutputList, s.PutLabelsResponse,
              s.LabelBatchResponse, s.DetectorsResponse, m.Monitor, m.MonitorWindows, m.MonitorList, s.DeadLetters,
              s.RetryResponse, s.ReviewQueue, s.ReviewLease, s.ReviewRelease, s.Deleted, s.LabeledPage, s.Error,
              s.Health, s.Ready)


_REQUEST_ID_HEADER = {
    "description": "The request's id: the client's own X-Request-ID when it sent one of 1-128 characters from "
                   "A-Z a-z 0-9 . _ : = + / -, else a new one. Error bodies carry it as `request_id`, and the "
                   "server's log lines for the request name it.",
    "required": True, "schema": {"type": "string", "pattern": s.REQUEST_ID_PATTERN}}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}},
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Body is not UTF-8 JSON, holds NaN/Infinity, repeats a key in an object, or nests over 32 levels",
            401: "Missing or unknown API key", 403: "API key lacks the scope",
            404: "Not found", 409: "Id exists with different content",
            413: "Body over REDLINE_MAX_BODY_BYTES (as sent, or once gzip-decompressed)",
            415: "Content-Encoding other than gzip",
            422: "Invalid input (the message names the field)", 429: "Backlog full; retry after Retry-After",
            503: "Storage unavailable; retry after Retry-After"}
    return {str(c): _json(_ref(s.Error), text[c]) for c in codes}


def build(settings: Settings, detectors: list[str], keys_required: bool) -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _RESPONSES],
                                ref_template=REF)
    defs: dict[str, Any] = top["$defs"]
    # This deployment's limits and detector names.
    out = defs["OutputIn"]["properties"]
    for field in ("response", "prompt"):
        target = out[field] if "anyOf" not in out[field] else out[field]["anyOf"][0]
        target["maxLength"] = settings.max_text_chars
    out["detectors"]["anyOf"][0]["items"] = {"type": "string", "enum": detectors}
    out["labels"]["anyOf"][0]["propertyNames"] = {"enum": detectors}
    for name in ("SubmitRequest", "ScoreRequest"):
        defs[name]["properties"]["outputs"]["maxItems"] = settings.max_outputs_per_request
    defs["ScoreRequest"]["properties"]["timeout_ms"]["anyOf"][0]["maximum"] = settings.max_sync_timeout_ms
    defs["LabelBatch"]["properties"]["labels"]["maxItems"] = settings.max_labels_per_request
    defs["RetryRequest"]["properties"]["ids"]["maxItems"] = settings.max_outputs_per_request
    defs["RetryRequest"]["properties"]["ids"]["items"]["pattern"] = s.ID_PATTERN
    defs["LabelItem"]["properties"]["detector"]["enum"] = detectors
    defs["ReviewLeaseRequest"]["properties"]["detector"]["enum"] = detectors
    defs["ReviewLeaseRequest"]["properties"]["limit"]["maximum"] = settings.max_outputs_per_request
    defs["ReviewReleaseRequest"]["properties"]["detector"]["enum"] = detectors
    defs["ReviewReleaseRequest"]["properties"]["ids"]["maxItems"] = settings.max_outputs_per_request
    defs["ReviewReleaseRequest"]["properties"]["ids"]["items"]["pattern"] = s.ID_PATTERN
    label_map = {"type": "object", "minProperties": 1, "propertyNames": {"enum": detectors},
                 "additionalProperties": {"enum": [0, 1]}}
    write = _errors(400, 401, 403, 409, 413, 415, 422, 429, 503)
    output_id = {"name": "output_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": s.ID_PATTERN}}
    # One deployed model and one of this server's detectors (the review queue, the labeled outputs).
    pair = [{"name": "model", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
            {"name": "detector", "in": "query", "required": True, "schema": {"enum": detectors}}]
    page_limit = {"name": "limit", "in": "query", "required": False,
                  "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_outputs_per_request}}
    # Declared only where the server enforces it, so the document matches the running configuration.
    security: list[dict[str, list[str]]] = [{"bearer": []}] if keys_required else []
    paths = {
        "/v1/outputs": {"post": {
            "summary": "Submit model outputs for scoring", "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.SubmitRequest)}}},
            "responses": {"202": _json(_ref(s.SubmitResponse), "Accepted and queued"), **write}},
            "get": {
                "summary": "Many outputs and their scores", "security": security,
                "parameters": [{"name": "id", "in": "query", "required": True, "style": "form", "explode": True,
                                "schema": {"type": "array", "minItems": 1,
                                           "maxItems": settings.max_outputs_per_request,
                                           "items": {"type": "string", "pattern": s.ID_PATTERN}}}],
                "responses": {"200": _json(_ref(s.OutputList)), **_errors(401, 403, 422, 503),
                              # gunicorn's own answer, before the app: its limit_request_line (deploy/gunicorn.conf.py).
                              "414": {"description": "Request line over 8,190 bytes: ask for fewer ids per request "
                                                     "(an HTML page from gunicorn, not JSON)",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/v1/score": {"post": {
            "summary": "Submit and wait for scores", "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.ScoreRequest)}}},
            "responses": {"200": _json(_ref(s.ScoreResponse), "All scored"),
                          "202": _json(_ref(s.ScoreResponse), "Some not scored in time (see pending)"), **write}}},
        "/v1/outputs/{output_id}": {"get": {
            "summary": "An output and its scores", "security": security, "parameters": [output_id],
            "responses": {"200": _json(_ref(s.OutputRecord)), **_errors(401, 403, 404, 503)}},
            "delete": {
                "summary": "Erase an output: its texts, scores and labels, and its entries in windows and queues",
                "security": security, "parameters": [output_id],
                "responses": {"200": _json(_ref(s.Deleted)), **_errors(401, 403, 404, 503)}}},
        "/v1/outputs/{output_id}/labels": {"put": {
            "summary": "Set ground-truth labels of one output", "security": security, "parameters": [output_id],
            "requestBody": {"required": True, "content": {"application/json": {"schema": label_map}}},
            "responses": {"200": _json(_ref(s.PutLabelsResponse)),
                          **_errors(400, 401, 403, 404, 413, 415, 422, 503)}}},
        "/v1/labels": {"post": {
            "summary": "Set labels in bulk (all or nothing)", "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.LabelBatch)}}},
            "responses": {"200": _json(_ref(s.LabelBatchResponse)),
                          **_errors(400, 401, 403, 404, 413, 415, 422, 503)}},
            "get": {
                "summary": "Labeled outputs of a deployed model for a detector, with texts, a page at a time",
                "security": security,
                "parameters": [*pair,
                               {"name": "window", "in": "query", "required": False,
                                "description": "a duration (90s, 15m, 1h, 24h, 7d); default: everything kept",
                                "schema": {"type": "string", "pattern": "^[0-9]{1,6}[smhdw]$"}},
                               {"name": "version", "in": "query", "required": False,
                                "description": "detector version; default: the one served",
                                "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
                               {"name": "cursor", "in": "query", "required": False,
                                "description": "`next` of the previous page",
                                "schema": {"type": "string", "minLength": 1}},
                               page_limit],
                "responses": {"200": _json(_ref(s.LabeledPage)), **_errors(401, 403, 404, 422, 503)}}},
        "/v1/monitor": {"get": {
            "summary": "Rolling quality per deployed model, detector and window", "security": security,
            "parameters": [*({"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                             for n in ("model", "detector")),
                           {"name": "window", "in": "query", "required": False, "style": "form", "explode": True,
                            "description": "count:<W> or a duration (90s, 15m, 1h, 24h, 7d); repeat it for "
                                           "several windows; default: every configured window",
                            "schema": {"type": "array", "maxItems": MAX_WINDOWS_PER_REQUEST,
                                       "items": {"type": "string", "pattern": f"^({Window.PATTERN})$"}}}],
            "responses": {"200": _json({"oneOf": [_ref(m.Monitor), _ref(m.MonitorWindows), _ref(m.MonitorList)]}),
                          **_errors(401, 403, 404, 422, 503)}}},
        "/v1/review": {"get": {
            "summary": "Outputs awaiting a reviewer's label: flagged by the detector, or audit-sampled",
            "security": security,
            "parameters": [*pair, page_limit],
            "responses": {"200": _json(_ref(s.ReviewQueue)), **_errors(401, 403, 404, 422, 503)}}},
        "/v1/review/leases": {"post": {
            "summary": "Lease a reviewer the oldest waiting outputs no other reviewer holds",
            "security": security,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref(s.ReviewLeaseRequest)}}},
            "responses": {"200": _json(_ref(s.ReviewLease)), **_errors(400, 401, 403, 404, 415, 422, 503)}}},
        "/v1/review/leases/release": {"post": {
            "summary": "End leases on outputs a reviewer skips, so the next lease hands them out",
            "security": security,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref(s.ReviewReleaseRequest)}}},
            "responses": {"200": _json(_ref(s.ReviewRelease)), **_errors(400, 401, 403, 404, 413, 415, 422, 503)}}},
        "/v1/detectors": {"get": {"summary": "Configured detectors", "security": security,
                                  "responses": {"200": _json(_ref(s.DetectorsResponse)), **_errors(401, 403)}}},
        "/v1/dead-letters": {"get": {
            "summary": "Outputs and jobs that could not be scored", "security": security,
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                           {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "the `next` of the previous page"}],
            "responses": {"200": _json(_ref(s.DeadLetters)), **_errors(401, 403, 422, 503)}}},
        "/v1/dead-letters/retry": {"post": {
            "summary": "Score failed outputs again", "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(s.RetryRequest)}}},
            "responses": {"200": _json(_ref(s.RetryResponse)), **_errors(400, 401, 403, 413, 415, 422, 429, 503)}}},
        "/healthz": {"get": {"summary": "Process up", "responses": {"200": _json(_ref(s.Health))}}},
        "/readyz": {"get": {"summary": "Able to take requests (Redis reachable); live workers reported",
                            "responses": {"200": _json(_ref(s.Ready)), "503": _json(_ref(s.Ready), "Not ready")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Redline", "version": __version__,
                 "description": "Scores and monitors the outputs of deployed language models."},
        "paths": paths,
        "components": {"schemas": defs, "headers": {"RequestId": _REQUEST_ID_HEADER},
                       **({"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
                                           if keys_required else {})},
    }
