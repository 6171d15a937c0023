"""Exactness of the metrics against brute-force enumeration in rational arithmetic."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from service import evaluation as ev


def brute_nm_auc(scores: list[int], labels: list[int], n: int, m: int) -> Fraction:
    """Enumerate every with-replacement draw; tied draws are ordered uniformly at random, so the
    positives beat the negatives at a tie with probability 1 / C(r + s, r)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    total = Fraction(0)
    for ps in itertools.product(pos, repeat=n):
        for ns in itertools.product(neg, repeat=m):
            lo, hi = min(ps), max(ns)
            if lo > hi:
                total += 1
            elif lo == hi:
                r, s = ps.count(lo), ns.count(hi)
                total += Fraction(1, math.comb(r + s, r))
    return total / (len(pos) ** n * len(neg) ** m)


tiny = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1)), min_size=2, max_size=6).filter(
    lambda xs: {y for _, y in xs} == {0, 1})


@settings(max_examples=60, deadline=None)
@given(tiny, st.integers(1, 5), st.integers(1, 5))
def test_nm_auc_matches_brute_force_with_ties(data: list[tuple[int, int]], n: int, m: int) -> None:
    scores, labels = [s for s, _ in data], [y for _, y in data]
    # Keep the enumeration small: hypothesis discards such a case and draws another, so every one counted
    # is asserted on (a bare `return` passed them unchecked).
    assume(len([y for y in labels if y]) ** n * len([y for y in labels if not y]) ** m <= 20_000)
    exact = brute_nm_auc(scores, labels, n, m)
    got = ev.nm_auc(np.array(scores, float), np.array(labels), n, m)
    assert got == pytest.approx(float(exact), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.integers(0, 1)), min_size=2, max_size=200)
       .filter(lambda xs: {y for _, y in xs} == {0, 1}))
def test_auc_equals_sklearn(data: list[tuple[float, int]]) -> None:
    s = np.array([round(x, 1) for x, _ in data])  # rounding creates ties
    y = np.array([lab for _, lab in data])
    assert ev.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("n, m", [(1, 1), (5, 1), (20, 1), (2, 3), (5, 5)])
def test_all_tied_gives_one_over_binomial(n: int, m: int) -> None:
    s = np.zeros(10)
    y = np.array([0, 1] * 5)
    assert ev.nm_auc(s, y, n, m) == pytest.approx(1 / math.comb(n + m, n), abs=1e-12)


def test_n_auc_closed_form_per_tie_group() -> None:
    # One tie group with c positives and d negatives, a positives above: DESIGN's closed form.
    s = np.array([3, 2, 2, 2, 2, 1])
    y = np.array([1, 1, 1, 0, 0, 0])
    N, P, Q = 5, 3, 3
    a, c, d = 1, 2, 2
    expected = (d / Q) * ((a + c) ** (N + 1) - a ** (N + 1)) / ((N + 1) * c * P**N) + (1 / Q) * ((a + c) / P) ** N
    assert ev.nm_auc(s, y, N, 1) == pytest.approx(expected, abs=1e-12)


def test_n_auc_at_a_very_large_n_is_exact() -> None:
    # The quadrature needed (N+1)/2 nodes: N = 100,000 took ~24 GB in numpy's leggauss and was killed.
    # Three positives on top, one positive and one negative tied, two negatives below (P = 4, Q = 3).
    s = np.array([10, 10, 10, 5, 5, 1, 1])
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    N, P, Q = 100_000, 4, 3
    exact = Fraction(1, Q) * Fraction(4 ** (N + 1) - 3 ** (N + 1), (N + 1) * P ** N) + Fraction(2, Q)
    assert ev.nm_auc(s, y, N, 1) == pytest.approx(float(exact), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 1)), min_size=2, max_size=300)
       .filter(lambda xs: {y for _, y in xs} == {0, 1}), st.sampled_from([2, 7, 50, 300]))
def test_the_n_auc_closed_form_equals_the_quadrature(data: list[tuple[int, int]], n: int) -> None:
    g = ev.tie_groups(np.array([x for x, _ in data], float), np.array([y for _, y in data]))
    keep = g.d > 0
    a, b, c, d = g.a[keep], g.b[keep], g.c[keep], g.d[keep]
    assert ev._n_auc_segments(a, c, d, g.P, g.Q, n) == pytest.approx(
        ev._nm_auc_segments(a, b, c, d, g.P, g.Q, n, 1), abs=1e-12)


def test_the_quadrature_gives_the_same_value_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    s, y = np.round(rng.normal(size=2000), 2), rng.integers(0, 2, 2000)
    whole = ev.nm_auc(s, y, 20, 5)
    monkeypatch.setattr(ev, "_CHUNK_CELLS", 7)  # one segment at a time
    assert ev.nm_auc(s, y, 20, 5) == pytest.approx(whole, abs=1e-13)


def test_an_nm_order_past_the_limit_is_refused_by_name() -> None:
    s, y = np.array([0.9, 0.1]), np.array([1, 0])
    assert ev.nm_auc(s, y, ev.MAX_NM_ORDER - 2, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=f"needs N \\+ M <= {ev.MAX_NM_ORDER} \\(got N={ev.MAX_NM_ORDER - 1}, M=2\\)"):
        ev.nm_auc(s, y, ev.MAX_NM_ORDER - 1, 2)
    assert ev.nm_auc(s, y, 10 * ev.MAX_NM_ORDER, 1) == pytest.approx(1.0)  # N-AUC: no limit


def test_empty_class_has_no_value() -> None:
    assert ev.nm_auc(np.array([0.1, 0.2]), np.array([1, 1]), 5) is None
    assert ev.fnr_at(np.array([0.1]), np.array([0]), 0.5).value is None


def test_weights_equal_repetition() -> None:
    s = np.array([0.9, 0.4, 0.4, 0.1, 0.7])
    y = np.array([1, 1, 0, 0, 0])
    w = np.array([2, 1, 3, 1, 2])
    rep_s, rep_y = np.repeat(s, w), np.repeat(y, w)
    for n, m in [(1, 1), (5, 1), (3, 2)]:
        assert ev.nm_auc(s, y, n, m, w) == pytest.approx(ev.nm_auc(rep_s, rep_y, n, m), abs=1e-12)
    assert ev.weighted_fnr(s, y, 0.5, w) == pytest.approx(ev.fnr_at(rep_s, rep_y, 0.5).value)


def test_fnr_fpr_and_intervals() -> None:
    s = np.array([0.1, 0.4, 0.5, 0.8, 0.9, 0.2, 0.6])
    y = np.array([1, 1, 1, 1, 1, 0, 0])
    fnr = ev.fnr_at(s, y, 0.5)
    assert (fnr.k, fnr.n, fnr.value) == (2, 5, 0.4)
    assert fnr.wilson == pytest.approx((0.1176, 0.7693), abs=1e-4)
    assert fnr.clopper_pearson == pytest.approx((0.0527449, 0.8533672), abs=1e-6)
    fpr = ev.fpr_at(s, y, 0.5)
    assert (fpr.k, fpr.n) == (1, 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=40), st.floats(0, 0.99))
def test_threshold_for_target_fnr_is_the_highest_meeting_it(pos_scores: list[int], target: float) -> None:
    s = np.array(pos_scores + [5, 7], dtype=float)
    y = np.array([1] * len(pos_scores) + [0, 0])
    t = ev.threshold_for_fnr(s, y, target)
    assert t in pos_scores
    assert ev.fnr_at(s, y, t).value <= target + 1e-12
    higher = [p for p in set(pos_scores) if p > t]
    assert all(ev.fnr_at(s, y, h).value > target for h in higher)


def test_drift_statistics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    same = rng.normal(0, 1, 5000)
    shifted = rng.normal(1, 1, 5000)
    assert ev.psi(ref, same) < 0.02 < 0.25 < ev.psi(ref, shifted)
    from scipy.stats import ks_2samp

    for cur in (same, shifted, np.round(shifted)):
        assert ev.ks_statistic(ref, cur) == pytest.approx(ks_2samp(ref, cur).statistic, abs=1e-12)
    assert ev.psi(ref, np.array([])) is None and ev.ks_statistic(np.array([]), ref) is None
    # PSI from hand-computed shares: two bins split at the reference median.
    assert ev.psi(np.array([0, 0, 1, 1.0]), np.array([0, 1, 1, 1.0]), bins=2) == pytest.approx(
        (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5))
