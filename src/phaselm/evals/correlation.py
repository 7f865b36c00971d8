"""R vs per-token loss, per layer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import statistics as st
from ..errors import PhaseLMError
from ..interventions import require_oscillator_sites
from ..subject import Subject
from .intervention import table_markdown
from .outputs import eval_mode, eval_progress, model_device, prepare_outputs, write_outputs
from .subject import CORRELATION_NOTE
from .validation import check_eval_shape, count_batches, token_stats


def order_loss_correlation(model: nn.Module, val_ids: torch.Tensor, **settings) -> dict:
    """:func:`correlation_eval` of a bare model (wrapped in a :class:`Subject`) on ``val_ids`` (N,)."""
    return correlation_eval(Subject(model, None, corpus=None), val_ids, **settings)


def correlation_eval(
    subject: Subject,
    val_ids: torch.Tensor | None = None,
    batch_size: int = 16,
    seq_len: int = 256,
    max_batches: int = 20,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
    bins: int = 10,
) -> dict:
    """Correlate per-token cross-entropy with R (per layer and the layer mean) on validation text
    (the ``order_loss_correlation`` design). ``val_ids`` (N,) defaults to the subject's validation split.

    Pearson and Spearman with p-values, plus the mean CE in each R decile. R at position t is
    paired with the loss of predicting token t+1 from position t. Writes correlation.json/.png.
    """
    model = subject.model
    val_ids = subject.validation_ids() if val_ids is None else val_ids
    require_oscillator_sites(model, "an R–loss correlation")
    check_eval_shape(model, val_ids, batch_size, seq_len, max_batches)
    files = prepare_outputs(out_dir, "correlation")
    with eval_mode(model), eval_progress(progress) as bar:
        task = bar.add_task("R–loss correlation", total=count_batches(val_ids, batch_size, seq_len, max_batches),
                            status="")
        stats = token_stats(model, val_ids, batch_size, seq_len, max_batches, lambda: bar.update(task, advance=1))
    if stats.ce.size < st.MIN_N:
        raise PhaseLMError(f"a correlation needs at least {st.MIN_N} tokens, got {stats.ce.size}")
    series = {f"layer {i}": stats.orders[i] for i in range(stats.orders.shape[0])}
    series["mean over layers"] = stats.orders.mean(0)
    layers = []
    for name, r in series.items():
        layers.append({"layer": name, **st.correlation(r, stats.ce).to_dict(), "r_mean": float(r.mean()),
                       "r_std": float(r.std()), "binned": _binned(r, stats.ce, bins)})
    table = [[row["layer"], row["n"], row["pearson_r"], row["pearson_p"], row["spearman_rho"], row["spearman_p"],
              row["r_mean"]] for row in layers]
    result = {
        "eval": "order_loss_correlation",
        "command": command,
        "model": model_name,
        "note": CORRELATION_NOTE,
        "tokens": int(stats.ce.size),
        "val_ce": stats.val_ce,
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "layers": layers,
        "markdown": table_markdown(["R of", "n", "Pearson r", "p", "Spearman ρ", "p", "R mean"], table),
        "device": str(model_device(model)),
    }
    return write_outputs(files, result, lambda path: _plot_correlation(result, series, stats.ce, path))


def _binned(r: np.ndarray, ce: np.ndarray, bins: int) -> list[dict]:
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return [{"r_low": float(r.min()), "r_high": float(r.max()), "n": int(r.size), "ce_mean": float(ce.mean())}]
    which = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        mask = which == b
        if mask.any():
            out.append({"r_low": float(edges[b]), "r_high": float(edges[b + 1]), "n": int(mask.sum()),
                        "ce_mean": float(ce[mask].mean())})
    return out


def _plot_correlation(result: dict, series: dict, ce: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..reporting.common import format_value
    from ..reporting.plots import save_figure

    n = len(series)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, r), info in zip(axes.flat, series.items(), result["layers"]):
        if np.ptp(r) > 0 and np.ptp(ce) > 0:
            ax.hexbin(r, ce, gridsize=40, bins="log", cmap="viridis", mincnt=1)
        else:
            ax.scatter(r, ce, s=2, alpha=0.3)
        centers = [(b["r_low"] + b["r_high"]) / 2 for b in info["binned"]]
        ax.plot(centers, [b["ce_mean"] for b in info["binned"]], color="red", marker="o", ms=3,
                label="mean CE per R decile")
        ax.set_title(f"{name}: r = {format_value(info['pearson_r'], 3)}, ρ = {format_value(info['spearman_rho'], 3)}",
                     fontsize=9)
        ax.set_xlabel("R")
        ax.set_ylabel("per-token CE (nats)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"R vs per-token loss on validation text ({result['tokens']:,} tokens)")
    save_figure(fig, path)
