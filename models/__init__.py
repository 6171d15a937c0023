"""Detector artifacts (one folder per detector) and the pipelines that build them."""

import service  # noqa: F401 - first: it turns onnxruntime's telemetry off before onnxruntime loads
