"""Power of the two-sided paired t-test (noncentral t) and the smallest d_z it detects for the n
used; the same for a two-sided F-test of a variance ratio (normal data; an approximation for
Brown–Forsythe)."""

from __future__ import annotations

import math

from ..errors import PhaseLMError
from .checks import MIN_N


def _check_power_args(n: int, alpha: float, power: float | None = None) -> None:
    if int(n) != n or n < MIN_N:
        raise PhaseLMError(f"power needs n ≥ {MIN_N} pairs, got n = {n}")
    if not 0 < alpha < 1:
        raise PhaseLMError(f"α must be in (0, 1), got {alpha}")
    if power is not None and not alpha < power < 1:
        raise PhaseLMError(f"the target power must be in (α, 1), got {power}")


def power_paired_t(n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test with n pairs at standardized effect d_z:
    P(|T| > t_{1−α/2, n−1}) for T ~ noncentral t(n − 1, d_z·√n)."""
    from scipy import stats

    _check_power_args(n, alpha)
    df, nc = n - 1, abs(float(effect)) * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper = stats.nct.sf(crit, df, nc)
    if not math.isfinite(upper):
        upper = 1.0 - stats.nct.cdf(crit, df, nc)
    lower = stats.nct.cdf(-crit, df, nc)  # the far tail; scipy returns NaN where it underflows
    lower = lower if math.isfinite(lower) else 0.0
    return float(min(1.0, max(0.0, upper + lower)))


def min_detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |d_z| the two-sided paired t-test detects with probability ``power`` at n."""
    from scipy.optimize import brentq

    _check_power_args(n, alpha, power)
    high = 1.0
    while power_paired_t(n, high, alpha) < power:
        high *= 2
    return float(brentq(lambda d: power_paired_t(n, d, alpha) - power, 0.0, high, xtol=1e-10))


def power_variance_ratio(n_x: int, n_y: int, ratio: float, alpha: float = 0.05) -> float:
    """Power of the two-sided F-test of var x = var y (normal data) when var x / var y = ratio."""
    from scipy import stats

    _check_power_args(min(n_x, n_y), alpha)
    if not ratio > 0:
        raise PhaseLMError(f"a variance ratio must be > 0, got {ratio}")
    d1, d2 = n_x - 1, n_y - 1
    low, high = stats.f.ppf(alpha / 2, d1, d2), stats.f.ppf(1 - alpha / 2, d1, d2)
    return float(stats.f.sf(high / ratio, d1, d2) + stats.f.cdf(low / ratio, d1, d2))


def min_detectable_variance_ratio(n_x: int, n_y: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest ratio > 1 of variances the two-sided F-test detects with ``power``
    (by symmetry its reciprocal is the smallest detectable ratio below 1)."""
    from scipy.optimize import brentq

    _check_power_args(min(n_x, n_y), alpha, power)
    high = 2.0
    while power_variance_ratio(n_x, n_y, high, alpha) < power:
        high *= 2
    return float(brentq(lambda r: power_variance_ratio(n_x, n_y, r, alpha) - power, 1.0, high, xtol=1e-10))
