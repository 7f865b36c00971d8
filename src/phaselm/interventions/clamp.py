"""Evaluation-time clamp bounds for K-SSM's u: they change what a trained model computes
without retraining, and are restored the same way as an intervention."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from torch import nn

from ..errors import PhaseLMError
from .sites import require_oscillators


def check_clamp_bounds(u_min: float, u_max: float, bistable: bool = True) -> tuple[float, float]:
    """(u_min, u_max) as finite floats with u_min < u_max (and 0 < u_min for a bistable model)."""
    try:
        lo, hi = float(u_min), float(u_max)
    except (TypeError, ValueError):
        raise PhaseLMError(f"clamp bounds must be numbers, got ({u_min!r}, {u_max!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PhaseLMError(f"clamp bounds must be finite, got ({lo}, {hi})")
    if lo >= hi:
        raise PhaseLMError(f"clamp bounds need u_min < u_max, got u_min={lo:g} ≥ u_max={hi:g}")
    if bistable and lo <= 0:
        raise PhaseLMError(f"clamp bounds of a bistable model need 0 < u_min, got u_min={lo:g}; −log(u) needs u > 0")
    return lo, hi


@contextlib.contextmanager
def override_clamp(model: nn.Module, u_min: float, u_max: float) -> Iterator[dict]:
    """Clamp u to [u_min, u_max] in every K-SSM bank for the ``with`` block (evaluation time).

    A monostable model (trained without a clamp) gets the clamp switched on; its bounds may
    then be ≤ 0. The banks' configs are restored on exit, also after an exception.
    """
    banks = require_oscillators(model, "a clamp sweep")  # every declared K-SSM bank has u bounds
    trained_bistable = all(b.cfg.bistable for b in banks)
    lo, hi = check_clamp_bounds(u_min, u_max, bistable=trained_bistable)
    saved = [(b.cfg.bistable, b.cfg.u_min, b.cfg.u_max) for b in banks]
    try:
        for b in banks:
            b.cfg.bistable, b.cfg.u_min, b.cfg.u_max = True, lo, hi
        yield {"u_min": lo, "u_max": hi, "trained_bistable": trained_bistable, "layers": len(banks)}
    finally:
        for b, (bistable, old_lo, old_hi) in zip(banks, saved, strict=True):
            b.cfg.bistable, b.cfg.u_min, b.cfg.u_max = bistable, old_lo, old_hi
