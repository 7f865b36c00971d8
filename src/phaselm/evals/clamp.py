"""Clamp sweep: evaluation-time bounds of u and their effect on loss and R."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PhaseLMError
from ..interventions import check_clamp_bounds, has_oscillators, oscillator_sites, override_clamp, require_oscillators
from ..subject import Subject
from .intervention import table_markdown
from .outputs import eval_mode, eval_progress, model_device, prepare_outputs, write_outputs
from .subject import CLAMP_NOTE, DEFAULT_BOUNDS
from .validation import check_eval_shape, count_batches, r_summary, token_stats, trained_bounds, u_summary


def clamp_sweep(model: nn.Module, val_ids: torch.Tensor,
                bounds: Sequence[tuple[float, float]] = DEFAULT_BOUNDS, **settings) -> dict:
    """:func:`clamp_eval` of a bare model (wrapped in a :class:`Subject`) on ``val_ids`` (N,)."""
    return clamp_eval(Subject(model, None, corpus=None), val_ids, bounds, **settings)


def clamp_eval(
    subject: Subject,
    val_ids: torch.Tensor | None = None,
    bounds: Sequence[tuple[float, float]] = DEFAULT_BOUNDS,
    batch_size: int = 16,
    seq_len: int = 256,
    max_batches: int = 20,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Evaluate a trained K-SSM with u clamped to each (u_min, u_max) — at evaluation time only
    (the ``clamp_sweep`` design). ``val_ids`` (N,) defaults to the subject's validation split.

    The first row is the model as trained. Each row: validation CE and perplexity, R mean/std
    (and per layer), u mean/std/min/max, and the share of positions whose u sits at the lower
    or upper bound. Bounds need u_min < u_max, and u_min > 0 for a bistable model.
    Writes clamp.json and clamp.png.
    """
    model = subject.model
    val_ids = subject.validation_ids() if val_ids is None else val_ids
    if not has_oscillators(model) and oscillator_sites(model):
        raise PhaseLMError("a clamp sweep clamps u of K-SSM's bistable banks; this model's oscillators (a grafted "
                           "Phase Core or a Kuramoto token mixer) have no u to clamp")
    banks = require_oscillators(model, "a clamp sweep")
    if getattr(getattr(model, "config", None), "model_type", "") != "kssm":
        raise PhaseLMError("a clamp sweep needs a K-SSM model (bounds of its bistable u)")
    bistable = all(b.cfg.bistable for b in banks)
    bounds = [check_clamp_bounds(lo, hi, bistable=bistable) for lo, hi in (_pair(b) for b in bounds)]
    if not bounds:
        raise PhaseLMError("give at least one pair of bounds, e.g. 0.1:10")
    check_eval_shape(model, val_ids, batch_size, seq_len, max_batches)
    files = prepare_outputs(out_dir, "clamp")
    per_pass = count_batches(val_ids, batch_size, seq_len, max_batches)
    trained = trained_bounds(model)
    first = "as trained" + (f" [{trained[0]:g}, {trained[1]:g}]" if trained else " (no clamp)")
    conditions: list[tuple[str, tuple[float, float] | None]] = [(first, None)]
    conditions += [(f"[{lo:g}, {hi:g}]", (lo, hi)) for lo, hi in bounds]
    rows = []
    with eval_mode(model), eval_progress(progress) as bar:
        task = bar.add_task("clamp sweep", total=per_pass * len(conditions), status="")
        for label, pair in conditions:
            bar.update(task, status=label)
            ctx = override_clamp(model, *pair) if pair is not None else contextlib.nullcontext()
            with ctx:
                stats = token_stats(model, val_ids, batch_size, seq_len, max_batches,
                                     lambda: bar.update(task, advance=1))
            active = pair if pair is not None else trained_bounds(model)
            rows.append({
                "bounds": label,
                "u_min": None if active is None else active[0],
                "u_max": None if active is None else active[1],
                "trained": pair is None,
                "val_ce": stats.val_ce,
                "val_ppl": math.exp(min(stats.val_ce, 50.0)),
                **r_summary(stats),
                **u_summary(stats, active),
                "tokens": int(stats.ce.size),
            })
    header = ["bounds", "val loss", "val ppl", "R mean", "R std", "u mean", "u std", "u at bounds"]
    table = [[r["bounds"], r["val_ce"], r["val_ppl"], r["r_mean"], r["r_std"],
              r["u_mean"], r["u_std"], r["u_at_bounds"]] for r in rows]
    result = {
        "eval": "clamp_sweep",
        "command": command,
        "model": model_name,
        "note": CLAMP_NOTE,
        "trained_bistable": bistable,
        "trained_bounds": trained_bounds(model),
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "rows": rows,
        "markdown": "Evaluation-time clamp sweep (not retraining).\n\n" + table_markdown(header, table),
        "device": str(model_device(model)),
    }
    return write_outputs(files, result, lambda path: _plot_clamp(result, path))


def _pair(bound) -> tuple[float, float]:
    try:
        lo, hi = bound
    except (TypeError, ValueError):
        raise PhaseLMError(f"clamp bounds must be pairs (u_min, u_max), got {bound!r}") from None
    return lo, hi


def parse_bounds(text: str) -> tuple[float, float]:
    """``"0.1:10"`` → (0.1, 10.0)."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise PhaseLMError(f"bad bounds {text!r}; write u_min:u_max, e.g. 0.1:10") from None


def iter_bounds(items: Iterable[str]) -> list[tuple[float, float]]:
    """Parse repeatable, comma-separated ``u_min:u_max`` options into (u_min, u_max) pairs."""
    return [parse_bounds(t) for item in items for t in item.split(",") if t.strip()]


def _plot_clamp(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..reporting.plots import save_figure

    rows = result["rows"]
    labels = [r["bounds"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(x, [r["val_ce"] for r in rows], color="tab:blue", marker="o")
    axes[0].plot([0], [rows[0]["val_ce"]], color="tab:grey", marker="s", ms=10, ls="none", label="as trained")
    axes[0].legend(fontsize=8)
    axes[0].set_ylabel("validation loss (CE, nats)")
    axes[1].errorbar(x, [r["r_mean"] for r in rows], yerr=[r["r_std"] for r in rows], fmt="o", capsize=3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("R (mean ± std over layers and positions)")
    axes[2].errorbar(x, [r["u_mean"] for r in rows], yerr=[r["u_std"] for r in rows], fmt="o", capsize=3,
                     label="u mean ± std")
    axes[2].set_ylabel("u (mean ± std)")
    share = axes[2].twinx()
    share.bar(x, [r["u_at_bounds"] or 0.0 for r in rows], alpha=0.25, color="tab:red")
    share.set_ylim(0, 1)
    share.set_ylabel("share of u at a bound (bars)", color="tab:red")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Clamp sweep of u — evaluation time only, not retraining (grey: as trained)")
    save_figure(fig, path)
