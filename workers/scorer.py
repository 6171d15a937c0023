"""Score a batch of stored outputs: one forward pass per ONNX model, then one atomic write."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.metrics import BATCH_SIZE, INFERENCE_SECONDS, OUTPUT_WINDOWS, QUEUE_WAIT
from service.scores import DetectorScore
from service.store import QUEUED, OutputStore

from .detector import OnnxDetector, OnnxModel, Outputs, TextPair
from .handoff import Handoff

log = logging.getLogger(__name__)

_READ_FIELDS = ("id", "status", "model", "prompt", "response", "detectors", "created_at", "job", "notify", "handoffs")


@dataclass
class BatchReport:
    """What one call to `Scorer.score` did, for logs, metrics and tests."""

    batch_id: str
    requested: int
    scored: int
    failed: int
    calls: list[int]
    handed_off: int = 0  # passed on to workers with detectors this one lacks (workers.handoff)


class Scorer:
    """Holds the loaded detectors of one worker process."""

    def __init__(self, store: OutputStore, detectors: dict[str, OnnxDetector], worker: str,
                 max_batch_tokens: int, audit_rate: float = 0.0, fingerprints: Mapping[str, str] | None = None,
                 handoff: Handoff | None = None) -> None:
        self.audit_rate = audit_rate
        self.handoff = handoff  # None: an output asking for a detector not loaded here fails at once
        self.fingerprints = dict(fingerprints or {})  # by detector: the version claims it holds (runtime.py)
        self.store = store
        self.detectors = detectors
        self.worker = worker
        self.max_batch_tokens = max_batch_tokens

    def score(self, output_ids: Sequence[str], job_ids: Collection[str] | None = None) -> BatchReport:
        """Score those of `output_ids` that are still queued; already-scored ones are left alone, and so,
        given the `job_ids` that carried them, are those moved to another job since (passed on, or
        requeued by the reaper): that job scores them, and passing them on again would queue them twice."""
        batch_id = uuid.uuid4().hex[:16]
        started = self.store.clock()  # created_at's clock, for the queue-wait histogram
        records = [r for r in self.store.get_many(list(dict.fromkeys(output_ids)), _READ_FIELDS)
                   if r and r.get("status") == QUEUED and (job_ids is None or r.get("job") in (None, *job_ids))]
        failures: dict[str, str] = {}
        lacking: dict[str, frozenset[str]] = {}
        for record in records:
            if not isinstance(record.get("detectors"), list) or not {"response", "model", "created_at"} <= set(record):
                failures[record["id"]] = "stored record is incomplete"  # fail alone, not the batch
                continue
            missing = [d for d in record["detectors"] if d not in self.detectors]
            if missing:
                failures[record["id"]] = f"detectors not loaded by worker {self.worker}: {', '.join(missing)}"
                lacking[record["id"]] = frozenset(missing)
        handed_off = self._hand_off(lacking, records, failures)
        todo = [r for r in records if r["id"] not in failures and r["id"] not in lacking]  # lacking: passed on
        scores: dict[str, dict[str, DetectorScore]] = {r["id"]: {} for r in todo}
        calls: list[int] = []
        windows: list[int] = []  # per output and model, the windows its response added (0: it fit)
        inference_started = time.perf_counter()
        for model, detectors in self._by_model().items():
            wanted = {d.name for d in detectors}
            subset = [r for r in todo if wanted & set(r["detectors"]) and r["id"] not in failures]
            if not subset:
                continue
            for group, outputs in self._run_isolating(model, subset, failures):
                windows += outputs.windows_per_text()
                for det in detectors:
                    values, spans = det.head_and_spans(outputs)
                    for record, value, span in zip(group, values.tolist(), spans, strict=True):
                        if not math.isfinite(value):
                            failures[record["id"]] = f"detector {det.name} produced a non-finite score"
                        elif det.name in record["detectors"]:
                            scores[record["id"]][det.name] = DetectorScore(
                                score=value, flagged=value >= det.threshold, threshold=det.threshold,
                                version=det.version, span=span)
            calls += model.calls
            model.calls = []
        inference_s = time.perf_counter() - inference_started
        batch = {"id": batch_id, "size": len(todo), "worker": self.worker, "session_calls": calls}
        written = self.store.finish_scored(
            ((r, scores[r["id"]], batch) for r in todo if r["id"] not in failures), self.audit_rate)
        failed = self.store.finish_failed(failures)
        if todo:
            self._observe(inference_s, len(todo), [started - r["created_at"] for r in todo], windows)
        return BatchReport(batch_id, len(output_ids), written, failed, calls, len(handed_off))

    def _hand_off(self, lacking: dict[str, frozenset[str]], records: list[dict[str, Any]],
                  failures: dict[str, str]) -> list[str]:
        """Pass outputs asking for detectors not loaded here on to workers that have them, instead of
        failing them; an output passed on is neither scored nor failed by this batch."""
        if not lacking or self.handoff is None:
            return []
        passed = self.handoff.pass_on(lacking, [r for r in records if r["id"] in lacking], self.worker)
        for output_id in passed:
            del failures[output_id]
        return passed

    def _observe(self, inference_s: float, size: int, waits: list[float], windows: list[int]) -> None:
        """Worker histograms go to Redis, shared by all workers and exported by the API's /metrics."""
        keys = self.store.keys
        with self.store.redis.pipeline(transaction=False) as pipe:
            INFERENCE_SECONDS.observe(pipe, keys, [inference_s])
            BATCH_SIZE.observe(pipe, keys, [size])
            QUEUE_WAIT.observe(pipe, keys, [max(0.0, w) for w in waits])
            if windows:
                OUTPUT_WINDOWS.observe(pipe, keys, windows)
            pipe.execute()

    def _by_model(self) -> dict[OnnxModel, list[OnnxDetector]]:
        groups: dict[OnnxModel, list[OnnxDetector]] = {}
        for det in self.detectors.values():
            groups.setdefault(det.model, []).append(det)
        return groups

    def _run_isolating(self, model: OnnxModel, records: list[dict[str, Any]],
                       failures: dict[str, str]) -> list[tuple[list[dict[str, Any]], Outputs]]:
        """Run the batch in one call; if that fails, run outputs one by one so one bad input
        fails alone instead of taking the batch with it."""
        items: list[TextPair] = [(r.get("prompt", ""), r.get("response", "")) for r in records]
        try:
            return [(records, model.run(items, self.max_batch_tokens))]
        except Exception:
            if len(records) == 1:
                log.exception("scoring output %s failed", records[0]["id"])
                failures[records[0]["id"]] = f"inference failed in {model.path.name}"
                return []
            log.warning("batch of %d failed in %s; retrying one by one", len(records), model.path.name)
        return [row for record in records for row in self._run_isolating(model, [record], failures)]
