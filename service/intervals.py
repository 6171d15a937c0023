"""Confidence intervals for a rate k/n, and the special functions they need (no scipy at runtime):
Wilson's score interval and the exact Clopper-Pearson interval from Beta quantiles."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the bound is exactly 0 (1), where floating point left 1.7e-18 for 0 of 149.
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def clopper_pearson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial interval from Beta quantiles (computed here: no scipy at runtime)."""
    wilson = wilson_interval(k, n, _z(alpha))
    lo = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1, wilson[0])
    hi = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k, wilson[1])
    return (lo, hi)


def _z(alpha: float) -> float:
    return Z95 if alpha == 0.05 else math.sqrt(2) * _erfinv(1 - alpha)


def _erfinv(y: float) -> float:
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def beta_ppf(q: float, a: float, b: float, guess: float = 0.5) -> float:
    """Quantile of Beta(a, b): Newton steps on the regularized incomplete beta from `guess`, kept
    inside a shrinking bisection bracket, so it converges in a few steps and can never diverge."""
    lo, hi = 0.0, 1.0
    x = min(max(guess, 1e-12), 1 - 1e-12)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for _ in range(200):
        f = betainc(a, b, x) - q
        if f < 0:
            lo = x
        else:
            hi = x
        if hi - lo < 1e-15 or abs(f) < 1e-15:
            break
        pdf = math.exp(log_norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x))
        step = x - f / pdf if pdf > 0 else -1.0
        x = step if lo < step < hi else (lo + hi) / 2
    return x


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h
