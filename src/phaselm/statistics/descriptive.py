"""Descriptive summary of one sample: n, mean, spread, range and a bootstrap CI of the mean."""

from __future__ import annotations

import numpy as np

from ..errors import PhaseLMError
from .bootstrap import bootstrap_mean_ci
from .checks import MIN_N, as_array


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
