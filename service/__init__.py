"""Redline: scores and monitors the outputs of deployed language models."""

import os

__version__ = "0.1.0"

# onnxruntime's Linux wheels (1.29 and later) send usage telemetry to Microsoft by default: model file
# and graph names, hashes, execution providers, error and timing events, plus a device id kept in
# ~/.cache. A service that watches production traffic should not phone home, nor depend on the network
# for it, so every process that imports Redline's packages opts out before onnxruntime is loaded,
# which is when onnxruntime reads this (workers, models and bench import this package first).
# An operator who wants the telemetry sets ORT_DISABLE_TELEMETRY=0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
