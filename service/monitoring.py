"""Rolling quality metrics per (deployed model, detector, window), read from the Redis windows.

Windows are kept up to date as scores and labels arrive (store_scripts.py); this module
only reads a bounded window and applies the pure math in `evaluation`.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
from redis import Redis

from . import evaluation as ev
from .clock import redis_time
from .detector_config import DetectorConfig
from .errors import NotFound, ValidationFailed
from .keys import Keys, text
from .settings import Settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Window:
    """`count:W` (the last W labeled outputs) or a duration (`90s`, `15m`, `1h`, `24h`, `7d`)."""

    name: str
    count: int | None = None
    seconds: int | None = None

    # Every text `parse` may accept, for the OpenAPI document (it still refuses count:0 and 0s).
    PATTERN = r"count:[0-9]{1,7}|[0-9]{1,6}[smhdw]"

    @classmethod
    def parse(cls, text: str) -> Window:
        if m := re.fullmatch(r"count:([0-9]{1,7})", text):
            if int(m.group(1)) < 1:
                raise ValidationFailed("window count must be >= 1")
            return cls(text, count=int(m.group(1)))
        if m := re.fullmatch(r"([0-9]{1,6})([smhdw])", text):
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
            if seconds < 1:
                raise ValidationFailed("window duration must be positive")
            return cls(text, seconds=seconds)
        raise ValidationFailed(f"window {text!r} must be count:<W> (e.g. count:1000) or a duration like 1h, 24h, 7d")


# Windows one GET /v1/monitor may name: each one nothing computes in the background is evaluated for
# every pair on the request's time.
MAX_WINDOWS_PER_REQUEST = 8


@dataclass
class Entries:
    """One window's labeled outputs as arrays."""

    scores: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    labeled_at: np.ndarray
    created_at: np.ndarray

    def _rows(self, rows: slice) -> Entries:
        return Entries(self.scores[rows], self.labels[rows], self.weights[rows], self.labeled_at[rows],
                       self.created_at[rows])

    def since(self, start: float) -> Entries:
        """The entries created at or after `start` (entries are oldest first)."""
        return self._rows(slice(int(np.searchsorted(self.created_at, start, side="left")), None))

    def last(self, count: int) -> Entries:
        """The newest `count` entries."""
        return self._rows(slice(max(self.created_at.size - count, 0), None))


class Monitor:
    """Computes monitor responses. Window edges use Redis's clock, as the timestamps in them do
    (`clock.redis_time`); `clock` is injectable so tests control time windows."""

    def __init__(self, redis: Redis, settings: Settings, detectors: dict[str, DetectorConfig],
                 clock: Callable[[], float] | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.queue_prefix)
        self.detectors = detectors
        self.clock: Callable[[], float] = clock or partial(redis_time, redis)
        self.pairs_nm = [tuple(int(x) for x in p.split(":")) for p in settings.monitor_nm]
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}

    def pairs(self) -> list[tuple[str, str]]:
        """Every (model, detector) that has scores."""
        raw = self.redis.smembers(self.keys.monitored)
        return sorted((model, detector) for model, detector in (text(m).split("|", 1) for m in raw))

    def evaluate_pairs(self, windows: Sequence[Window], owns: Callable[[str], bool] = lambda model: True,
                       after_pair: Callable[[], object] = lambda: None) -> list[dict[str, Any]]:
        """`evaluate_windows` for every monitored pair whose model `owns` accepts, skipping detectors since
        removed from the configuration; `after_pair` runs after each (the refresher extends its lock)."""
        results: list[dict[str, Any]] = []
        for model, detector in self.pairs():
            if detector in self.detectors and owns(model):
                results += self.evaluate_windows(model, detector, windows)
                after_pair()
        return results

    def entries(self, model: str, detector: str, version: str, windows: Sequence[Window], now: float) -> Entries:
        """The labeled outputs that any of `windows` holds, oldest first (the sorted set's order), in one
        read: a duration window is a suffix of the longest one, a count window the last W of it."""
        key = self.keys.window(model, detector, version)
        longest = max((w.seconds for w in windows if w.seconds is not None), default=None)
        most = max((w.count for w in windows if w.count is not None), default=0)
        rows: list[bytes] = []
        if longest is not None:
            rows = cast("list[bytes]", self.redis.zrangebyscore(key, now - longest, "+inf"))
        if len(rows) < most:  # then the newest `most` include every row read above
            rows = cast("list[bytes]", self.redis.zrevrange(key, 0, most - 1))[::-1]
        if not rows:
            empty = np.zeros(0)
            return Entries(empty, empty.astype(np.int8), empty, empty, empty)
        fields = _doubles(rows, 5)
        return Entries(scores=fields[:, 0], labels=fields[:, 1].astype(np.int8), weights=fields[:, 2],
                       labeled_at=fields[:, 3], created_at=fields[:, 4])

    def score_spans(self, model: str, detector: str, version: str, edges: Sequence[float]) -> list[np.ndarray]:
        """Every stored score (labeled or not) by `version`, of outputs created in each span
        [edges[i], edges[i + 1]) of the ascending `edges`: one pipelined pass over the history, however
        many windows share it, and without WITHSCORES (which costs more to parse than the scores)."""
        key = self.keys.scores(model, detector, version)
        with self.redis.pipeline(transaction=False) as pipe:
            for lo, hi in itertools.pairwise(edges):
                pipe.zrangebyscore(key, lo, f"({hi}")
            rows = pipe.execute()
        return [_doubles(r, 1)[:, 0] if r else np.zeros(0) for r in rows]

    def evaluate(self, model: str, detector: str, window: Window) -> dict[str, Any]:
        """The monitor response for one window (see `evaluate_windows`)."""
        return self.evaluate_windows(model, detector, [window])[0]

    def evaluate_windows(self, model: str, detector: str, windows: Sequence[Window]) -> list[dict[str, Any]]:
        """Monitor responses, one per window. Results are reused for `REDLINE_MONITOR_CACHE_S` seconds, so
        dashboards and scrapes asking again do not re-read large windows; the windows not cached are
        computed together from one read of each sorted set, not one read per window."""
        now = time.monotonic()  # the cache's age is this process's business: no Redis round trip
        results: dict[str, dict[str, Any]] = {}
        for window in windows:
            hit = self._cache.get((model, detector, window.name))
            if hit and now - hit[0] < self.settings.monitor_cache_s:
                results[window.name] = hit[1]
        missing = [w for w in windows if w.name not in results]
        if missing:
            if len(self._cache) > 10_000:
                self._cache.clear()
            for window, result in zip(missing, self._evaluate(model, detector, missing), strict=True):
                self._cache[(model, detector, window.name)] = (now, result)
                results[window.name] = result
        return [results[w.name] for w in windows]

    def _evaluate(self, model: str, detector: str, windows: Sequence[Window]) -> list[dict[str, Any]]:
        config = self.detectors.get(detector)
        if config is None:
            raise NotFound(f"no detector {detector!r}")
        if not self.redis.sismember(self.keys.monitored, f"{model}|{detector}"):
            raise NotFound(f"no scores yet for model {model!r} and detector {detector!r}")
        now = self.clock()
        # The detector version this process serves: after an upgrade, the new version's outputs only.
        version = config.version
        labeled = self.entries(model, detector, version, windows, now)
        spans = []
        for window in windows:
            if window.seconds is not None:
                start = now - window.seconds
                e = labeled.since(start)
            else:  # a count window spans from its oldest labeled output to now
                e = labeled.last(window.count or 0)
                start = float(e.created_at.min()) if e.created_at.size else now
            spans.append((window, e, start))
        # Drift compares each window's scores with the same span just before it.
        bounds = [(start - max(now - start, 1.0), start) for _, _, start in spans]
        edges = sorted({*itertools.chain.from_iterable(bounds), now + 1})
        pieces = self.score_spans(model, detector, version, edges)

        def between(lo: float, hi: float) -> np.ndarray:
            return np.concatenate(pieces[edges.index(lo):edges.index(hi)] or [np.zeros(0)])

        results = []
        for (window, e, start), (reference_start, _) in zip(spans, bounds, strict=True):
            current, reference = between(start, now + 1), between(reference_start, start)
            result = quality(e, config, list(self.settings.monitor_ns), self.pairs_nm,
                             self.settings.monitor_min_positives)
            result = {"model": model, "detector": detector, "version": version, "window": window.name, **result}
            result["scored"] = int(current.size)
            result["label_coverage"] = (e.scores.size / current.size) if current.size else None
            result["drift"] = {"psi": ev.psi(reference, current), "ks": ev.ks_statistic(reference, current),
                               "current": int(current.size), "reference": int(reference.size),
                               "reference_window": "the same span just before this window"}
            results.append(result)
        return results


# What the listing (GET /v1/monitor without model and detector) shows of each (pair, window).
LISTING_FIELDS = ("labeled", "positives", "negatives", "auc", "n_auc", "fnr", "label_coverage", "withheld")


def listing_row(result: dict[str, Any]) -> dict[str, Any]:
    """One line of the listing from a monitor response (model names as stored: the caller maps them)."""
    return {"model": result["model"], "detector": result["detector"], "window": result["window"],
            **{k: result[k] for k in LISTING_FIELDS}, "psi": result["drift"]["psi"]}


def _doubles(members: list[bytes], count: int) -> np.ndarray:
    """The fixed binary tails (`count` little-endian doubles) of window members, as an array.
    Members are `id|` + packed doubles (see store_scripts.py), so the tail is the last 8 * count bytes."""
    width = 8 * count
    return np.frombuffer(b"".join(m[-width:] for m in members), dtype="<f8").reshape(len(members), count)


def quality(e: Entries, config: DetectorConfig, ns: list[int], nm: list[tuple[int, ...]],
            min_positives: int) -> dict[str, Any]:
    """The label-based part of a monitor response (pure: arrays in, numbers out)."""
    positives, negatives = int(np.sum(e.labels == 1)), int(np.sum(e.labels == 0))
    order = ev.descending_order(e.scores)  # one sort serves the plain and the weighted metrics
    groups = ev.tie_groups(e.scores, e.labels, order=order)
    enough = positives >= min_positives
    withheld = None if enough else (f"window holds {positives} labeled positives; N-AUC and FNR need "
                                    f"{min_positives} (REDLINE_MONITOR_MIN_POSITIVES)")
    design = e.weights > 0
    # Outputs outside the review design get weight 0: they sort with the rest and add nothing.
    weighted = ev.tie_groups(e.scores, e.labels, e.weights, order=order)
    lag = e.labeled_at - e.created_at
    return {
        "threshold": config.threshold,
        "target_fnr": config.target_fnr,
        "labeled": int(e.scores.size),
        "positives": positives,
        "negatives": negatives,
        "auc": ev.nm_auc_from_groups(groups, 1, 1),
        "n_auc": [{"n": n, "value": ev.nm_auc_from_groups(groups, n, 1) if enough else None} for n in ns],
        "nm_auc": [{"n": n, "m": m, "value": ev.nm_auc_from_groups(groups, n, m) if enough else None}
                   for n, m in nm],
        "fnr": ev.fnr_at(e.scores, e.labels, config.threshold).to_dict() if enough else None,
        "fpr": ev.fpr_at(e.scores, e.labels, config.threshold).to_dict(),
        "threshold_for_target_fnr": (ev.threshold_for_fnr(e.scores, e.labels, config.target_fnr)
                                     if enough and config.target_fnr is not None else None),
        "weighted": {
            "description": "inverse-probability weighted over flagged outputs (weight 1) and the audit sample "
                           "(weight 1/audit rate); corrects for reviewers labeling mostly flagged outputs",
            "labeled": int(design.sum()),
            "auc": ev.nm_auc_from_groups(weighted, 1, 1),
            "fnr": ev.weighted_fnr(e.scores, e.labels, config.threshold, e.weights) if enough else None,
        },
        "median_label_lag_s": float(np.median(lag)) if lag.size else None,
        "withheld": withheld,
    }
