"""Statistics for paired evaluations: tests, effect sizes, intervals, multiple comparisons.

Every function takes plain sequences (lists, numpy arrays, CPU or CUDA tensors), refuses
fewer than 2 observations or non-finite values with a one-line :class:`PhaseLMError`, and
returns JSON-able results (``to_dict``); undefined quantities are ``None``, never NaN or Inf.
One module per concept; everything public is re-exported here (``st.paired``, ``st.holm`` …).

* checks — :func:`as_array`, :func:`check_pairs`: the input checks every statistic shares.
* paired_tests — :func:`paired`: per-prompt pairs (x_i, y_i), differences d = x − y: mean
  difference with a percentile bootstrap CI, paired t-test, Wilcoxon signed-rank test, Cohen's
  d_z = mean(d)/sd(d) and the matched-pairs rank-biserial correlation (Kerby's
  r = (W⁺ − W⁻)/(W⁺ + W⁻)).
* multiple_comparisons — :func:`holm`: Holm–Bonferroni adjusted p-values for a family of tests.
* correlations — :func:`correlation`: Pearson and Spearman coefficients with their p-values.
* descriptive — :func:`describe`: n, mean, std, median, range and a bootstrap CI of the mean.
* spread — :func:`spread_test`: Levene's test for equal variances (``center="mean"``) and its
  Brown–Forsythe form (``center="median"``): a one-way ANOVA on |x − centre| per group.
* permutation — :func:`permutation_test`: paired (sign-flip) or two-sample (label-shuffle)
  permutation test of a mean difference or a log variance ratio, exact when the permutations
  are few.
* bootstrap — :func:`bootstrap_ci`: percentile bootstrap interval of any one- or two-sample
  statistic (and :func:`bootstrap_mean_ci`, :func:`variance_ratio_ci`).
* power — :func:`power_paired_t`, :func:`min_detectable_effect`: power of the two-sided paired
  t-test (noncentral t) and the smallest d_z it detects at a given power, for the n used;
  :func:`power_variance_ratio`, :func:`min_detectable_variance_ratio`: the same for a two-sided
  F-test of a variance ratio (normal data; an approximation for Brown–Forsythe).
"""

from .bootstrap import bootstrap_ci, bootstrap_mean_ci, variance_ratio_ci
from .checks import MIN_N, as_array, check_pairs, finite_or_none, json_ready
from .correlations import CorrelationResult, correlation
from .descriptive import describe
from .multiple_comparisons import holm
from .paired_tests import PairedResult, paired, rank_biserial
from .permutation import ALTERNATIVES, PERMUTATION_STATISTICS, PermutationResult, permutation_test
from .power import min_detectable_effect, min_detectable_variance_ratio, power_paired_t, power_variance_ratio
from .spread import CENTERS, SpreadResult, log_variance_ratio, spread_test

__all__ = [
    "ALTERNATIVES",
    "CENTERS",
    "MIN_N",
    "PERMUTATION_STATISTICS",
    "CorrelationResult",
    "PairedResult",
    "PermutationResult",
    "SpreadResult",
    "as_array",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "check_pairs",
    "correlation",
    "describe",
    "finite_or_none",
    "holm",
    "json_ready",
    "log_variance_ratio",
    "min_detectable_effect",
    "min_detectable_variance_ratio",
    "paired",
    "permutation_test",
    "power_paired_t",
    "power_variance_ratio",
    "rank_biserial",
    "spread_test",
    "variance_ratio_ci",
]
