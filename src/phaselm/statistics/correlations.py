"""Correlation of two paired samples: Pearson and Spearman coefficients with their p-values."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import check_pairs, finite_or_none, json_ready


@dataclass
class CorrelationResult:
    """What :func:`correlation` finds: Pearson r and Spearman ρ with their p-values (None where undefined)."""

    n: int
    pearson_r: float | None
    pearson_p: float | None
    spearman_rho: float | None
    spearman_p: float | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (NaN and ±Inf become None)."""
        return json_ready(self)


def correlation(x, y) -> CorrelationResult:
    """Pearson r and Spearman ρ of x and y with two-sided p-values (None if a sample is constant)."""
    from scipy import stats

    x, y = check_pairs(x, y, "a correlation")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return CorrelationResult(len(x), None, None, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = stats.pearsonr(x, y)
        sr = stats.spearmanr(x, y)
    return CorrelationResult(
        len(x),
        finite_or_none(pr.statistic),
        finite_or_none(pr.pvalue),
        finite_or_none(sr.statistic),
        finite_or_none(sr.pvalue),
    )
