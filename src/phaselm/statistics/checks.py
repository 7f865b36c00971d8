"""Input checks and JSON-safe values shared by every statistic of the package.

Every statistic takes plain sequences (lists, numpy arrays, CPU or CUDA tensors), refuses fewer
than :data:`MIN_N` observations or non-finite values with a one-line :class:`PhaseLMError`, and
returns results whose undefined quantities are ``None``, never NaN or Inf.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from ..errors import PhaseLMError

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


def check_pairs(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    """x and y as 1-D float64 arrays of one length ≥ MIN_N; ``what`` names the caller in errors."""
    x, y = as_array(x, f"{what}: first sample"), as_array(y, f"{what}: second sample")
    if len(x) != len(y):
        raise PhaseLMError(f"{what} needs pairs: the samples have {len(x)} and {len(y)} values")
    if len(x) < MIN_N:
        raise PhaseLMError(f"{what} needs at least {MIN_N} pairs, got n = {len(x)}; use more prompts or samples")
    return x, y


def finite_or_none(value) -> float | None:
    """``value`` as a float, or None when it is None, NaN or ±Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_ready(result) -> dict:
    """A result dataclass's fields as a JSON-ready dict (NaN and ±Inf become None)."""
    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(result).items()}
