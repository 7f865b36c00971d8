"""Statistics for paired evaluations: tests, effect sizes, intervals, multiple comparisons.

Every function takes plain sequences (lists, numpy arrays, CPU or CUDA tensors), refuses
fewer than 2 observations or non-finite values with a one-line :class:`PhaseLMError`, and
returns JSON-able results (``to_dict``); undefined quantities are ``None``, never NaN or Inf.

* :func:`paired` — per-prompt pairs (x_i, y_i), differences d = x − y: mean difference with a
  percentile bootstrap CI, paired t-test, Wilcoxon signed-rank test, Cohen's d_z = mean(d)/sd(d)
  and the matched-pairs rank-biserial correlation (Kerby's r = (W⁺ − W⁻)/(W⁺ + W⁻)).
* :func:`holm` — Holm–Bonferroni adjusted p-values for a family of tests.
* :func:`correlation` — Pearson and Spearman coefficients with their p-values.
* :func:`spread_test` — Levene's test for equal variances (``center="mean"``) and its
  Brown–Forsythe form (``center="median"``): a one-way ANOVA on |x − centre| per group.
* :func:`permutation_test` — paired (sign-flip) or two-sample (label-shuffle) permutation test
  of a mean difference or a log variance ratio, exact when the permutations are few.
* :func:`bootstrap_ci` — percentile bootstrap interval of any one- or two-sample statistic.
* :func:`power_paired_t`, :func:`min_detectable_effect` — power of the two-sided paired t-test
  (noncentral t) and the smallest d_z it detects at a given power, for the n used;
  :func:`power_variance_ratio`, :func:`min_detectable_variance_ratio` — the same for a
  two-sided F-test of a variance ratio (normal data; an approximation for Brown–Forsythe).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

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
        raise PhaseLMError(
            f"{name} hold {int(np.sum(~np.isfinite(array)))} non-finite values (NaN or Inf); "
            "drop or fix them first"
        )
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
    """What :func:`correlation` finds: Pearson r and Spearman ρ with their p-values (None where undefined)."""

    n: int
    pearson_r: float | None
    pearson_p: float | None
    spearman_rho: float | None
    spearman_p: float | None

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (NaN and ±Inf become None)."""
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
    return CorrelationResult(
        len(x), _finite(pr.statistic), _finite(pr.pvalue), _finite(sr.statistic), _finite(sr.pvalue)
    )


def describe(values, level: float = 0.95, n_resamples: int = 2_000, seed: int = 0) -> dict:
    """n, mean, std, median, min, max and a bootstrap CI of the mean, as a JSON-able dict."""
    values = as_array(values)
    if len(values) == 0:
        raise PhaseLMError("cannot describe an empty sample")
    out = {
        "n": len(values),
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }
    if len(values) >= MIN_N:
        out["ci_low"], out["ci_high"] = bootstrap_mean_ci(values, level, n_resamples, seed)
    return out


# --------------------------------------------------------------------------------------------
# Spread: Levene / Brown–Forsythe
# --------------------------------------------------------------------------------------------

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
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


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
    return SpreadResult(test, center, sizes, variances, _finite(ratio), _finite(statistic), _finite(p))


# --------------------------------------------------------------------------------------------
# Permutation tests
# --------------------------------------------------------------------------------------------

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
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _log_variance_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    vx, vy = np.var(x, ddof=1, axis=axis), np.var(y, ddof=1, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(vx) - np.log(vy)


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
        x, y = _check_pairs(x, y, "a paired permutation test")
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
        return a.mean(axis=-1) - b.mean(axis=-1) if statistic == "mean" else _log_variance_ratio(a, b)

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


# --------------------------------------------------------------------------------------------
# Bootstrap of any statistic
# --------------------------------------------------------------------------------------------


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
            x, y = _check_pairs(x, y, "a paired bootstrap")
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
        low, high = bootstrap_ci(x, y, lambda a, b: _log_variance_ratio(a, b), False, level, n_resamples, seed)
    except PhaseLMError:
        return None
    return float(np.exp(low)), float(np.exp(high))


# --------------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------------


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
