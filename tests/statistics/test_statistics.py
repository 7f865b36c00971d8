"""Paired statistics, Holm and correlations against scipy and hand computations; a planted
effect is detected and a null case is not (at α = 0.05, over repeated seeds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from phaselm import statistics as st


def pairs(seed: int, n: int = 40, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    x = y + shift + rng.normal(scale=1.0, size=n)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_matches_scipy(seed):
    x, y = pairs(seed, shift=0.3)
    res = st.paired(x, y, n_resamples=2000, seed=seed)
    d = x - y
    t = stats.ttest_rel(x, y)
    w = stats.wilcoxon(d)
    assert res.n == len(d) and res.mean_diff == pytest.approx(d.mean()) and res.sd_diff == pytest.approx(d.std(ddof=1))
    assert res.t_statistic == pytest.approx(t.statistic) and res.p_t == pytest.approx(t.pvalue)
    assert res.wilcoxon_statistic == pytest.approx(w.statistic) and res.p_wilcoxon == pytest.approx(w.pvalue)
    assert res.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    ranks = stats.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    assert res.rank_biserial == pytest.approx((plus - minus) / (plus + minus))
    assert res.mean_x == pytest.approx(x.mean()) and res.mean_y == pytest.approx(y.mean())


def test_bootstrap_interval_agrees_with_scipy():
    x, y = pairs(3, n=60, shift=0.5)
    d = x - y
    low, high = st.bootstrap_mean_ci(d, 0.95, 20_000, seed=0)
    ref = stats.bootstrap(
        (d,), np.mean, confidence_level=0.95, n_resamples=20_000, method="percentile", rng=np.random.default_rng(1)
    )
    tol = 0.05 * d.std(ddof=1)
    assert low == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert high == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert low < d.mean() < high
    assert st.bootstrap_mean_ci(d, 0.95, 2000, seed=5) == st.bootstrap_mean_ci(d, 0.95, 2000, seed=5)  # seeded


def test_rank_biserial_by_hand():
    # |d| ranks: 1 (0.5), 2 (−1), 3.5 (2), 3.5 (−2), 5 (3); zero dropped. W+ = 1 + 3.5 + 5, W− = 2 + 3.5
    assert st.rank_biserial([0.5, -1, 2, -2, 3, 0]) == pytest.approx((9.5 - 5.5) / 15)
    assert st.rank_biserial([0, 0]) is None


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone 0.02, 0.03, 0.06, 0.06
    assert st.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert st.holm([0.9, 0.8]) == [1.0, 1.0]
    assert st.holm([]) == []


def test_holm_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=7)
        order = np.argsort(p)
        expected = np.empty(7)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (7 - rank) * p[i]))
            expected[i] = running
        assert st.holm(list(p)) == pytest.approx(list(expected))


@pytest.mark.parametrize("seed", [0, 1])
def test_correlation_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=80)
    y = 0.4 * x + rng.normal(size=80)
    res = st.correlation(torch.tensor(x), y)  # tensors are accepted
    p, s = stats.pearsonr(x, y), stats.spearmanr(x, y)
    assert res.n == 80
    assert res.pearson_r == pytest.approx(p.statistic) and res.pearson_p == pytest.approx(p.pvalue)
    assert res.spearman_rho == pytest.approx(s.statistic) and res.spearman_p == pytest.approx(s.pvalue)


def test_degenerate_samples_give_defined_json():
    same = st.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_resamples=100)
    assert (same.mean_diff, same.p_t, same.p_wilcoxon, same.cohens_dz, same.rank_biserial) == (0.0, 1.0, 1.0, 0.0, 0.0)
    shifted = st.paired([2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0], n_resamples=100)
    assert shifted.p_t == 0.0 and shifted.cohens_dz is None and shifted.rank_biserial == 1.0
    assert st.correlation([1, 1, 1], [1, 2, 3]).pearson_r is None
    constant = st.correlation([1, 1, 1], [1, 2, 3])
    text = json.dumps([same.to_dict(), shifted.to_dict(), constant.to_dict()], allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: st.paired([1.0], [2.0]), "at least 2 pairs, got n = 1"),
        (lambda: st.paired([], []), "at least 2 pairs, got n = 0"),
        (lambda: st.paired([1, 2, 3], [1, 2]), "the samples have 3 and 2 values"),
        (lambda: st.paired([1, float("nan")], [1, 2]), "non-finite"),
        (lambda: st.correlation([1.0], [1.0]), "at least 2 pairs"),
        (lambda: st.holm([0.5, 1.5]), r"p-values must be in \[0, 1\]"),
        (lambda: st.bootstrap_mean_ci([1.0]), "at least 2 values"),
    ],
)
def test_bad_input_is_a_one_line_error(raises_phaselm, call, match):
    with raises_phaselm(match):
        call()


def test_a_planted_effect_is_detected_over_seeds():
    """d_z ≈ 0.8 with n = 50: both tests reject at α = 0.05 in every one of 20 seeds (power ≈ 1)."""
    for seed in range(20):
        x, y = pairs(seed, n=50, shift=0.8)
        res = st.paired(x, y, n_resamples=200, seed=seed)
        assert res.p_t < 0.05 and res.p_wilcoxon < 0.05, seed
        assert res.ci_low > 0 and res.cohens_dz > 0.4 and res.rank_biserial > 0


def test_a_null_case_is_not_detected_beyond_alpha():
    """No effect: the false-positive rate over 200 seeds stays near α = 0.05 (binomial range)."""
    rejected_t = rejected_w = 0
    for seed in range(200):
        x, y = pairs(1000 + seed, n=30)
        res = st.paired(x, y, n_resamples=50, seed=seed)
        rejected_t += res.p_t < 0.05
        rejected_w += res.p_wilcoxon < 0.05
    assert 2 <= rejected_t <= 20 and 2 <= rejected_w <= 20  # 200 × 0.05 = 10 expected


def test_holm_keeps_a_planted_effect_and_drops_the_nulls():
    """Five metrics, one with an effect: after Holm the effect survives and no null does (most seeds)."""
    false_positives = 0
    for seed in range(10):
        p = []
        for metric in range(5):
            x, y = pairs(seed * 10 + metric, n=50, shift=1.0 if metric == 0 else 0.0)
            p.append(st.paired(x, y, n_resamples=50).p_t)
        adjusted = st.holm(p)
        assert adjusted[0] < 0.05
        false_positives += sum(a < 0.05 for a in adjusted[1:])
    assert false_positives <= 1


def test_describe():
    out = st.describe([1.0, 2.0, 3.0, 4.0])
    assert out["n"] == 4 and out["mean"] == 2.5 and out["median"] == 2.5
    assert out["std"] == pytest.approx(math.sqrt(5 / 3))
    assert out["ci_low"] <= 2.5 <= out["ci_high"]


# ---------------------------------------------------------------- spread, permutation, bootstrap, power (issue 5)


@pytest.mark.parametrize("center", ["median", "mean"])
def test_spread_test_matches_scipy_levene(center):
    rng = np.random.default_rng(4)
    x, y, z = rng.normal(size=30), rng.normal(scale=2.0, size=25), rng.standard_t(3, size=18)
    for groups in ((x, y), (x, y, z)):
        res = st.spread_test(*groups, center=center)
        ref = stats.levene(*groups, center=center)
        assert res.statistic == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
        assert res.n == [len(g) for g in groups] and res.test == ("Brown–Forsythe" if center == "median" else "Levene")
    assert st.spread_test(x, y).variance_ratio == pytest.approx(np.var(x, ddof=1) / np.var(y, ddof=1))


def test_brown_forsythe_by_hand():
    # groups [1, 2, 3, 10] (median 2.5) and [4, 4, 5, 7] (median 4.5):
    # |x − median| = [1.5, .5, .5, 7.5], [.5, .5, .5, 2.5]
    z1, z2 = np.array([1.5, 0.5, 0.5, 7.5]), np.array([0.5, 0.5, 0.5, 2.5])
    grand = np.concatenate([z1, z2]).mean()
    between = 4 * (z1.mean() - grand) ** 2 + 4 * (z2.mean() - grand) ** 2
    within = ((z1 - z1.mean()) ** 2).sum() + ((z2 - z2.mean()) ** 2).sum()
    w = (8 - 2) / (2 - 1) * between / within
    res = st.spread_test([1, 2, 3, 10], [4, 4, 5, 7])
    assert res.statistic == pytest.approx(w) and res.p == pytest.approx(stats.f.sf(w, 1, 6))
    same = st.spread_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.statistic, same.p, same.variance_ratio) == (0.0, 1.0, 1.0)


def test_paired_permutation_test_is_exact_and_matches_scipy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=10)
    b = a + rng.normal(0.6, 1.0, size=10)
    res = st.permutation_test(a, b, paired=True, n_resamples=10_000)
    ref = stats.permutation_test(
        (a, b), lambda u, v, axis: np.mean(u - v, axis=axis), permutation_type="samples", n_resamples=10_000
    )
    assert res.exact and res.n_resamples == 2**10
    assert res.observed == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    for alternative in ("less", "greater"):
        one = st.permutation_test(a, b, paired=True, alternative=alternative)
        ref1 = stats.permutation_test((a, b), lambda u, v, axis: np.mean(u - v, axis=axis), permutation_type="samples",
                                      alternative=alternative)
        assert one.p == pytest.approx(ref1.pvalue)
    # by hand, n = 3: d = (1, 2, 3), mean 2; of the 8 sign patterns only (+,+,+) reaches 2 and only (−,−,−) reaches −2
    assert st.permutation_test([1, 2, 3], [0, 0, 0]).p == pytest.approx(2 / 8)


@pytest.mark.parametrize("statistic", ["mean", "log_variance_ratio"])
def test_two_sample_permutation_test_agrees_with_scipy(statistic):
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.3, 1.0, size=25), rng.normal(0.0, 1.6, size=30)
    fn = (lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis)) if statistic == "mean" else \
         (lambda u, v, axis: np.log(np.var(u, ddof=1, axis=axis)) - np.log(np.var(v, ddof=1, axis=axis)))
    res = st.permutation_test(x, y, paired=False, statistic=statistic, n_resamples=20_000, seed=1)
    ref = stats.permutation_test((x, y), fn, n_resamples=20_000, rng=np.random.default_rng(2))
    assert res.observed == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, abs=0.02)  # two Monte Carlo estimates of the same p


def test_bootstrap_ci_of_any_statistic():
    rng = np.random.default_rng(7)
    x, y = rng.normal(1.0, 1.0, size=60), rng.normal(0.0, 2.0, size=60)
    low, high = st.bootstrap_ci(
        x, y, lambda a, b: np.var(a, ddof=1, axis=-1) / np.var(b, ddof=1, axis=-1), n_resamples=20_000
    )
    ref = stats.bootstrap(
        (x, y), lambda a, b, axis: np.var(a, ddof=1, axis=axis) / np.var(b, ddof=1, axis=axis), paired=False,
        vectorized=True, method="percentile", n_resamples=20_000, rng=np.random.default_rng(3),
    )
    assert low == pytest.approx(ref.confidence_interval.low, rel=0.1)
    assert high == pytest.approx(ref.confidence_interval.high, rel=0.1)
    vr = st.variance_ratio_ci(x, y, n_resamples=5000)
    assert vr[0] < np.var(x, ddof=1) / np.var(y, ddof=1) < vr[1]
    assert st.bootstrap_ci(x, n_resamples=2000) == st.bootstrap_mean_ci(x, n_resamples=2000)  # the same resampling
    d = st.bootstrap_ci(x, y, paired=True, n_resamples=2000)
    assert d[0] < float(np.mean(x - y)) < d[1]


def test_power_against_tables_and_simulation():
    # G*Power: one-sample / paired t, two-sided, α = 0.05, d = 1, n = 10 → power 0.8031; n for d = 0.5 at 80 % is 34
    assert st.power_paired_t(10, 1.0) == pytest.approx(0.8031, abs=1e-4)
    assert st.power_paired_t(34, 0.5) >= 0.8 > st.power_paired_t(33, 0.5)
    assert st.power_paired_t(20, 0.0) == pytest.approx(0.05)
    mde = st.min_detectable_effect(50)
    assert st.power_paired_t(50, mde) == pytest.approx(0.8) and 0.39 < mde < 0.41
    assert st.min_detectable_effect(6, 0.05 / 24) > st.min_detectable_effect(6)  # stricter α, larger effect needed
    # simulation: paired t-tests at d_z = mde reject ~80 % of the time
    rng = np.random.default_rng(8)
    d = rng.normal(mde, 1.0, size=(4000, 50))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(50))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 49)) == pytest.approx(0.8, abs=0.025)
    # the variance-ratio F-test
    ratio = st.min_detectable_variance_ratio(40, 40)
    assert st.power_variance_ratio(40, 40, ratio) == pytest.approx(0.8)
    assert st.power_variance_ratio(40, 40, 1.0) == pytest.approx(0.05)
    x, y = rng.normal(scale=math.sqrt(ratio), size=(4000, 40)), rng.normal(size=(4000, 40))
    f = x.var(1, ddof=1) / y.var(1, ddof=1)
    reject = (f > stats.f.ppf(0.975, 39, 39)) | (f < stats.f.ppf(0.025, 39, 39))
    assert reject.mean() == pytest.approx(0.8, abs=0.025)


def spread_permutation_p(x, y, seed: int) -> float:
    return st.permutation_test(x, y, paired=False, statistic="log_variance_ratio", n_resamples=500, seed=seed).p


def test_spread_and_permutation_detect_a_planted_effect_and_not_a_null():
    """Over 40 seeds at α = 0.05: a doubled standard deviation (n = 60 per group) is found by
    Brown–Forsythe and the variance permutation test nearly always; equal spreads rarely."""
    hits_bf = hits_perm = false_bf = false_perm = hits_mean = false_mean = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        a, b = rng.normal(size=60), rng.normal(scale=2.0, size=60)
        hits_bf += st.spread_test(a, b).p < 0.05
        hits_perm += spread_permutation_p(a, b, seed) < 0.05
        c, d = rng.normal(size=60), rng.normal(size=60)
        false_bf += st.spread_test(c, d).p < 0.05
        false_perm += spread_permutation_p(c, d, seed) < 0.05
        x, y = pairs(300 + seed, n=40, shift=0.8)
        hits_mean += st.permutation_test(x, y, n_resamples=500, seed=seed).p < 0.05
        x, y = pairs(600 + seed, n=40)
        false_mean += st.permutation_test(x, y, n_resamples=500, seed=seed).p < 0.05
    assert hits_bf >= 36 and hits_perm >= 36 and hits_mean >= 36
    assert false_bf <= 6 and false_perm <= 6 and false_mean <= 6  # 40 × 0.05 = 2 expected


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: st.spread_test([1.0, 2.0]), "at least 2 groups"),
        (lambda: st.spread_test([1.0], [1.0, 2.0]), r"at least 2 values per group, got n = 1 in group 1"),
        (lambda: st.spread_test([1.0, 2.0], [1.0, 3.0], center="mode"), "center must be one of median, mean"),
        (lambda: st.permutation_test([1.0], [2.0]), "at least 2 pairs"),
        (lambda: st.permutation_test([1.0, 2.0], [2.0, 1.0], statistic="median"), "statistic must be one of"),
        (lambda: st.permutation_test([1.0, 2.0], [2.0, 1.0], statistic="log_variance_ratio"), "use paired=False"),
        (
            lambda: st.permutation_test([1.0, 1.0], [2.0, 3.0], paired=False, statistic="log_variance_ratio"),
            "zero variance",
        ),
        (lambda: st.power_paired_t(1, 0.5), r"n ≥ 2"),
        (lambda: st.min_detectable_effect(10, 0.05, 0.01), r"power must be in \(α, 1\)"),
        (lambda: st.power_variance_ratio(10, 10, 0.0), "must be > 0"),
        (lambda: st.bootstrap_ci([1.0]), "at least 2 values"),
    ],
)
def test_bad_input_to_the_new_statistics_is_one_line(raises_phaselm, call, match):
    with raises_phaselm(match):
        call()
