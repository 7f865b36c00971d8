"""Statistics for paired evaluations: tests, effect sizes, intervals, multiple comparisons.

Every function takes plain sequences (lists, numpy arrays, CPU or CUDA tensors), refuses
fewer than 2 observations or non-finite values with a one-line :class:`PhaseLMError`, and
returns JSON-able results (``to_dict``); undefined quantities are ``None``, never NaN or Inf.

* :func:`paired` — per-prompt pairs (x_i, y_i), differences d = x − y: mean difference with a
  percentile bootstrap CI, paired t-test, Wilcoxon signed-rank test, Cohen's d_z = mean(d)/sd(d)
  and the matched-pairs rank-biserial correlation (Kerby's r = (W⁺ − W⁻)/(W⁺ + W⁻)).
* :func:`holm` — Holm–Bonferroni adjusted p-values for a family of tests.
* :func:`correlation` — Pearson and Spearman coefficients with their p-values.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .errors import PhaseLMError

MIN_N = 2


def as_array(values, name: str = "values") -> np.ndarray:
    """A 1-D float64 numpy array from a list, array or tensor (CUDA tensors go through .cpu())."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PhaseLMError(f"{name} must be numbers") from None
    if not np.all(np.isfinite(array)):
        raise PhaseLMError(f"{name} hold {int(np.sum(~np.isfinite(array)))} non-finite values (NaN or Inf); drop or fix them first")
    return array


def _check_pairs(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_array(x, f"{what}: first sample"), as_array(y, f"{what}: second sample")
    if len(x) != len(y):
        raise PhaseLMError(f"{what} needs pairs: the samples have {len(x)} and {len(y)} values")
    if len(x) < MIN_N:
        raise PhaseLMError(f"{what} needs at least {MIN_N} pairs, got n = {len(x)}; use more prompts or samples")
    return x, y


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# Paired comparison
# --------------------------------------------------------------------------------------------


@dataclass
class PairedResult:
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
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


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

    x, y = _check_pairs(x, y, "a paired comparison")
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
        ci_low=ci_low, ci_high=ci_high, ci_level=level, t_statistic=_finite(t_stat), p_t=_finite(p_t),
        wilcoxon_statistic=_finite(w_stat), p_wilcoxon=_finite(p_w), cohens_dz=_finite(dz), rank_biserial=_finite(rb),
        n_nonzero=nonzero,
    )


# --------------------------------------------------------------------------------------------
# Multiple comparisons
# --------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in input order; ``None`` entries stay ``None`` and do
    not count towards the family size. Reject H_i at level α when adjusted p_i ≤ α."""
    index = [i for i, p in enumerate(pvalues) if p is not None]
    values = [float(pvalues[i]) for i in index]
    for p in values:
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise PhaseLMError(f"p-values must be in [0, 1], got {p}")
    m = len(values)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, k in enumerate(sorted(range(m), key=lambda k: values[k])):
        running = max(running, min(1.0, (m - rank) * values[k]))
        adjusted[index[k]] = running
    return adjusted


# --------------------------------------------------------------------------------------------
# Correlation
# --------------------------------------------------------------------------------------------


@dataclass
class CorrelationResult:
    n: int
    pearson_r: float | None
    pearson_p: float | None
    spearman_rho: float | None
    spearman_p: float | None

    def to_dict(self) -> dict:
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def correlation(x, y) -> CorrelationResult:
    """Pearson r and Spearman ρ of x and y with two-sided p-values (None if a sample is constant)."""
    from scipy import stats

    x, y = _check_pairs(x, y, "a correlation")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return CorrelationResult(len(x), None, None, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = stats.pearsonr(x, y)
        sr = stats.spearmanr(x, y)
    return CorrelationResult(len(x), _finite(pr.statistic), _finite(pr.pvalue), _finite(sr.statistic), _finite(sr.pvalue))


def describe(values, level: float = 0.95, n_resamples: int = 2_000, seed: int = 0) -> dict:
    """n, mean, std, median, min, max and a bootstrap CI of the mean, as a JSON-able dict."""
    values = as_array(values)
    if len(values) == 0:
        raise PhaseLMError("cannot describe an empty sample")
    out = {
        "n": int(len(values)),
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }
    if len(values) >= MIN_N:
        out["ci_low"], out["ci_high"] = bootstrap_mean_ci(values, level, n_resamples, seed)
    return out
