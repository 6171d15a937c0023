"""Scoring workers: load the detectors once per process and score queued outputs in batches."""
