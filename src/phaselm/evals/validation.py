"""Validation passes: cross-entropy, R and u per token."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PhaseLMError
from ..interventions import has_oscillators, measure, oscillator_sites
from .outputs import check_positions, model_device


@dataclass
class _TokenStats:
    ce: np.ndarray  # (tokens,)
    orders: np.ndarray | None  # (layers, tokens)
    u: np.ndarray | None  # (layers, tokens)

    @property
    def val_ce(self) -> float:
        return float(self.ce.mean())


def check_eval_shape(model, val_ids, batch_size: int, seq_len: int, max_batches: int) -> None:
    """One-line errors for a batch size, batch count or seq_len the model or validation split cannot serve."""
    from ..data import check_length

    if batch_size < 1 or max_batches < 1:
        raise PhaseLMError(f"batch size and number of batches must be at least 1, got {batch_size} and {max_batches}")
    check_positions(model, seq_len, f"seq_len {seq_len}")
    check_length(val_ids, seq_len, "validation split")


@torch.no_grad()
def token_stats(model, val_ids, batch_size: int, seq_len: int, max_batches: int, advance=lambda: None) -> _TokenStats:
    """Per-token CE, and R and U per layer and token, over up to ``max_batches`` sequential batches
    of (batch_size, seq_len) windows of val_ids (N,)."""
    from ..data import sequential_batches

    device = model_device(model)
    oscillators = has_oscillators(model)
    grafted = not oscillators and bool(oscillator_sites(model))  # a grafted core: R (read by measure), no bank u
    ce, orders, us = [], [], []
    for i, (x, y) in enumerate(sequential_batches(val_ids, batch_size, seq_len)):
        if i >= max_batches:
            break
        if grafted:
            with measure(model) as m:
                out = model(input_ids=x.to(device))
            orders.append(torch.stack([m.orders[k][0] for k in sorted(m.orders)], 0).flatten(1))  # (sites, B·T)
        else:
            out = model(input_ids=x.to(device), output_orders=True) if oscillators else model(input_ids=x.to(device))
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")
        ce.append(loss.cpu())
        if oscillators:
            orders.append(out.orders.float().transpose(0, 1).flatten(1).cpu())  # (L, B·T)
            us.append(out.u.float().transpose(0, 1).flatten(1).cpu())
        advance()
    return _TokenStats(
        torch.cat(ce).double().numpy(),
        torch.cat(orders, 1).double().numpy() if orders else None,
        torch.cat(us, 1).double().numpy() if us else None,
    )


def count_batches(val_ids, batch_size: int, seq_len: int, max_batches: int) -> int:
    """How many batches :func:`token_stats` will read."""
    windows = (len(val_ids) - 1) // seq_len
    return min(max_batches, -(-windows // batch_size))


def u_summary(stats: _TokenStats, bounds: tuple[float, float] | None) -> dict:
    """Mean, spread and observed range of U, and the share of tokens at each clamp bound (None without U)."""
    if stats.u is None:
        return {"u_mean": None, "u_std": None, "u_observed_min": None, "u_observed_max": None, "u_at_lower": None,
                "u_at_upper": None, "u_at_bounds": None}
    u = stats.u
    out = {"u_mean": float(u.mean()), "u_std": float(u.std()), "u_observed_min": float(u.min()),
           "u_observed_max": float(u.max())}
    if bounds is None:
        out.update(u_at_lower=None, u_at_upper=None, u_at_bounds=None)
    else:
        # clamp returns the bound itself, computed in float32: compare in float32
        lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
        u32 = u.astype(np.float32)
        lower, upper = float(np.mean(u32 <= lo)), float(np.mean(u32 >= hi))
        out.update(u_at_lower=lower, u_at_upper=upper, u_at_bounds=lower + upper)
    return out


def r_summary(stats: _TokenStats) -> dict:
    """Mean and std of R over tokens and layers, and the mean per layer (None without oscillators)."""
    if stats.orders is None:
        return {"r_mean": None, "r_std": None, "r_per_layer": None}
    return {"r_mean": float(stats.orders.mean()), "r_std": float(stats.orders.std()),
            "r_per_layer": stats.orders.mean(1).tolist()}


def trained_bounds(model) -> tuple[float, float] | None:
    """The (u_min, u_max) clamp a bistable K-SSM was trained with; None for any other model."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", "") == "kssm" and cfg.bistable:
        return (float(cfg.u_min), float(cfg.u_max))
    return None
