"""Equal-variance tests: Levene's test (``center="mean"``) and its Brown–Forsythe form
(``center="median"``), a one-way ANOVA on |x − centre| per group; the log variance ratio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PhaseLMError
from .checks import MIN_N, as_array, finite_or_none, json_ready

CENTERS = ("median", "mean")


@dataclass
class SpreadResult:
    """What :func:`spread_test` finds: per-group sizes and variances, the test statistic and p."""

    test: str  # "Brown–Forsythe" (centre = median) or "Levene" (centre = mean)
    center: str
    n: list[int]  # per group
    variances: list[float]  # per group, ddof = 1
    variance_ratio: float | None  # first / second group (two groups only)
    statistic: float | None
    p: float | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (NaN and ±Inf become None)."""
        return json_ready(self)


def spread_test(*samples, center: str = "median") -> SpreadResult:
    """Levene's test (``center="mean"``) or Brown–Forsythe (``"median"``) for equal variances.

    W = [(N − k)/(k − 1)] · Σ n_i (Z̄_i − Z̄)² / Σ Σ (Z_ij − Z̄_i)², Z_ij = |x_ij − centre_i|,
    compared with F(k − 1, N − k). Identical spreads in every group give W = 0, p = 1.
    """
    from scipy import stats

    if center not in CENTERS:
        raise PhaseLMError(f"center must be one of {', '.join(CENTERS)}, got {center!r}")
    if len(samples) < 2:
        raise PhaseLMError(f"a spread test needs at least 2 groups, got {len(samples)}")
    groups = [as_array(s, f"group {i + 1}") for i, s in enumerate(samples)]
    for i, g in enumerate(groups):
        if len(g) < MIN_N:
            raise PhaseLMError(
                f"a spread test needs at least {MIN_N} values per group, "
                f"got n = {len(g)} in group {i + 1}"
            )
    centre = np.median if center == "median" else np.mean
    z = [np.abs(g - centre(g)) for g in groups]
    k, total = len(z), sum(len(g) for g in z)
    grand = np.concatenate(z).mean()
    between = sum(len(g) * (g.mean() - grand) ** 2 for g in z)
    within = sum(((g - g.mean()) ** 2).sum() for g in z)
    if within == 0:
        statistic, p = (0.0, 1.0) if between == 0 else (None, 0.0)
    else:
        statistic = float((total - k) / (k - 1) * between / within)
        p = float(stats.f.sf(statistic, k - 1, total - k))
    variances = [float(np.var(g, ddof=1)) for g in groups]
    ratio = None
    if k == 2:
        ratio = variances[0] / variances[1] if variances[1] > 0 else (1.0 if variances[0] == 0 else None)
    test = "Brown–Forsythe" if center == "median" else "Levene"
    sizes = [len(g) for g in groups]
    ratio, statistic, p = finite_or_none(ratio), finite_or_none(statistic), finite_or_none(p)
    return SpreadResult(test, center, sizes, variances, ratio, statistic, p)


def log_variance_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(var x / var y) along ``axis`` (ddof = 1); ±Inf or NaN where a variance is zero."""
    vx, vy = np.var(x, ddof=1, axis=axis), np.var(y, ddof=1, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(vx) - np.log(vy)
