"""Multiple comparisons: Holm–Bonferroni adjusted p-values for a family of tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import PhaseLMError


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
