"""Detector artifacts (one folder per detector) and the pipelines that build them."""
