"""Run reports: plots of a training run's metrics, a Markdown summary and one HTML page.

A run directory holds ``metrics.jsonl`` (one JSON object per logged step; evaluation lines
carry ``"split"``) and the caller's final statistics. ``write_report`` turns both into
``plots/*.png``, ``report.md`` and ``report.html``; ``write_html_report`` writes the
self-contained page alone (protocol runs call it with their results) and
``rebuild_html_report`` (``phaselm report RUN_DIR``) rebuilds it from a run directory's files.
Every key is optional: a pretraining run has no R, U or tones, so each plot and section is
drawn only when its data is there.
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

# One colour per tone, hot (over-synchronised) to cold (unformed), shared by report.html and the
# live token view (`phaselm serve`), so a tone looks the same everywhere.
TONE_COLOURS = {
    "over-sync": "#d1495b",
    "balance": "#edae49",
    "goldilocks": "#3f9e4d",
    "unbound-joy": "#00798c",
    "silent-intimacy": "#6a4c93",
    "unformed": "#8d99ae",
}

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


def _fig_order(records: list[dict]):
    """The R-over-steps figure, or None when no train record has ``r_mean``."""
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
    return fig


def plot_order(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Mean order parameter R over training steps, shaded between R min and R max.

    Returns the written path, or None when no train record has ``r_mean``.
    """
    fig = _fig_order(records)
    return None if fig is None else _save(fig, path)


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
    fig = _fig_loss(records)
    return None if fig is None else _save(fig, path)


def _fig_loss(records: list[dict]):
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
    return fig


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
    fig = _fig_tones(tone_shares)
    return None if fig is None else _save(fig, path)


def _fig_tones(tone_shares: dict[str, float]):
    items = [(k, v) for k, v in _ordered_tones(tone_shares) if _is_number(v)]
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


def _statistics_tables(summary: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The key statistics as (header, rows) tables: R/U/R·U, then Goldilocks and perplexity."""
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
    tables = []
    if rows:
        tables.append((["observable", "mean", "std", "min", "max"], rows))
    if scalars:
        tables.append((["quantity", "value"], scalars))
    return tables


def _statistics_section(summary: dict) -> list[str]:
    tables = _statistics_tables(summary)
    if not tables:
        return []
    lines = ["## Key statistics", ""]
    for header, rows in tables:
        lines += _table(header, rows) + [""]
    return lines


def _tone_rows(tone_shares: Any) -> list[tuple[str, float]]:
    """(tone name, percent) in the canonical order; empty when there are no usable shares."""
    if not isinstance(tone_shares, dict) or not tone_shares:
        return []
    items = [(k, v) for k, v in _ordered_tones(tone_shares) if _is_number(v)]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return []
    # Normalise so counts and shares read the same; shares already summing to 1 are unchanged.
    return [(k, 100.0 * v / total) for k, v in items]


def _tones_section(tone_shares: Any) -> list[str]:
    rows = [[_tone_label(k), f"{share:.1f} %"] for k, share in _tone_rows(tone_shares)]
    if not rows:
        return []
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

    Also writes ``run_dir/report.html`` (``write_html_report``) and ``provenance.json``.
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
    # The same run as one self-contained page (plots embedded), beside report.md.
    write_html_report(run_dir, title, summary, config_text, commands)
    return report


# ---------------------------------------------------------------------------------------------
# report.html: one self-contained page (plots embedded as base64 PNG, no external references)
#
# ``write_html_report`` is called by ``write_report`` (every training run), by protocol runs,
# and by ``phaselm report RUN_DIR``, which rebuilds the page from the run directory's files:
# config.toml, metrics.jsonl, summary.json, protocol.toml, provenance.json and any results
# (RUN_DIR/results.json, RUN_DIR/*/results.json, RUN_DIR/evals/*.json).
#
# A result is a JSON object; every key is optional and the page shows what is there:
#   title | protocol | eval   its name (first one present)
#   command                   the command that produced it
#   tables                    [{"title", "header": [...], "rows": [[...]], "note"}] statistics tables
#   markdown                  Markdown tables (what `phaselm eval` writes), used when "tables" is absent
#   distributions             {metric: {condition: [values]}} per-condition distributions (box plots + table)
#   scatter                   {condition: [[R, U], ...]} points for the R–U scatter
#   files.png                 a plot of its own, embedded (NAME.png beside NAME.json is found too)
#   other scalar fields       (n, alpha, seeds, created, …) listed as details
# ---------------------------------------------------------------------------------------------

HTML_REPORT = "report.html"
PROVENANCE = "provenance.json"
PROTOCOL_FILE = "protocol.toml"
RESULT_GLOBS = ("results.json", "*/results.json", "evals/*.json")
VERSION_PACKAGES = ("phaselm", "torch", "transformers", "accelerate", "numpy", "scipy", "matplotlib")
SAMPLE_TOKENS_HTML = 400  # measured-sample tokens shown in report.html
MAX_DETAIL_CHARS = 300  # longer scalar fields of a result are cut in its details table

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1060px;
       padding: 0 1.2em 3em; color: #1d2330; background: #fff; }
h1 { margin: 1em 0 0.2em; } h2 { border-bottom: 1px solid #d8dde6; padding-bottom: 0.2em; margin-top: 2em; }
nav { font-size: 0.92em; margin: 0.6em 0 1em; } nav a { margin-right: 0.9em; color: #2a5db0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d8dde6; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f4f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 0.7em; overflow-x: auto; font-size: 0.86em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eef0f4; }
figcaption { font-size: 0.88em; color: #555; }
.note { color: #666; font-size: 0.9em; } .muted { color: #888; }
.tokens { white-space: pre-wrap; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em;
          line-height: 1.9; border: 1px solid #e1e4e8; padding: 0.6em; }
.tok { border-bottom: 3px solid transparent; border-radius: 2px; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; vertical-align: middle; margin-right: 0.3em; }
"""


def _esc(value: Any) -> str:
    """Text content: &, < and > escaped (quotes stay readable, e.g. in a TOML config)."""
    import html

    return html.escape(str(value), quote=False)


def _attr(value: Any) -> str:
    """An attribute value inside double quotes."""
    import html

    return html.escape(str(value), quote=True)


def _fig_png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    import base64

    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{_attr(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _html_table(header: list[str], rows: list[list[Any]], caption: str | None = None) -> str:
    def cell(tag: str, value: Any) -> str:
        number = _is_number(value) or (isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?( ?%)?", value) is not None)
        if isinstance(value, (list, tuple)) and all(_is_number(v) or v is None for v in value):
            text = "[" + ", ".join(_fmt(v) for v in value) + "]"  # e.g. a confidence interval
        else:
            text = _fmt(value) if not isinstance(value, str) else value
        cls = ' class="num"' if number and tag == "td" else ""
        return f"<{tag}{cls}>{_esc(text)}</{tag}>"

    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{_esc(caption)}</caption>")
    parts.append("<tr>" + "".join(cell("th", h) for h in header) + "</tr>")
    parts += ["<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows]
    parts.append("</table>")
    return "".join(parts)


def _md_cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]
    # Code spans read as plain text in a table cell.
    return [re.sub(r"^(`+) ?(.*?) ?\1$", r"\2", c) for c in cells]


def markdown_to_html(text: str) -> str:
    """The Markdown that `phaselm eval` writes (GFM tables, headings, paragraphs) as HTML."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(_md_cells(lines[i]))
                i += 1
            body = [r for r in block[1:] if not all(re.fullmatch(r":?-{1,}:?", c) for c in r if c)]
            out.append(_html_table(block[0], body))
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            out.append(f"<h4>{_esc(stripped.lstrip('#').strip())}</h4>")
        elif stripped:
            out.append(f"<p>{_esc(stripped)}</p>")
        i += 1
    return "\n".join(out)


# ----- provenance: software versions and git commit


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of phaselm and the libraries it computes with."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        versions["torch"] = torch.__version__  # carries the build tag (+cpu, +cu126)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return versions


def git_commit(where: str | os.PathLike | None = None) -> dict | None:
    """{"commit", "dirty"} of the git checkout holding ``where`` (default: phaselm's own source),
    or None when it is not in a checkout or git is not installed."""
    import subprocess

    where = str(where or Path(__file__).resolve().parent)

    def git(*args: str):
        try:
            done = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _provenance(title: str | None, commands: list[str] | None) -> dict:
    return {
        "title": title,
        "commands": list(commands or []),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "software": software_versions(),
        "git": git_commit(),
    }


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_optional_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = _read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PhaseLMError(f"{path}: not valid JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise PhaseLMError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ----- results of evals and protocols


def discover_results(run_dir: str | os.PathLike) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Result files of evals and protocols in ``run_dir`` ((path, result) pairs, by path) and a
    note for each file that could not be read (a half-written or foreign file must not stop a
    rebuild)."""
    run_dir = Path(run_dir)
    found, problems = [], []
    paths = sorted({p for pattern in RESULT_GLOBS for p in run_dir.glob(pattern) if p.is_file()})
    for path in paths:
        try:
            data = _read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"{path.relative_to(run_dir).as_posix()}: not readable as JSON ({err})")
            continue
        if isinstance(data, dict):
            found.append((path, data))
        else:
            problems.append(f"{path.relative_to(run_dir).as_posix()}: not a JSON object")
    return found, problems


def _result_title(result: dict, path: Path | None) -> str:
    for key in ("title", "protocol", "eval", "name"):
        if isinstance(result.get(key), str) and result[key].strip():
            return result[key]
    return path.stem if path is not None else "result"


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    return [float(v) for v in values if _is_number(v) and math.isfinite(v)]


def result_distributions(result: dict) -> dict[str, dict[str, list[float]]]:
    """{metric: {condition: values}} of a result: its "distributions", or the per-prompt values
    of a `phaselm eval intervention` result (unforced and each intervention)."""
    out: dict[str, dict[str, list[float]]] = {}
    given = result.get("distributions")
    if isinstance(given, dict):
        for metric, conditions in given.items():
            if isinstance(conditions, dict):
                cleaned = {str(c): _numbers(v) for c, v in conditions.items()}
                cleaned = {c: v for c, v in cleaned.items() if v}
                if cleaned:
                    out[str(metric)] = cleaned
        return out
    per_prompt, labelled = result.get("per_prompt"), result.get("results")
    if isinstance(per_prompt, dict) and isinstance(labelled, list):
        unforced = per_prompt.get("unforced") if isinstance(per_prompt.get("unforced"), dict) else {}
        forced = per_prompt.get("forced") if isinstance(per_prompt.get("forced"), list) else []
        for j, (entry, values) in enumerate(zip(labelled, forced)):
            label = entry.get("label", f"condition {j}") if isinstance(entry, dict) else f"condition {j}"
            if not isinstance(values, dict):
                continue
            for metric, series in values.items():
                bucket = out.setdefault(str(metric), {})
                if metric in unforced and "unforced" not in bucket and _numbers(unforced[metric]):
                    bucket["unforced"] = _numbers(unforced[metric])
                if _numbers(series):
                    bucket[str(label)] = _numbers(series)
        out = {m: c for m, c in out.items() if c}
    return out


def _fig_distributions(distributions: dict[str, dict[str, list[float]]], title: str):
    import numpy as np

    metrics = list(distributions)
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        conditions = distributions[metric]
        data = list(conditions.values())
        ax.boxplot(data, showfliers=False)
        for j, values in enumerate(data):
            jitter = np.random.default_rng(j).uniform(-0.15, 0.15, len(values))
            ax.scatter(np.full(len(values), j + 1) + jitter, values, s=9, alpha=0.55)
        ax.set_xticks(range(1, len(data) + 1), [f"{c}\n(n={len(v)})" for c, v in conditions.items()], fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig


def _distribution_rows(distributions: dict[str, dict[str, list[float]]]) -> list[list[Any]]:
    import numpy as np

    rows = []
    for metric, conditions in distributions.items():
        for condition, values in conditions.items():
            x = np.asarray(values, dtype=float)
            rows.append([metric, condition, len(x), float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None,
                         float(np.median(x)), float(x.min()), float(x.max())])
    return rows


def _scatter_points(values: Any) -> list[tuple[float, float]]:
    points = []
    for item in values if isinstance(values, (list, tuple)) else []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_number(v) for v in item):
            points.append((float(item[0]), float(item[1])))
        elif isinstance(item, dict) and _is_number(item.get("r")) and _is_number(item.get("u")):
            points.append((float(item["r"]), float(item["u"])))
    return points


def _fig_scatter(series: dict[str, list[tuple[float, float]]]):
    """R (x) against U (y) with the Goldilocks box (R 0.80–0.95, U 0.40–0.60) and the R·U = 0.40
    and 0.60 curves that bound the zone's third condition."""
    import numpy as np
    from matplotlib.patches import Rectangle

    from .observables import GOLDILOCKS

    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    (r0, r1), (u0, u1) = GOLDILOCKS.r, GOLDILOCKS.u
    ax.add_patch(Rectangle((r0, u0), r1 - r0, u1 - u0, facecolor=TONE_COLOURS["goldilocks"], alpha=0.15,
                           edgecolor=TONE_COLOURS["goldilocks"], linewidth=1.5, label="Goldilocks box (R, U)"))
    r = np.linspace(0.3, 1.0, 200)
    for level in GOLDILOCKS.ru:
        ax.plot(r, level / r, linestyle="--", color="grey", linewidth=0.8)
    ax.text(0.98, GOLDILOCKS.ru[0] / 0.98 - 0.04, "R·U = 0.4", fontsize=7, color="grey", ha="right")
    for label, points in series.items():
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=10 if len(points) > 200 else 16, alpha=0.6, label=f"{label} (n={len(points)})")
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("order parameter R")
    ax.set_ylabel("normalised entropy U")
    ax.set_title("R against U, with the Goldilocks zone")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


# ----- the page


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _pre(text: str) -> str:
    return f"<pre>{_esc(text.rstrip())}</pre>"


def _tone_span(reading: dict) -> str:
    tone = reading.get("tone")
    name = TONE_NAME_BY_GLYPH.get(tone, tone)
    colour = TONE_COLOURS.get(name)
    style = f' style="background:{colour}40;border-bottom-color:{colour}"' if colour else ""
    tip = f"R {_fmt(reading.get('r'), 3)} · U {_fmt(reading.get('u'), 3)} · R·U {_fmt(reading.get('ru'), 3)} · {_tone_label(tone)}"
    return f'<span class="tok"{style} title="{_attr(tip)}">{_esc(reading.get("token", ""))}</span>'


def _legend() -> str:
    items = [f'<span class="swatch" style="background:{TONE_COLOURS[t.name]}"></span>{_esc(t.glyph)} {_esc(t.name)}'
             f' <span class="muted">(R ≥ {max(t.low, 0.0):.2f})</span>' for t in TONES]
    return '<p class="note">' + " &nbsp; ".join(items) + "</p>"


def _summary_scalars(summary: dict) -> list[list[Any]]:
    skip = {"goldilocks_residence", "val_ppl_with_core", "val_ppl_without_core"}
    return [[k, v] for k, v in summary.items() if k not in skip and (isinstance(v, str) or _is_number(v)) and len(str(v)) <= MAX_DETAIL_CHARS]


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def _result_details(result: dict) -> list[list[Any]]:
    """The scalar fields of a result (and the scalar entries of its flat sub-objects), for a
    details table; long text is cut, a protocol's full text is left to the Protocol section."""
    rows = []
    for key, value in result.items():
        if key in ("markdown", "title", "command", "machine"):
            continue
        if isinstance(value, bool) or _is_number(value) or isinstance(value, str):
            rows.append([key, _cut(str(value))])
        elif isinstance(value, dict) and value:
            flat = [(k, v) for k, v in value.items() if k != "text" and (v is None or isinstance(v, (str, int, float, bool)))]
            if flat:
                rows.append([key, _cut(", ".join(f"{k}={_cut(str(v), 80)}" for k, v in flat))])
    return rows


def _result_png(result: dict, path: Path | None) -> Path | None:
    candidates = []
    if path is not None:
        candidates.append(path.with_suffix(".png"))
    files = result.get("files")
    if isinstance(files, dict) and isinstance(files.get("png"), str):
        given = Path(files["png"])
        candidates.append(given)
        if path is not None:
            candidates.append(path.parent / given.name)
    return next((c for c in candidates if c.is_file() and c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"), None)


def _results_html(results: list[tuple[Path | None, dict]], problems: list[str], run_dir: Path) -> tuple[str, str, dict]:
    """(results section body, distributions section body, extra scatter series)."""
    parts, dist_parts, scatter = [], [], {}
    for index, (path, result) in enumerate(results):
        title = _result_title(result, path)
        anchor = f"result-{index + 1}"
        where = ""
        if path is not None and path.is_file():
            try:
                where = f' <span class="muted">({_esc(path.relative_to(run_dir).as_posix())})</span>'
            except ValueError:
                where = f' <span class="muted">({_esc(path)})</span>'
        block = [f'<h3 id="{anchor}">{_esc(title)}{where}</h3>']
        if isinstance(result.get("command"), str) and result["command"]:
            block.append(_pre(result["command"]))
        details = _result_details(result)
        if details:
            block.append(_html_table(["field", "value"], details))
        tables = result.get("tables")
        if isinstance(tables, list) and tables:
            for table in tables:
                if not isinstance(table, dict) or not isinstance(table.get("header"), list):
                    continue
                if table.get("title"):
                    block.append(f"<h4>{_esc(table['title'])}</h4>")
                block.append(_html_table([str(h) for h in table["header"]], [list(r) for r in table.get("rows", []) if isinstance(r, (list, tuple))]))
                if table.get("note"):
                    block.append(f'<p class="note">{_esc(table["note"])}</p>')
        elif isinstance(result.get("markdown"), str) and result["markdown"].strip():
            block.append(markdown_to_html(result["markdown"]))
        png = _result_png(result, path)
        if png is not None:
            block.append(_img(png.read_bytes(), f"{title} plot", f"{title}: {png.name}"))
        parts.append("\n".join(block))

        distributions = result_distributions(result)
        if distributions:
            fig = _fig_distributions(distributions, title)
            dist_parts.append(f"<h3>{_esc(title)}</h3>")
            dist_parts.append(_img(_fig_png(fig), f"{title}: per-condition distributions"))
            dist_parts.append(_html_table(["metric", "condition", "n", "mean", "std", "median", "min", "max"], _distribution_rows(distributions)))
        points = result.get("scatter")
        if isinstance(points, dict):
            for condition, values in points.items():
                if _scatter_points(values):
                    scatter[f"{title}: {condition}"] = _scatter_points(values)
    if problems:
        parts.append('<p class="note">Not included: ' + "; ".join(_esc(p) for p in problems) + "</p>")
    return "\n".join(parts), "\n".join(dist_parts), scatter


def _software_html(recorded: dict | None, rebuilt: bool) -> str:
    current = {"software": software_versions(), "git": git_commit(), "machine": machine_description()}
    base = recorded if recorded and isinstance(recorded.get("software"), dict) else current
    software = base["software"]
    rows = [[name, software[name]] for name in ("python", *VERSION_PACKAGES, "platform") if name in software]
    rows += [[k, v] for k, v in software.items() if k not in ("python", *VERSION_PACKAGES, "platform")]
    git = base.get("git")
    if isinstance(git, dict) and git.get("commit"):
        dirty = " (with uncommitted changes)" if git.get("dirty") else ""
        rows.append(["git commit", f"{git['commit']}{dirty}"])
    else:
        rows.append(["git commit", "not available (phaselm is not running from a git checkout)"])
    if base.get("machine"):
        rows.append(["machine", base["machine"]])
    when = base.get("written")
    intro = (f'<p class="note">Recorded when the run wrote its report ({_esc(when)}).</p>' if recorded and when
             else '<p class="note">Recorded when this report was written.</p>')
    body = intro + _html_table(["software", "version"], rows)
    if rebuilt and recorded and isinstance(recorded.get("software"), dict):
        changed = [[k, recorded["software"].get(k, "—"), v] for k, v in current["software"].items() if recorded["software"].get(k) != v]
        now_git = (current["git"] or {}).get("commit")
        if now_git != (recorded.get("git") or {}).get("commit"):
            changed.append(["git commit", (recorded.get("git") or {}).get("commit") or "—", now_git or "—"])
        if changed:
            body += '<p class="note">This page was rebuilt with other versions:</p>' + _html_table(["software", "run", "rebuild"], changed)
    return body


def _default_title(run_dir: Path, summary: dict, provenance: dict | None) -> str:
    if provenance and isinstance(provenance.get("title"), str) and provenance["title"]:
        return provenance["title"]
    if isinstance(summary.get("arch"), str):
        return f"PhaseLM language model ({summary['arch']})"
    if "graft_layer" in summary:
        return "Phase-Mamba run"
    return f"PhaseLM run {run_dir.resolve().name}"


def write_html_report(
    run_dir: str | os.PathLike,
    title: str | None = None,
    summary: dict | None = None,
    config_text: str | None = None,
    commands: list[str] | None = None,
    *,
    protocol_text: str | None = None,
    results: list[dict] | None = None,
    distributions: dict[str, dict[str, list[float]]] | None = None,
    scatter: dict[str, list] | None = None,
    rebuild: bool = False,
    out: str | os.PathLike | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (or ``out``): one self-contained page; returns its path.

    What is not passed is read from the run directory: ``summary.json``, ``config.toml``,
    ``protocol.toml``, ``metrics.jsonl`` and the results found by ``discover_results``
    (passing ``results`` replaces discovery). ``distributions`` ({metric: {condition:
    values}}) and ``scatter`` ({label: [[R, U], …]}) add per-condition plots of the caller.

    The software versions and git commit are recorded in ``provenance.json`` when a run writes
    its report (``rebuild=False``, also the title and commands); a rebuild (``phaselm report``)
    shows the recorded ones, and lists what differs now.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PhaseLMError(f"{run_dir}: no such run directory")
    provenance_path = run_dir / PROVENANCE
    if rebuild:
        try:
            provenance = _read_optional_json(provenance_path)
        except PhaseLMError:
            provenance = None
    else:
        provenance = _provenance(title, commands)
        tmp = provenance_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, provenance_path)
    if summary is None:
        summary = _read_optional_json(run_dir / "summary.json") or {}
    if config_text is None and (run_dir / "config.toml").is_file():
        config_text = (run_dir / "config.toml").read_text(encoding="utf-8")
    if protocol_text is None and (run_dir / PROTOCOL_FILE).is_file():
        protocol_text = (run_dir / PROTOCOL_FILE).read_text(encoding="utf-8")
    if commands is None and provenance and isinstance(provenance.get("commands"), list):
        commands = [str(c) for c in provenance["commands"]]
    title = title or _default_title(run_dir, summary, provenance)
    if results is None:
        found, problems = discover_results(run_dir)
    else:
        given = [r for r in results if isinstance(r, dict)]
        # A single result given by a protocol run is the one it saves as results.json, with its
        # own plot beside it as results.png.
        beside = run_dir / "results.json" if len(given) == 1 else None
        found, problems = [(beside, r) for r in given], []
    records = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []

    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)

    # Run
    run_body = [f"<p>Run directory: <code>{_esc(run_dir.resolve())}</code></p>"]
    if commands:
        run_body.append("<p>Command:</p>" + _pre("\n".join(commands)))
    run_body.append(f"<p>Machine: {_esc(machine_description() if not (provenance and provenance.get('machine')) else provenance['machine'])}</p>")
    sections.append(("run", "Run", "\n".join(run_body)))

    # Key statistics
    stat_parts = [_html_table(h, r) for h, r in _statistics_tables(summary)]
    scalars = _summary_scalars(summary)
    if scalars:
        stat_parts.append(_html_table(["summary", "value"], scalars))
    if stat_parts:
        sections.append(("statistics", "Key statistics", "\n".join(stat_parts)))

    # Results of evals / protocols (before the plots are drawn: they may add scatter series)
    results_body, dist_body, result_scatter = _results_html(found, problems, run_dir)
    if distributions:
        cleaned = {m: {c: _numbers(v) for c, v in conds.items() if _numbers(v)} for m, conds in distributions.items() if isinstance(conds, dict)}
        cleaned = {m: c for m, c in cleaned.items() if c}
        if cleaned:
            dist_body = (_img(_fig_png(_fig_distributions(cleaned, title)), "per-condition distributions")
                         + _html_table(["metric", "condition", "n", "mean", "std", "median", "min", "max"], _distribution_rows(cleaned))
                         + "\n" + dist_body)

    # Plots
    tone_shares = summary.get("tones") if isinstance(summary.get("tones"), dict) else tone_counts(records)
    series: dict[str, list[tuple[float, float]]] = {}
    samples = summary.get("samples") if isinstance(summary.get("samples"), dict) else {}
    measured = samples.get("measured") if isinstance(samples.get("measured"), list) else []
    if _scatter_points(measured):
        series["measured sample, per token"] = _scatter_points(measured)
    steps = [(r["r_mean"], r["u_mean"]) for r in records
             if _is_train(r) and _is_number(r.get("r_mean")) and _is_number(r.get("u_mean"))]
    if steps:
        series["training steps, batch means"] = steps
    series.update(result_scatter)
    for label, values in (scatter or {}).items():
        if _scatter_points(values):
            series[str(label)] = _scatter_points(values)
    figures = [
        ("Loss over steps", _fig_loss(records)),
        ("R over steps", _fig_order(records)),
        ("Tone distribution", _fig_tones(tone_shares) if isinstance(tone_shares, dict) else None),
        ("R–U scatter with the Goldilocks box", _fig_scatter(series)),
    ]
    drawn = [_img(_fig_png(fig), alt, alt) for alt, fig in figures if fig is not None]
    if drawn:
        plots_body = "\n".join(drawn)
    elif not records:
        plots_body = '<p class="note">No metrics.jsonl in this run directory: no plots over steps.</p>'
    else:
        plots_body = '<p class="note">The metrics hold nothing to plot.</p>'
    sections.append(("plots", "Plots", plots_body))

    # Tones and drift
    tone_rows = _tone_rows(tone_shares)
    if tone_rows:
        rows = [[f"{TONE_GLYPH_BY_NAME.get(k, '')} {k}".strip(), f"{share:.1f} %"] for k, share in tone_rows]
        sections.append(("tones", "Tone distribution", _html_table(["tone", "share"], rows) + _legend()))
    actions = summary.get("drift_actions")
    if isinstance(actions, dict) and actions:
        ordered = [a for a in ACTIONS if a in actions] + [a for a in actions if a not in ACTIONS]
        sections.append(("drift", "Drift actions", _html_table(["action", "count"], [[a, actions[a]] for a in ordered])))

    if results_body:
        sections.append(("results", "Protocol and evaluation results", results_body))
    if dist_body:
        sections.append(("distributions", "Per-condition distributions", dist_body))

    # Samples
    sample_parts = []
    if isinstance(samples.get("blind"), str) and samples["blind"]:
        prompt = samples.get("prompt") if isinstance(samples.get("prompt"), str) else ""
        sample_parts.append("<h3>Blind sample</h3>" + _pre(prompt + samples["blind"]))
    shown = [m for m in measured[:SAMPLE_TOKENS_HTML] if isinstance(m, dict)]
    if shown:
        cut = f' <span class="muted">(first {SAMPLE_TOKENS_HTML} of {len(measured)} tokens)</span>' if len(measured) > SAMPLE_TOKENS_HTML else ""
        sample_parts.append(f"<h3>Measured sample{cut}</h3>"
                            '<p class="note">Each token is coloured by its tone; hover for R, U and R·U.</p>'
                            '<div class="tokens">' + "".join(_tone_span(m) for m in shown) + "</div>" + _legend())
    if sample_parts:
        sections.append(("samples", "Samples", "\n".join(sample_parts)))

    # Config, protocol, software
    sections.append(("config", "Config", _pre(config_text) if config_text else '<p class="note">No config.toml in this run directory.</p>'))
    if protocol_text:
        import hashlib

        digest = hashlib.sha256(protocol_text.encode("utf-8")).hexdigest()
        sections.append(("protocol", "Protocol", f'<p class="note">SHA-256 of the protocol text: <code>{digest}</code></p>' + _pre(protocol_text)))
    sections.append(("software", "Software", _software_html(provenance, rebuild)))

    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "<nav>" + "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in sections) + "</nav>"
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{_esc(title)}</h1><p class=\"note\">Report written {written}{' (rebuilt from the run directory)' if rebuild else ''}.</p></header>",
        nav,
        *(_section(a, t, b) for a, t, b in sections),
        "</body>",
        "</html>",
    ])
    target = Path(out) if out is not None else run_dir / HTML_REPORT
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def rebuild_html_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``phaselm report RUN_DIR``: rebuild report.html from the files of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise PhaseLMError(f"{run_dir} does not exist; pass a run directory (from train, train-lm, demo or a protocol run)")
    if not run_dir.is_dir():
        raise PhaseLMError(f"{run_dir} is not a directory; pass a run directory")
    markers = ("config.toml", "metrics.jsonl", "summary.json", PROTOCOL_FILE, PROVENANCE)
    if not any((run_dir / m).is_file() for m in markers) and not discover_results(run_dir)[0]:
        raise PhaseLMError(
            f"{run_dir} is not a run directory: it holds none of {', '.join(markers)} and no results.json or evals/*.json"
        )
    return write_html_report(run_dir, rebuild=True, out=out)
