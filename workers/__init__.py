"""Scoring workers: load the detectors once per process and score queued outputs in batches."""

import service  # noqa: F401 - first: it turns onnxruntime's telemetry off before onnxruntime loads
