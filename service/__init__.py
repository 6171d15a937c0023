"""Redline: scores and monitors the outputs of deployed language models."""

__version__ = "0.1.0"
