"""Statistics shared by the protocol kinds: paired comparisons, one Holm family, power."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .. import statistics as st
from .spec import Protocol


def clean_pairs(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where both values are present and finite, as two float arrays."""
    keep = [i for i in range(len(x))
            if x[i] is not None and y[i] is not None and math.isfinite(x[i]) and math.isfinite(y[i])]
    return np.asarray([x[i] for i in keep], dtype=float), np.asarray([y[i] for i in keep], dtype=float)


def compare(x: Sequence, y: Sequence, protocol: Protocol, seed: int = 0) -> dict | None:
    """x (condition) against y (baseline), paired: the declared test's p as ``p``, and every test."""
    x, y = clean_pairs(x, y)
    if len(x) < st.MIN_N:
        return None
    out = st.paired(x, y, protocol.ci_level, protocol.bootstrap_resamples, seed).to_dict()
    out["p_permutation"] = st.permutation_test(x, y, True, "mean", protocol.permutation_resamples, seed).p
    out["p"] = {"t": out["p_t"], "wilcoxon": out["p_wilcoxon"], "permutation": out["p_permutation"]}[protocol.test]
    return out


def holm_family(entries: list[dict | None], keys: Sequence[str] = ("p", "p_t", "p_wilcoxon", "p_permutation")) -> int:
    """Holm-adjust each key across the entries in place (``KEY_holm``); returns the family size."""
    live = [e for e in entries if e is not None]
    for key in keys:
        adjusted = st.holm([e.get(key) for e in live])
        for entry, value in zip(live, adjusted):
            entry[f"{key}_holm"] = value
    return sum(1 for e in live if e.get("p") is not None)


def power_statement(n: int, protocol: Protocol, family: int, variance: bool = False) -> dict:
    """The smallest effects detectable at n pairs (d_z, at α and at Holm's strictest level; with
    ``variance``, the variance ratio too), so a null result says what it could have found."""
    out = {
        "n": n,
        "alpha": protocol.alpha,
        "power": protocol.power,
        "family": family,
        "min_detectable_dz": st.min_detectable_effect(n, protocol.alpha, protocol.power),
        "min_detectable_dz_holm_strictest": st.min_detectable_effect(n, protocol.alpha / max(family, 1),
                                                                     protocol.power),
        "note": f"paired t-test, two-sided; 'holm_strictest' is the level α/{max(family, 1)} Holm applies to the "
                "smallest p-value",
    }
    if variance:
        out["min_detectable_variance_ratio"] = st.min_detectable_variance_ratio(n, n, protocol.alpha, protocol.power)
        out["variance_note"] = ("two-sided F-test of a variance ratio for normal data (an approximation for "
                                "Brown–Forsythe); ratios below 1 are detectable at the reciprocal")
    return out


def count_phrase(n: int, word: str) -> str:
    """``count_phrase(3, 'seed')`` → "3 seeds" (singular for 1)."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def mean_or_none(values: Sequence) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    clean = [v for v in values if v is not None]
    return float(np.mean(clean)) if clean else None


def per_token_r(orders: torch.Tensor | None, window: slice) -> np.ndarray | None:
    """R per position in ``window``, averaged over sites: orders (sites, T) → (len(window),); None passes through."""
    if orders is None:
        return None
    return orders[:, window].mean(0).double().numpy()
