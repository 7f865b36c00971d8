"""Paired comparison of per-prompt pairs (x_i, y_i), differences d = x − y.

:func:`paired`: mean difference with a percentile bootstrap CI, paired t-test, Wilcoxon
signed-rank test, Cohen's d_z = mean(d)/sd(d) and the matched-pairs rank-biserial correlation
(Kerby's r = (W⁺ − W⁻)/(W⁺ + W⁻)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .bootstrap import bootstrap_mean_ci
from .checks import as_array, check_pairs, finite_or_none, json_ready


@dataclass
class PairedResult:
    """What :func:`paired` finds for pairs (x, y): means, a bootstrap CI of mean(x − y), t, Wilcoxon, effect sizes."""

    n: int
    mean_x: float
    mean_y: float
    mean_diff: float  # mean of d = x − y
    sd_diff: float
    ci_low: float  # percentile bootstrap CI of mean_diff
    ci_high: float
    ci_level: float
    t_statistic: float | None
    p_t: float | None  # two-sided paired t-test
    wilcoxon_statistic: float | None
    p_wilcoxon: float | None  # two-sided Wilcoxon signed-rank test (zero differences dropped)
    cohens_dz: float | None  # mean(d) / sd(d), ddof = 1
    rank_biserial: float | None  # (W⁺ − W⁻) / (W⁺ + W⁻) ∈ [−1, 1]
    n_nonzero: int  # pairs with d ≠ 0 (what Wilcoxon uses)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (NaN and ±Inf become None)."""
        return json_ready(self)


def rank_biserial(d) -> float | None:
    """Matched-pairs rank-biserial correlation of differences ``d`` (zeros dropped, ties averaged)."""
    from scipy.stats import rankdata

    d = as_array(d, "differences")
    d = d[d != 0]
    if len(d) == 0:
        return None
    ranks = rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def paired(x, y, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> PairedResult:
    """Compare paired samples x and y (same length, pair i = prompt i): see the module doc."""
    from scipy import stats

    x, y = check_pairs(x, y, "a paired comparison")
    d = x - y
    n = len(d)
    sd = float(np.std(d, ddof=1))
    mean = float(np.mean(d))
    ci_low, ci_high = bootstrap_mean_ci(d, level, n_resamples, seed)
    nonzero = int(np.sum(d != 0))
    if nonzero == 0:  # identical samples: no difference, by definition not significant
        t_stat, p_t, w_stat, p_w, dz, rb = 0.0, 1.0, 0.0, 1.0, 0.0, 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sd == 0:  # a constant non-zero shift: t is infinite, p = 0, d_z undefined
                t_stat, p_t, dz = None, 0.0, None
            else:
                t = stats.ttest_rel(x, y)
                t_stat, p_t, dz = float(t.statistic), float(t.pvalue), mean / sd
            w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
            w_stat, p_w = float(w.statistic), float(w.pvalue)
        rb = rank_biserial(d)
    return PairedResult(
        n=n, mean_x=float(np.mean(x)), mean_y=float(np.mean(y)), mean_diff=mean, sd_diff=sd,
        ci_low=ci_low, ci_high=ci_high, ci_level=level,
        t_statistic=finite_or_none(t_stat), p_t=finite_or_none(p_t),
        wilcoxon_statistic=finite_or_none(w_stat), p_wilcoxon=finite_or_none(p_w),
        cohens_dz=finite_or_none(dz), rank_biserial=finite_or_none(rb),
        n_nonzero=nonzero,
    )
