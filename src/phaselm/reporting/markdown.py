"""report.md: the Markdown summary of a run, with its plots."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import PhaseLMError
from ..observables import ACTIONS
from .common import MEASURED_TOKENS, PLOT_FILES, STAT_ROWS, format_value, is_number, tone_label
from .plots import ordered_tones, plot_loss, plot_order, plot_tones, tone_counts
from .provenance import machine_description
from .reading import read_metrics


def _percent(value: Any) -> str:
    return f"{100.0 * value:.1f} %" if is_number(value) else format_value(value)


def _cell(text: Any) -> str:
    # A '|' would end the table cell, even inside a code span (GFM); a newline ends the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A GFM table as lines; a '|' or newline inside a cell is escaped."""
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


def statistics_tables(summary: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The key statistics as (header, rows) tables: R/U/R·U, then Goldilocks and perplexity."""
    rows = []
    for key, label in STAT_ROWS:
        stats = summary.get(key)
        if isinstance(stats, dict):
            rows.append([label] + [format_value(stats.get(s)) for s in ("mean", "std", "min", "max")])
    scalars = []
    if "goldilocks_residence" in summary:
        scalars.append(["Goldilocks residence", _percent(summary["goldilocks_residence"])])
    with_core = summary.get("val_ppl_with_core")
    without_core = summary.get("val_ppl_without_core")
    if with_core is not None:
        scalars.append(["validation perplexity, with core", format_value(with_core)])
    if without_core is not None:
        scalars.append(["validation perplexity, without core", format_value(without_core)])
    if is_number(with_core) and is_number(without_core) and without_core:
        change = with_core - without_core
        scalars.append(["change from the core", f"{change:+.4g} ({100 * change / without_core:+.2f} %)"])
    tables = []
    if rows:
        tables.append((["observable", "mean", "std", "min", "max"], rows))
    if scalars:
        tables.append((["quantity", "value"], scalars))
    return tables


def _statistics_section(summary: dict) -> list[str]:
    tables = statistics_tables(summary)
    if not tables:
        return []
    lines = ["## Key statistics", ""]
    for header, rows in tables:
        lines += markdown_table(header, rows) + [""]
    return lines


def tone_rows(tone_shares: Any) -> list[tuple[str, float]]:
    """(tone name, percent) in the canonical order; empty when there are no usable shares."""
    if not isinstance(tone_shares, dict) or not tone_shares:
        return []
    items = [(k, v) for k, v in ordered_tones(tone_shares) if is_number(v)]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return []
    # Normalise so counts and shares read the same; shares already summing to 1 are unchanged.
    return [(k, 100.0 * v / total) for k, v in items]


def _tones_section(tone_shares: Any) -> list[str]:
    rows = [[tone_label(k), f"{share:.1f} %"] for k, share in tone_rows(tone_shares)]
    if not rows:
        return []
    return ["## Tone distribution", ""] + markdown_table(["tone", "share"], rows) + [""]


def _drift_section(actions: Any) -> list[str]:
    if not isinstance(actions, dict) or not actions:
        return []
    ordered = [a for a in ACTIONS if a in actions] + [a for a in actions if a not in ACTIONS]
    rows = [[a, format_value(actions[a])] for a in ordered]
    return ["## Drift actions", ""] + markdown_table(["action", "count"], rows) + [""]


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
                format_value(m.get("r"), 3),
                format_value(m.get("u"), 3),
                tone_label(m.get("tone")),
            ]
            for m in shown
        ]
        lines += markdown_table(["token", "R", "U", "tone"], rows) + [""]
    return ["## Samples", ""] + lines if lines else []


def write_markdown_report(
    run_dir: str | os.PathLike,
    title: str,
    summary: dict,
    config_text: str | None = None,
    commands: list[str] | None = None,
) -> Path:
    """Draw the plots into ``run_dir/plots/`` and write ``run_dir/report.md``; returns its path.

    Plots and sections whose data is absent are left out. A run without ``metrics.jsonl``
    still gets a report (statistics, samples, config), noted as having no plots. The whole
    report (this and report.html) is ``phaselm.reporting.write_report``.
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

