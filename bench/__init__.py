"""Benchmarks of the service and of the models (see the README, Benchmarks)."""

import service  # noqa: F401 - first: it turns onnxruntime's telemetry off before onnxruntime loads
