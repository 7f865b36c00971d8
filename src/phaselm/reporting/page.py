"""report.html: the self-contained page, written for a run or rebuilt from its files."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import PhaseLMError
from ..observables import ACTIONS, TONES
from .common import (
    HTML_REPORT,
    MAX_DETAIL_CHARS,
    PROTOCOL_FILE,
    PROVENANCE,
    SAMPLE_TOKENS_HTML,
    TONE_COLOURS,
    TONE_GLYPH_BY_NAME,
    TONE_NAME_BY_GLYPH,
    VERSION_PACKAGES,
    format_value,
    is_number,
    tone_label,
)
from .html_common import (
    PAGE_CSS,
    escape_attribute,
    escape_html,
    figure_html,
    figure_png,
    html_table,
    markdown_to_html,
)
from .markdown import statistics_tables, tone_rows, write_markdown_report
from .plots import loss_figure, order_figure, tone_counts, tones_figure
from .provenance import git_commit, machine_description, provenance_record, read_optional_json, software_versions
from .reading import is_train_record, read_metrics
from .results import (
    discover_results,
    distribution_rows,
    distributions_figure,
    finite_numbers,
    result_distributions,
    result_title,
    scatter_figure,
    scatter_points,
)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape_html(title)}</h2>\n{body}\n</section>'


def _pre(text: str) -> str:
    return f"<pre>{escape_html(text.rstrip())}</pre>"


def _tone_span(reading: dict) -> str:
    tone = reading.get("tone")
    name = TONE_NAME_BY_GLYPH.get(tone, tone)
    colour = TONE_COLOURS.get(name)
    style = f' style="background:{colour}40;border-bottom-color:{colour}"' if colour else ""
    r, u, ru = (format_value(reading.get(key), 3) for key in ("r", "u", "ru"))
    tip = f"R {r} · U {u} · R·U {ru} · {tone_label(tone)}"
    return f'<span class="tok"{style} title="{escape_attribute(tip)}">{escape_html(reading.get("token", ""))}</span>'


def _legend() -> str:
    items = [
        f'<span class="swatch" style="background:{TONE_COLOURS[t.name]}"></span>'
        f"{escape_html(t.glyph)} {escape_html(t.name)}"
        f' <span class="muted">(R ≥ {max(t.low, 0.0):.2f})</span>'
        for t in TONES
    ]
    return '<p class="note">' + " &nbsp; ".join(items) + "</p>"


def _summary_scalars(summary: dict) -> list[list[Any]]:
    skip = {"goldilocks_residence", "val_ppl_with_core", "val_ppl_without_core"}
    return [
        [k, v]
        for k, v in summary.items()
        if k not in skip and (isinstance(v, str) or is_number(v)) and len(str(v)) <= MAX_DETAIL_CHARS
    ]


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def _result_details(result: dict) -> list[list[Any]]:
    """The scalar fields of a result (and the scalar entries of its flat sub-objects), for a
    details table; long text is cut, a protocol's full text is left to the Protocol section."""
    rows = []
    for key, value in result.items():
        if key in ("markdown", "title", "command", "machine"):
            continue
        if isinstance(value, bool) or is_number(value) or isinstance(value, str):
            rows.append([key, _cut(str(value))])
        elif isinstance(value, dict) and value:
            flat = [
                (k, v)
                for k, v in value.items()
                if k != "text" and (v is None or isinstance(v, (str, int, float, bool)))
            ]
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
        title = result_title(result, path)
        anchor = f"result-{index + 1}"
        where = ""
        if path is not None and path.is_file():
            try:
                where = f' <span class="muted">({escape_html(path.relative_to(run_dir).as_posix())})</span>'
            except ValueError:
                where = f' <span class="muted">({escape_html(path)})</span>'
        block = [f'<h3 id="{anchor}">{escape_html(title)}{where}</h3>']
        if isinstance(result.get("command"), str) and result["command"]:
            block.append(_pre(result["command"]))
        details = _result_details(result)
        if details:
            block.append(html_table(["field", "value"], details))
        tables = result.get("tables")
        if isinstance(tables, list) and tables:
            for table in tables:
                if not isinstance(table, dict) or not isinstance(table.get("header"), list):
                    continue
                if table.get("title"):
                    block.append(f"<h4>{escape_html(table['title'])}</h4>")
                block.append(
                    html_table(
                        [str(h) for h in table["header"]],
                        [list(r) for r in table.get("rows", []) if isinstance(r, (list, tuple))],
                    )
                )
                if table.get("note"):
                    block.append(f'<p class="note">{escape_html(table["note"])}</p>')
        elif isinstance(result.get("markdown"), str) and result["markdown"].strip():
            block.append(markdown_to_html(result["markdown"]))
        png = _result_png(result, path)
        if png is not None:
            block.append(figure_html(png.read_bytes(), f"{title} plot", f"{title}: {png.name}"))
        parts.append("\n".join(block))

        distributions = result_distributions(result)
        if distributions:
            fig = distributions_figure(distributions, title)
            dist_parts.append(f"<h3>{escape_html(title)}</h3>")
            dist_parts.append(figure_html(figure_png(fig), f"{title}: per-condition distributions"))
            dist_parts.append(
                html_table(
                    ["metric", "condition", "n", "mean", "std", "median", "min", "max"],
                    distribution_rows(distributions),
                )
            )
        points = result.get("scatter")
        if isinstance(points, dict):
            for condition, values in points.items():
                if scatter_points(values):
                    scatter[f"{title}: {condition}"] = scatter_points(values)
    if problems:
        parts.append('<p class="note">Not included: ' + "; ".join(escape_html(p) for p in problems) + "</p>")
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
    intro = (f'<p class="note">Recorded when the run wrote its report ({escape_html(when)}).</p>' if recorded and when
             else '<p class="note">Recorded when this report was written.</p>')
    body = intro + html_table(["software", "version"], rows)
    if rebuilt and recorded and isinstance(recorded.get("software"), dict):
        changed = [
            [k, recorded["software"].get(k, "—"), v]
            for k, v in current["software"].items()
            if recorded["software"].get(k) != v
        ]
        now_git = (current["git"] or {}).get("commit")
        if now_git != (recorded.get("git") or {}).get("commit"):
            changed.append(["git commit", (recorded.get("git") or {}).get("commit") or "—", now_git or "—"])
        if changed:
            body += '<p class="note">This page was rebuilt with other versions:</p>' + html_table(
                ["software", "run", "rebuild"], changed
            )
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
            provenance = read_optional_json(provenance_path)
        except PhaseLMError:
            provenance = None
    else:
        provenance = provenance_record(title, commands)
        tmp = provenance_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, provenance_path)
    if summary is None:
        summary = read_optional_json(run_dir / "summary.json") or {}
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
    run_body = [f"<p>Run directory: <code>{escape_html(run_dir.resolve())}</code></p>"]
    if commands:
        run_body.append("<p>Command:</p>" + _pre("\n".join(commands)))
    machine = provenance["machine"] if provenance and provenance.get("machine") else machine_description()
    run_body.append(f"<p>Machine: {escape_html(machine)}</p>")
    sections.append(("run", "Run", "\n".join(run_body)))

    # Key statistics
    stat_parts = [html_table(h, r) for h, r in statistics_tables(summary)]
    scalars = _summary_scalars(summary)
    if scalars:
        stat_parts.append(html_table(["summary", "value"], scalars))
    if stat_parts:
        sections.append(("statistics", "Key statistics", "\n".join(stat_parts)))

    # Results of evals / protocols (before the plots are drawn: they may add scatter series)
    results_body, dist_body, result_scatter = _results_html(found, problems, run_dir)
    if distributions:
        cleaned = {
            m: {c: finite_numbers(v) for c, v in conds.items() if finite_numbers(v)}
            for m, conds in distributions.items()
            if isinstance(conds, dict)
        }
        cleaned = {m: c for m, c in cleaned.items() if c}
        if cleaned:
            dist_body = (
                figure_html(figure_png(distributions_figure(cleaned, title)), "per-condition distributions")
                + html_table(
                    ["metric", "condition", "n", "mean", "std", "median", "min", "max"], distribution_rows(cleaned)
                )
                + "\n"
                + dist_body
            )

    # Plots
    tone_shares = summary.get("tones") if isinstance(summary.get("tones"), dict) else tone_counts(records)
    series: dict[str, list[tuple[float, float]]] = {}
    samples = summary.get("samples") if isinstance(summary.get("samples"), dict) else {}
    measured = samples.get("measured") if isinstance(samples.get("measured"), list) else []
    if scatter_points(measured):
        series["measured sample, per token"] = scatter_points(measured)
    steps = [(r["r_mean"], r["u_mean"]) for r in records
             if is_train_record(r) and is_number(r.get("r_mean")) and is_number(r.get("u_mean"))]
    if steps:
        series["training steps, batch means"] = steps
    series.update(result_scatter)
    for label, values in (scatter or {}).items():
        if scatter_points(values):
            series[str(label)] = scatter_points(values)
    figures = [
        ("Loss over steps", loss_figure(records)),
        ("R over steps", order_figure(records)),
        ("Tone distribution", tones_figure(tone_shares) if isinstance(tone_shares, dict) else None),
        ("R–U scatter with the Goldilocks box", scatter_figure(series)),
    ]
    drawn = [figure_html(figure_png(fig), alt, alt) for alt, fig in figures if fig is not None]
    if drawn:
        plots_body = "\n".join(drawn)
    elif not records:
        plots_body = '<p class="note">No metrics.jsonl in this run directory: no plots over steps.</p>'
    else:
        plots_body = '<p class="note">The metrics hold nothing to plot.</p>'
    sections.append(("plots", "Plots", plots_body))

    # Tones and drift
    shares = tone_rows(tone_shares)
    if shares:
        rows = [[f"{TONE_GLYPH_BY_NAME.get(k, '')} {k}".strip(), f"{share:.1f} %"] for k, share in shares]
        sections.append(("tones", "Tone distribution", html_table(["tone", "share"], rows) + _legend()))
    actions = summary.get("drift_actions")
    if isinstance(actions, dict) and actions:
        ordered = [a for a in ACTIONS if a in actions] + [a for a in actions if a not in ACTIONS]
        sections.append(("drift", "Drift actions", html_table(["action", "count"], [[a, actions[a]] for a in ordered])))

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
        cut = (
            f' <span class="muted">(first {SAMPLE_TOKENS_HTML} of {len(measured)} tokens)</span>'
            if len(measured) > SAMPLE_TOKENS_HTML
            else ""
        )
        sample_parts.append(f"<h3>Measured sample{cut}</h3>"
                            '<p class="note">Each token is coloured by its tone; hover for R, U and R·U.</p>'
                            '<div class="tokens">' + "".join(_tone_span(m) for m in shown) + "</div>" + _legend())
    if sample_parts:
        sections.append(("samples", "Samples", "\n".join(sample_parts)))

    # Config, protocol, software
    sections.append(
        (
            "config",
            "Config",
            _pre(config_text) if config_text else '<p class="note">No config.toml in this run directory.</p>',
        )
    )
    if protocol_text:
        import hashlib

        digest = hashlib.sha256(protocol_text.encode("utf-8")).hexdigest()
        sections.append(
            (
                "protocol",
                "Protocol",
                f'<p class="note">SHA-256 of the protocol text: <code>{digest}</code></p>' + _pre(protocol_text),
            )
        )
    sections.append(("software", "Software", _software_html(provenance, rebuild)))

    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "<nav>" + "".join(f'<a href="#{a}">{escape_html(t)}</a>' for a, t, _ in sections) + "</nav>"
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape_html(title)}</title>",
            f"<style>{PAGE_CSS}</style>",
            "</head>",
            "<body>",
            f'<header><h1>{escape_html(title)}</h1><p class="note">Report written {written}'
            f'{" (rebuilt from the run directory)" if rebuild else ""}.</p></header>',
            nav,
            *(_section(a, t, b) for a, t, b in sections),
            "</body>",
            "</html>",
        ]
    )
    target = Path(out) if out is not None else run_dir / HTML_REPORT
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def rebuild_html_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``phaselm report RUN_DIR``: rebuild report.html from the files of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise PhaseLMError(
            f"{run_dir} does not exist; pass a run directory (from train, train-lm, demo or a protocol run)"
        )
    if not run_dir.is_dir():
        raise PhaseLMError(f"{run_dir} is not a directory; pass a run directory")
    markers = ("config.toml", "metrics.jsonl", "summary.json", PROTOCOL_FILE, PROVENANCE)
    if not any((run_dir / m).is_file() for m in markers) and not discover_results(run_dir)[0]:
        raise PhaseLMError(
            f"{run_dir} is not a run directory: it holds none of {', '.join(markers)} "
            "and no results.json or evals/*.json"
        )
    return write_html_report(run_dir, rebuild=True, out=out)


def write_report(
    run_dir: str | os.PathLike,
    title: str,
    summary: dict,
    config_text: str | None = None,
    commands: list[str] | None = None,
) -> Path:
    """Write a run's report: plots, ``report.md``, ``report.html`` and ``provenance.json``.

    Returns the path of ``report.md``. Plots and sections whose data is absent are left out; a
    run without ``metrics.jsonl`` still gets a report (statistics, samples, config).
    """
    report = write_markdown_report(run_dir, title, summary, config_text, commands)
    # The same run as one self-contained page (plots embedded), beside report.md.
    write_html_report(run_dir, title, summary, config_text, commands)
    return report
