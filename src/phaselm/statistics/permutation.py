"""Permutation tests: paired (sign-flip) or two-sample (label-shuffle) of a mean difference or
a log variance ratio, exact when the permutations are few."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PhaseLMError
from .checks import MIN_N, as_array, check_pairs, json_ready
from .spread import log_variance_ratio

PERMUTATION_STATISTICS = ("mean", "log_variance_ratio")
ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass
class PermutationResult:
    """What :func:`permutation_test` finds: the observed statistic, its p and how many permutations gave it."""

    statistic_name: str  # "mean" (of x − y, or mean x − mean y) or "log_variance_ratio" (log var x / var y)
    paired: bool
    n: int  # pairs (paired) or total observations
    observed: float
    p: float
    alternative: str
    n_resamples: int  # permutations used (all of them when exact)
    exact: bool

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (NaN and ±Inf become None)."""
        return json_ready(self)


def _p_from_null(null: np.ndarray, observed: float, alternative: str, adjustment: int) -> float:
    # the same conventions as scipy.stats.permutation_test (a relative tolerance for ties)
    gamma = np.abs(1e-14 * observed)
    less = (np.sum(null <= observed + gamma) + adjustment) / (len(null) + adjustment)
    greater = (np.sum(null >= observed - gamma) + adjustment) / (len(null) + adjustment)
    if alternative == "less":
        return float(less)
    if alternative == "greater":
        return float(greater)
    return float(min(1.0, 2 * min(less, greater)))


def permutation_test(
    x,
    y,
    paired: bool = True,
    statistic: str = "mean",
    n_resamples: int = 10_000,
    seed: int = 0,
    alternative: str = "two-sided",
) -> PermutationResult:
    """Permutation test of x against y.

    ``paired``: the null exchanges x_i and y_i within each pair (flips the sign of d_i); the
    statistic is mean(d). Otherwise the null shuffles the pooled values between the groups;
    the statistic is mean(x) − mean(y) (``"mean"``) or log(var x / var y)
    (``"log_variance_ratio"``, ddof = 1). Exact (every sign pattern) when 2ⁿ ≤ n_resamples
    for a paired test; otherwise ``n_resamples`` seeded random permutations with
    p = (count + 1)/(n_resamples + 1), as scipy.stats.permutation_test.
    """
    if statistic not in PERMUTATION_STATISTICS:
        raise PhaseLMError(
            f"permutation statistic must be one of {', '.join(PERMUTATION_STATISTICS)}, "
            f"got {statistic!r}"
        )
    if alternative not in ALTERNATIVES:
        raise PhaseLMError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    if n_resamples < 1:
        raise PhaseLMError(f"a permutation test needs at least 1 resample, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if paired:
        if statistic != "mean":
            raise PhaseLMError("a paired permutation test compares means; use paired=False for a variance ratio")
        x, y = check_pairs(x, y, "a paired permutation test")
        d = x - y
        n = len(d)
        observed = float(d.mean())
        exact = 2**n <= n_resamples
        if exact:
            signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        else:
            signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
        null = (signs * d[None, :]).mean(axis=1)
        p = _p_from_null(null, observed, alternative, 0 if exact else 1)
        return PermutationResult(statistic, True, n, observed, p, alternative, len(null), exact)
    x, y = as_array(x, "first sample"), as_array(y, "second sample")
    if min(len(x), len(y)) < MIN_N:
        raise PhaseLMError(
            f"a permutation test needs at least {MIN_N} values per sample, "
            f"got n = {len(x)} and {len(y)}"
        )
    pooled = np.concatenate([x, y])
    nx = len(x)

    def stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a.mean(axis=-1) - b.mean(axis=-1) if statistic == "mean" else log_variance_ratio(a, b)

    observed = float(stat(x, y))
    if not math.isfinite(observed):
        raise PhaseLMError("the variance ratio is undefined: a sample has zero variance")
    null = np.empty(n_resamples)
    chunk = max(1, 1_000_000 // len(pooled))
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        perm = rng.permuted(np.broadcast_to(pooled, (stop - start, len(pooled))), axis=1)
        null[start:stop] = stat(perm[:, :nx], perm[:, nx:])
    null = np.where(np.isfinite(null), null, 0.0)
    p = _p_from_null(null, observed, alternative, 1)
    return PermutationResult(statistic, False, len(pooled), observed, p, alternative, n_resamples, False)
