"""Plots of a training run: R and loss over steps, tone distribution."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt

from ..observables import TONES
from .common import AUX_LOSS_KEYS, DPI, MAIN_LOSS_KEYS, TONE_COLOURS, TONE_GLYPH_BY_NAME
from .reading import is_number, is_train_record, metric_series


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG at ``path`` (parents created), close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    # Reports are made in long-lived processes; open figures would pile up in pyplot's registry.
    plt.close(fig)
    return path


def order_figure(records: list[dict]):
    """The R-over-steps figure, or None when no train record has ``r_mean``."""
    steps, mean = metric_series(records, "r_mean")
    if not steps:
        return None
    band = [
        (r["step"], r["r_min"], r["r_max"])
        for r in records
        if is_train_record(r) and all(is_number(r.get(k)) for k in ("step", "r_min", "r_max"))
    ]
    band.sort(key=lambda b: b[0])

    fig, ax = plt.subplots(figsize=(7, 4))
    if band:
        ax.fill_between(
            [b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
            alpha=0.25, color="tab:blue", linewidth=0, label="R min–max",
        )
    # Markers keep a run with a single logged step visible.
    ax.plot(steps, mean, color="tab:blue", marker="." if len(steps) < 50 else None, label="R mean")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("order parameter R")
    ax.set_title("Phase Core synchrony R over training")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def plot_order(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Mean order parameter R over training steps, shaded between R min and R max.

    Returns the written path, or None when no train record has ``r_mean``.
    """
    fig = order_figure(records)
    return None if fig is None else save_figure(fig, path)


def _plot_lines(ax, records: list[dict], keys: Iterable[str]) -> bool:
    """One line per key present in the train records; True when anything was drawn."""
    drawn = False
    for key in keys:
        steps, values = metric_series(records, key)
        if steps:
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
            drawn = True
    return drawn


def plot_loss(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Loss terms over steps: loss, ce (and val_ce points) on top, the regularisers below.

    The lower panel appears only when a regulariser was logged. Returns the written path, or
    None when no loss term is present at all.
    """
    fig = loss_figure(records)
    return None if fig is None else save_figure(fig, path)


def loss_figure(records: list[dict]):
    """The loss-over-steps figure of metrics records, or None when they hold no loss."""
    val_steps, val_ce = metric_series(records, "val_ce", train=False)
    has_main = val_steps or any(metric_series(records, k)[0] for k in MAIN_LOSS_KEYS)
    has_aux = any(metric_series(records, k)[0] for k in AUX_LOSS_KEYS)
    if not (has_main or has_aux):
        return None

    panels = [p for p, present in (("main", has_main), ("aux", has_aux)) if present]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7, 3.2 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    axes = dict(zip(panels, axes[:, 0]))
    if "main" in axes:
        ax = axes["main"]
        _plot_lines(ax, records, MAIN_LOSS_KEYS)
        if val_steps:
            ax.plot(val_steps, val_ce, "o", color="black", label="val_ce")
        ax.set_ylabel("loss (nats)")
        ax.set_title("Training loss")
    if "aux" in axes:
        ax = axes["aux"]
        _plot_lines(ax, records, AUX_LOSS_KEYS)
        ax.set_ylabel("regulariser")
        ax.set_title("Regularisation terms")
    for ax in axes.values():
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    axes[panels[-1]].set_xlabel("training step")
    return fig


def ordered_tones(tone_values: dict[str, float]) -> list[tuple[str, float]]:
    """(name, value) in the canonical tone order; unknown names follow, in their own order."""
    known = [(t.name, tone_values[t.name]) for t in TONES if t.name in tone_values]
    extra = [(k, v) for k, v in tone_values.items() if k not in TONE_GLYPH_BY_NAME]
    return known + extra


def plot_tones(tone_shares: dict[str, float], path: str | os.PathLike) -> Path | None:
    """Bar chart of the share of each tone, in the canonical order (☍ ⚖ 🌀 ✨ ☾ ∅).

    Values are normalised to percent, so raw counts work too. Bars are labelled by name: the
    default matplotlib font lacks most tone glyphs. Returns None when there is nothing to draw.
    """
    fig = tones_figure(tone_shares)
    return None if fig is None else save_figure(fig, path)


def tones_figure(tone_shares: dict[str, float]):
    """The tone-distribution bar chart, or None when there are no tone shares."""
    items = [(k, v) for k, v in ordered_tones(tone_shares) if is_number(v)]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return None
    names = [k for k, _ in items]
    percent = [100.0 * v / total for _, v in items]

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, percent, color=[TONE_COLOURS.get(n, "tab:purple") for n in names])
    ax.bar_label(bars, labels=[f"{p:.1f}%" for p in percent], padding=2, fontsize=9)
    ax.set_ylim(0, max(percent) * 1.15)
    ax.set_ylabel("share of tokens (%)")
    ax.set_title("Tone distribution")
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    return fig


def tone_counts(records: list[dict]) -> dict[str, float]:
    """Tone counts summed over the train records; a fallback when the summary has no shares."""
    totals: dict[str, float] = {}
    for record in records:
        tones = record.get("tones")
        if is_train_record(record) and isinstance(tones, dict):
            for name, count in tones.items():
                if is_number(count):
                    totals[name] = totals.get(name, 0) + count
    return totals

