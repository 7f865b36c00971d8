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
    ref = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=20_000, method="percentile", rng=np.random.default_rng(1))
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
    text = json.dumps([same.to_dict(), shifted.to_dict(), st.correlation([1, 1, 1], [1, 2, 3]).to_dict()], allow_nan=False)
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
    assert out["n"] == 4 and out["mean"] == 2.5 and out["median"] == 2.5 and out["std"] == pytest.approx(math.sqrt(5 / 3))
    assert out["ci_low"] <= 2.5 <= out["ci_high"]
