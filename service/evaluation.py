"""Exact high-sensitivity metrics on numpy arrays: no I/O, no clock, no Prometheus.

Definitions (DESIGN.md section 3). Labels: 1 = positive (the class a detector must flag).
Higher score = more positive; an output is flagged iff score >= threshold.

- (N,M)-AUC = P(min of N positive scores > max of M negative scores), draws independent and with
  replacement, ties broken by a uniformly random order of the tied draws. That equals
  M * integral_0^1 (1-x)^(M-1) ROC(x)^N dx over the empirical ROC curve with straight segments
  across tie groups. N-AUC = (N,1)-AUC; (1,1) = ROC AUC.
- Each tie group is one straight ROC segment. For N-AUC (M = 1) its area has a closed form; for
  M > 1 the integrand is a polynomial of degree N+M-1 in the segment parameter, so Gauss-Legendre
  with ceil((N+M)/2) nodes integrates it exactly (N + M up to MAX_NM_ORDER). Cost O(k log k) for
  the sort. No 1 - x cancellation: (1 - x) is computed as (Q - b - d t) / Q.
- Optional sample weights give the inverse-probability-weighted versions (weights = 1 / P(labeled)).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .intervals import Z95, clopper_pearson_interval, wilson_interval


@dataclass(frozen=True)
class TieGroups:
    """Per distinct score, descending: weight of positives/negatives at it (c, d) and strictly above (a, b)."""

    scores: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    d: np.ndarray
    P: float
    Q: float


def tie_groups(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
               order: np.ndarray | None = None) -> TieGroups:
    """Group samples by distinct score (descending) with class weight sums. `order` (from
    `descending_order`) lets several weightings of one window share a single sort."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-D arrays of the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != s.shape or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative and one per score")
    if order is None:
        order = descending_order(s)
    s, y, w = s[order], y[order], w[order]
    if not len(s):
        empty = np.zeros(0)
        return TieGroups(empty, empty, empty, empty, empty, 0.0, 0.0)
    # Sorted, so tie groups start wherever the score changes: no second sort needed.
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    pos = np.add.reduceat(w * (y == 1), starts)
    neg = np.add.reduceat(w * (y == 0), starts)
    a = np.concatenate([[0.0], np.cumsum(pos)[:-1]])
    b = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return TieGroups(s[starts], a, b, pos, neg, float(pos.sum()), float(neg.sum()))


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort scores from highest to lowest (order within ties is irrelevant)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64))


def nm_auc(scores: np.ndarray, labels: np.ndarray, n: int = 1, m: int = 1,
           weights: np.ndarray | None = None) -> float | None:
    """(N,M)-AUC; None when either class is empty (no value, not 0)."""
    g = tie_groups(scores, labels, weights)
    return nm_auc_from_groups(g, n, m)


# N + M past which an (N,M)-AUC with M > 1 is refused: its quadrature needs (N + M) / 2 nodes, and
# numpy's leggauss costs O(nodes^2) memory and O(nodes^3) time (50,000 nodes: ~20 GB). N-AUC (M = 1)
# has a closed form and no such limit.
MAX_NM_ORDER = 2000
# Segments x nodes evaluated at once: bounds the quadrature's memory (~8 MB an array) at any window size.
_CHUNK_CELLS = 1 << 20


def check_order(n: int, m: int) -> None:
    """Refuse an (N,M) this module cannot evaluate, naming the limit."""
    if n < 1 or m < 1:
        raise ValueError("n and m must be >= 1")
    if m > 1 and n + m > MAX_NM_ORDER:
        raise ValueError(f"(N,M)-AUC with M > 1 needs N + M <= {MAX_NM_ORDER} (got N={n}, M={m}); "
                         "N-AUC (M = 1) takes any N")


def nm_auc_from_groups(g: TieGroups, n: int, m: int) -> float | None:
    check_order(n, m)
    if g.P <= 0 or g.Q <= 0:
        return None
    keep = g.d > 0  # vertical segments (no negatives) add no area
    a, b, c, d = g.a[keep], g.b[keep], g.c[keep], g.d[keep]
    total = _n_auc_segments(a, c, d, g.P, g.Q, n) if m == 1 else _nm_auc_segments(a, b, c, d, g.P, g.Q, n, m)
    return min(1.0, max(0.0, total))


def _n_auc_segments(a: np.ndarray, c: np.ndarray, d: np.ndarray, P: float, Q: float, n: int) -> float:
    """N-AUC: sum over segments of (d/Q) * integral_0^1 ((a + c t) / P)^N dt, in closed form (DESIGN 3):
    (d/Q) (r1^(N+1) - r0^(N+1)) / ((N+1) c/P) with r0 = a/P, r1 = (a+c)/P, or (d/Q) r0^N where c = 0.
    The difference is r1^(N+1) * -expm1((N+1) log1p(-c/(a+c))): no cancellation, whatever N."""
    r1 = (a + c) / P
    with np.errstate(divide="ignore", invalid="ignore"):  # c = 0 rows are taken from `flat` below
        share = -np.expm1((n + 1) * np.log1p(-c / (a + c)))  # 1 - (a/(a+c))^(N+1); 1 where a = 0
        sloped = r1 ** (n + 1) * share / ((n + 1) * (c / P))
    flat = (a / P) ** n
    return float(np.sum((d / Q) * np.where(c > 0, sloped, flat)))


def _nm_auc_segments(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, P: float, Q: float,
                     n: int, m: int) -> float:
    """(N,M)-AUC: the integrand on each segment is a polynomial of degree N+M-1 in t, integrated exactly
    by Gauss-Legendre with ceil((N+M)/2) nodes, a chunk of segments at a time."""
    t, w = _gauss_legendre(math.ceil((n + m) / 2))
    step = max(1, _CHUNK_CELLS // len(t))
    total = 0.0
    for lo in range(0, len(d), step):
        a_, b_, c_, d_ = (v[lo:lo + step, None] for v in (a, b, c, d))
        roc = (a_ + c_ * t) / P
        one_minus_x = (Q - b_ - d_ * t) / Q
        total += float(np.sum((d_[:, 0] / Q) * ((one_minus_x ** (m - 1) * roc ** n) @ w)))
    return m * total


@functools.lru_cache(maxsize=32)
def _gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1]; computed once per count (leggauss is O(nodes^3))."""
    x, wts = np.polynomial.legendre.leggauss(nodes)
    return (x + 1) / 2, wts / 2


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    return nm_auc(scores, labels, 1, 1, weights)


@dataclass(frozen=True)
class Rate:
    """A proportion k/n with 95% Wilson and Clopper-Pearson intervals (value None when n == 0)."""

    k: int
    n: int
    value: float | None
    wilson: tuple[float, float] | None
    clopper_pearson: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "k": self.k, "n": self.n,
                "wilson": list(self.wilson) if self.wilson else None,
                "clopper_pearson": list(self.clopper_pearson) if self.clopper_pearson else None}


def rate(k: int, n: int, z: float = Z95) -> Rate:
    if n == 0:
        return Rate(k, n, None, None, None)
    return Rate(k, n, k / n, wilson_interval(k, n, z), clopper_pearson_interval(k, n))


def fnr_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Rate:
    """False-negative rate: positives scored below the threshold (not flagged) / positives."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos = s[y == 1]
    return rate(int(np.sum(pos < threshold)), int(pos.size))


def fpr_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Rate:
    """False-positive rate: negatives flagged (score >= threshold) / negatives."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    neg = s[y == 0]
    return rate(int(np.sum(neg >= threshold)), int(neg.size))


def weighted_fnr(scores: np.ndarray, labels: np.ndarray, threshold: float, weights: np.ndarray) -> float | None:
    """Inverse-probability-weighted FNR point estimate (sum of weights of missed / of all positives)."""
    s, y, w = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(weights, dtype=np.float64)
    total = float(np.sum(w[y == 1]))
    return None if total <= 0 else float(np.sum(w[(y == 1) & (s < threshold)]) / total)


def threshold_for_fnr(scores: np.ndarray, labels: np.ndarray, target: float) -> float | None:
    """Highest threshold whose FNR <= target (always a positive's score); None without positives."""
    if not 0 <= target < 1:
        raise ValueError("target FNR must be in [0, 1)")
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos = np.sort(s[y == 1])
    if pos.size == 0:
        return None
    allowed = math.floor(target * pos.size + 1e-9)  # misses we may have
    return float(pos[allowed])


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float | None:
    """Population stability index of `current` against `reference`, on the reference's quantile bins.
    None when either sample is empty. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return None
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    ref_share, cur_share = np.maximum(ref_share, eps), np.maximum(cur_share, eps)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    ref, cur = np.sort(np.asarray(reference, dtype=np.float64)), np.sort(np.asarray(current, dtype=np.float64))
    if ref.size == 0 or cur.size == 0:
        return None
    grid = np.concatenate([ref, cur])
    gap = np.searchsorted(ref, grid, side="right") / ref.size - np.searchsorted(cur, grid, side="right") / cur.size
    return float(np.max(np.abs(gap)))
