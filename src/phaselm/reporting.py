"""Run reports: plots of a training run's metrics and a Markdown summary beside them.

A run directory holds ``metrics.jsonl`` (one JSON object per logged step; evaluation lines
carry ``"split"``) and the caller's final statistics. ``write_report`` turns both into
``plots/*.png`` and ``report.md``. Every key is optional: a pretraining run has no R, U or
tones, so each plot and section is drawn only when its data is there.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import matplotlib

# Reports are written on headless training machines: pick the file-only backend before pyplot
# is imported, so pyplot never tries to open a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import PhaseLMError  # noqa: E402
from .observables import ACTIONS, TONES  # noqa: E402

DPI = 110
MEASURED_TOKENS = 64  # rows of the per-token sample table; longer samples are cut
PLOT_FILES = {"order": "order.png", "loss": "loss.png", "tones": "tones.png"}
MAIN_LOSS_KEYS = ("loss", "ce")
# The regularisers are orders of magnitude smaller than the cross-entropy: they get their own
# panel, or they would sit flat on the x axis.
AUX_LOSS_KEYS = ("uncertainty_reg", "presence", "tonal")
STAT_ROWS = (("order", "R"), ("uncertainty", "U"), ("ru", "R·U"))

TONE_NAME_BY_GLYPH = {t.glyph: t.name for t in TONES}
TONE_GLYPH_BY_NAME = {t.name: t.glyph for t in TONES}


# ---------------------------------------------------------------------------------------------
# Reading


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of ``run_dir/metrics.jsonl`` in file order, blank lines skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PhaseLMError(f"{path}: no such file; is {run_dir} a training run directory?")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PhaseLMError(
                    f"{path}, line {lineno}: not valid JSON ({err.msg}); fix or delete that line"
                ) from None
            if not isinstance(record, dict):
                raise PhaseLMError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    return records


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a True in a metric column is not a measurement.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_train(record: dict) -> bool:
    return record.get("split", "train") == "train"


def _series(records: Iterable[dict], key: str, train: bool = True) -> tuple[list, list]:
    """(steps, values) of ``key`` over the train (or evaluation) records that have it, by step."""
    points = [
        (r["step"], r[key])
        for r in records
        if _is_train(r) == train and _is_number(r.get("step")) and _is_number(r.get(key))
    ]
    # A resumed run may log a step range twice; sorting keeps the line from doubling back.
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


# ---------------------------------------------------------------------------------------------
# Plots


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    # Reports are made in long-lived processes; open figures would pile up in pyplot's registry.
    plt.close(fig)
    return path


def plot_order(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Mean order parameter R over training steps, shaded between R min and R max.

    Returns the written path, or None when no train record has ``r_mean``.
    """
    steps, mean = _series(records, "r_mean")
    if not steps:
        return None
    band = [
        (r["step"], r["r_min"], r["r_max"])
        for r in records
        if _is_train(r) and all(_is_number(r.get(k)) for k in ("step", "r_min", "r_max"))
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
    return _save(fig, path)


def _plot_lines(ax, records: list[dict], keys: Iterable[str]) -> bool:
    """One line per key present in the train records; True when anything was drawn."""
    drawn = False
    for key in keys:
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
            drawn = True
    return drawn


def plot_loss(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Loss terms over steps: loss, ce (and val_ce points) on top, the regularisers below.

    The lower panel appears only when a regulariser was logged. Returns the written path, or
    None when no loss term is present at all.
    """
    val_steps, val_ce = _series(records, "val_ce", train=False)
    has_main = val_steps or any(_series(records, k)[0] for k in MAIN_LOSS_KEYS)
    has_aux = any(_series(records, k)[0] for k in AUX_LOSS_KEYS)
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
    return _save(fig, path)


def _ordered_tones(tone_values: dict[str, float]) -> list[tuple[str, float]]:
    """(name, value) in the canonical tone order; unknown names follow, in their own order."""
    known = [(t.name, tone_values[t.name]) for t in TONES if t.name in tone_values]
    extra = [(k, v) for k, v in tone_values.items() if k not in TONE_GLYPH_BY_NAME]
    return known + extra


def plot_tones(tone_shares: dict[str, float], path: str | os.PathLike) -> Path | None:
    """Bar chart of the share of each tone, in the canonical order (☍ ⚖ 🌀 ✨ ☾ ∅).

    Values are normalised to percent, so raw counts work too. Bars are labelled by name: the
    default matplotlib font lacks most tone glyphs. Returns None when there is nothing to draw.
    """
    items = [(k, v) for k, v in _ordered_tones(tone_shares) if _is_number(v)]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return None
    names = [k for k, _ in items]
    percent = [100.0 * v / total for _, v in items]

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, percent, color="tab:purple")
    ax.bar_label(bars, labels=[f"{p:.1f}%" for p in percent], padding=2, fontsize=9)
    ax.set_ylim(0, max(percent) * 1.15)
    ax.set_ylabel("share of tokens (%)")
    ax.set_title("Tone distribution")
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def tone_counts(records: list[dict]) -> dict[str, float]:
    """Tone counts summed over the train records; a fallback when the summary has no shares."""
    totals: dict[str, float] = {}
    for record in records:
        tones = record.get("tones")
        if _is_train(record) and isinstance(tones, dict):
            for name, count in tones.items():
                if _is_number(count):
                    totals[name] = totals.get(name, 0) + count
    return totals


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, digits: int = 4) -> str:
    if not _is_number(value):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _percent(value: Any) -> str:
    return f"{100.0 * value:.1f} %" if _is_number(value) else _fmt(value)


def _cell(text: Any) -> str:
    # A '|' would end the table cell, even inside a code span (GFM); a newline ends the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _code_span(text: str) -> str:
    # Same rule inline: a backtick in a token (it happens) needs a longer delimiter around it.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    return f"{ticks} {text} {ticks}" if longest else f"{ticks}{text}{ticks}"


def _code_block(text: str, lang: str = "") -> list[str]:
    # The fence must be longer than any backtick run inside, or the text would close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text.rstrip("\n"), fence]


def _tone_label(tone: Any) -> str:
    """'⚖ balance' from a glyph or a name; anything else as given."""
    if tone in TONE_NAME_BY_GLYPH:
        return f"{tone} {TONE_NAME_BY_GLYPH[tone]}"
    if tone in TONE_GLYPH_BY_NAME:
        return f"{TONE_GLYPH_BY_NAME[tone]} {tone}"
    return _fmt(tone)


def machine_description() -> str:
    """Platform, CPU count, Python and torch versions, and the CUDA device if there is one."""
    parts = [platform.platform(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"CUDA device: {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no CUDA device")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def _statistics_section(summary: dict) -> list[str]:
    rows = []
    for key, label in STAT_ROWS:
        stats = summary.get(key)
        if isinstance(stats, dict):
            rows.append([label] + [_fmt(stats.get(s)) for s in ("mean", "std", "min", "max")])
    scalars = []
    if "goldilocks_residence" in summary:
        scalars.append(["Goldilocks residence", _percent(summary["goldilocks_residence"])])
    with_core = summary.get("val_ppl_with_core")
    without_core = summary.get("val_ppl_without_core")
    if with_core is not None:
        scalars.append(["validation perplexity, with core", _fmt(with_core)])
    if without_core is not None:
        scalars.append(["validation perplexity, without core", _fmt(without_core)])
    if _is_number(with_core) and _is_number(without_core) and without_core:
        change = with_core - without_core
        scalars.append(["change from the core", f"{change:+.4g} ({100 * change / without_core:+.2f} %)"])
    if not (rows or scalars):
        return []
    lines = ["## Key statistics", ""]
    if rows:
        lines += _table(["observable", "mean", "std", "min", "max"], rows) + [""]
    if scalars:
        lines += _table(["quantity", "value"], scalars) + [""]
    return lines


def _tones_section(tone_shares: Any) -> list[str]:
    if not isinstance(tone_shares, dict) or not tone_shares:
        return []
    items = [(k, v) for k, v in _ordered_tones(tone_shares) if _is_number(v)]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return []
    # Normalise so counts and shares read the same; shares already summing to 1 are unchanged.
    rows = [[_tone_label(k), f"{100.0 * v / total:.1f} %"] for k, v in items]
    return ["## Tone distribution", ""] + _table(["tone", "share"], rows) + [""]


def _drift_section(actions: Any) -> list[str]:
    if not isinstance(actions, dict) or not actions:
        return []
    ordered = [a for a in ACTIONS if a in actions] + [a for a in actions if a not in ACTIONS]
    rows = [[a, _fmt(actions[a])] for a in ordered]
    return ["## Drift actions", ""] + _table(["action", "count"], rows) + [""]


def _samples_section(samples: Any) -> list[str]:
    if not isinstance(samples, dict):
        return []
    lines = []
    blind = samples.get("blind")
    if isinstance(blind, str) and blind:
        lines += ["### Blind sample", ""] + _code_block(blind, "text") + [""]
    measured = samples.get("measured")
    if isinstance(measured, list) and measured:
        shown = [m for m in measured[:MEASURED_TOKENS] if isinstance(m, dict)]
        lines += ["### Measured sample", ""]
        if len(measured) > MEASURED_TOKENS:
            lines += [f"First {MEASURED_TOKENS} of {len(measured)} tokens.", ""]
        # repr() shows leading spaces and newlines of a token, which a table cell would hide.
        rows = [
            [
                _code_span(repr(m.get("token", ""))),
                _fmt(m.get("r"), 3),
                _fmt(m.get("u"), 3),
                _tone_label(m.get("tone")),
            ]
            for m in shown
        ]
        lines += _table(["token", "R", "U", "tone"], rows) + [""]
    return ["## Samples", ""] + lines if lines else []


def write_report(
    run_dir: str | os.PathLike,
    title: str,
    summary: dict,
    config_text: str | None = None,
    commands: list[str] | None = None,
) -> Path:
    """Draw the plots into ``run_dir/plots/`` and write ``run_dir/report.md``; returns its path.

    Plots and sections whose data is absent are left out. A run without ``metrics.jsonl``
    still gets a report (statistics, samples, config), noted as having no plots.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PhaseLMError(f"{run_dir}: no such run directory")
    summary = summary or {}
    has_metrics = (run_dir / "metrics.jsonl").is_file()
    records = read_metrics(run_dir) if has_metrics else []

    plots_dir = run_dir / "plots"
    tone_shares = summary.get("tones") if isinstance(summary.get("tones"), dict) else tone_counts(records)
    drawn = [
        ("R over steps", plot_order(records, plots_dir / PLOT_FILES["order"])),
        ("Loss over steps", plot_loss(records, plots_dir / PLOT_FILES["loss"])),
        ("Tone distribution", plot_tones(tone_shares, plots_dir / PLOT_FILES["tones"])),
    ]

    lines = [f"# {title}", "", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    if commands:
        lines += ["## Command", ""] + _code_block("\n".join(commands), "sh") + [""]
    lines += ["## Machine", "", machine_description(), ""]
    lines += _statistics_section(summary)
    lines += _tones_section(tone_shares)
    lines += _drift_section(summary.get("drift_actions"))

    plots = [(alt, p) for alt, p in drawn if p is not None]
    if plots:
        lines += ["## Plots", ""]
        for alt, p in plots:
            # Relative links keep the report readable after the run directory is moved.
            lines += [f"![{alt}]({p.relative_to(run_dir).as_posix()})", ""]
    elif not has_metrics:
        lines += ["## Plots", "", "No metrics.jsonl in this run directory: no plots.", ""]

    lines += _samples_section(summary.get("samples"))
    if config_text:
        lines += ["## Config", ""] + _code_block(config_text, "toml") + [""]

    report = run_dir / "report.md"
    report.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return report
