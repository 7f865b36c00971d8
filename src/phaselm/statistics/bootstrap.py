"""Percentile bootstrap intervals: of the mean, of any one- or two-sample statistic, of a variance ratio."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import PhaseLMError
from .checks import MIN_N, as_array, check_pairs
from .spread import log_variance_ratio


def bootstrap_mean_ci(values, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (vectorised; seeded, so reproducible)."""
    values = as_array(values)
    if len(values) < MIN_N:
        raise PhaseLMError(f"a bootstrap interval needs at least {MIN_N} values, got n = {len(values)}")
    if not 0 < level < 1:
        raise PhaseLMError(f"confidence level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # bound memory: chunk × n indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    x, y=None, statistic: Callable[..., np.ndarray] | None = None, paired: bool = False, level: float = 0.95,
    n_resamples: int = 10_000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``: f(x) for one sample, f(x, y) for two
    (pairs resampled together when ``paired``, each sample on its own otherwise). The
    statistic takes arrays with resamples on the first axis and values on the last
    (``axis=-1``); default: the mean (of x, or of x − y when paired, or mean x − mean y)."""
    if not 0 < level < 1:
        raise PhaseLMError(f"confidence level must be in (0, 1), got {level}")
    x = as_array(x, "first sample")
    if y is not None:
        y = as_array(y, "second sample")
        if paired:
            x, y = check_pairs(x, y, "a paired bootstrap")
    for name, sample in (("first", x), ("second", y)):
        if sample is not None and len(sample) < MIN_N:
            raise PhaseLMError(
                f"a bootstrap interval needs at least {MIN_N} values, "
                f"got n = {len(sample)} in the {name} sample"
            )
    if statistic is None:
        if y is None:
            statistic = lambda a: a.mean(axis=-1)  # noqa: E731
        elif paired:
            statistic = lambda a, b: (a - b).mean(axis=-1)  # noqa: E731
        else:
            statistic = lambda a, b: a.mean(axis=-1) - b.mean(axis=-1)  # noqa: E731
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    size = len(x) + (len(y) if y is not None else 0)
    chunk = max(1, 2_000_000 // size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        ix = rng.integers(0, len(x), size=(stop - start, len(x)))
        if y is None:
            values[start:stop] = statistic(x[ix])
        elif paired:
            values[start:stop] = statistic(x[ix], y[ix])
        else:
            iy = rng.integers(0, len(y), size=(stop - start, len(y)))
            values[start:stop] = statistic(x[ix], y[iy])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise PhaseLMError("the bootstrap statistic is undefined on every resample (e.g. a zero variance)")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def variance_ratio_ci(
    x, y, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float] | None:
    """Bootstrap interval of var(x)/var(y) (two independent resamplings); None when undefined."""
    try:
        low, high = bootstrap_ci(x, y, lambda a, b: log_variance_ratio(a, b), False, level, n_resamples, seed)
    except PhaseLMError:
        return None
    return float(np.exp(low)), float(np.exp(high))
