"""Rate intervals (service.intervals) against scipy and at their exact edges."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.intervals import clopper_pearson_interval, wilson_interval


def test_clopper_pearson_at_no_and_all_successes() -> None:
    assert clopper_pearson_interval(0, 10) == pytest.approx((0.0, 0.3084971), abs=1e-6)
    assert clopper_pearson_interval(10, 10) == pytest.approx((0.6915029, 1.0), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_clopper_pearson_matches_scipy(kn: tuple[int, int]) -> None:
    from scipy.stats import beta

    k, n = kn
    lo, hi = clopper_pearson_interval(k, n)
    assert lo == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1), abs=1e-10)
    assert hi == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k), abs=1e-10)


@pytest.mark.parametrize("n", [1, 20, 149, 1000])
def test_wilson_bounds_are_exact_at_no_misses_and_all_misses(n: int) -> None:
    # 0 of 149 left a lower bound of 1.7e-18 in floating point, exported as such to Prometheus.
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert 0.0 < wilson_interval(0, n)[1] < 1.0 and 0.0 < wilson_interval(n, n)[0] < 1.0
