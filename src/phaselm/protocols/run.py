"""The one runner: every design of :mod:`phaselm.protocols.designs` (the TOML protocols and the
evals that ``phaselm eval …`` / ``phaselm diagnose`` build from their flags) runs through
:func:`run_protocol`, which checks the out directory, opens the subject and writes the outputs
(results.json/.md/.png and report.html for a result design; an eval design's own files)."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import eval_designs as ev
from .designs import Design, design_of, read_protocol
from .spec import (
    PROTOCOL_COPY,
    RESULTS,
    TESTS,
    WINDOW_KINDS,
    Protocol,
    check_out_dir,
    default_out_dir,
    resolve_path,
    sha256_of,
)
from .subject import Subject, load_subject


class _Bar:
    """A progress bar on stderr that appears once the checks are done (``bar(0)`` starts it),
    so a bad input prints its one-line error and nothing else."""

    def __init__(self, enabled: bool, description: str, total: int, status: str):
        self.enabled, self.description, self.total, self.status = enabled, description, total, status
        self.progress = self.task = None

    def __call__(self, steps: int = 1) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from ..evals.outputs import eval_progress

            self.progress = eval_progress(True)
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, status=self.status)
        self.progress.update(self.task, advance=steps)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _jsonable(value):
    from ..evals.outputs import jsonable as clean

    return clean(value)


def run_protocol(
    protocol: Protocol | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    subject: Subject | None = None,
    reference: Subject | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run a protocol (a file, or a :class:`Protocol` built from an eval's flags) and write its
    outputs into ``out_dir`` (default runs/protocols/NAME; an eval's default is RUN_DIR/evals).

    Everything that can be checked is checked before the slow part and before anything is
    written: the file, the out directory (a different protocol's results, or an earlier eval's
    files, are never replaced), the model, the conditions against the model. ``subject`` /
    ``reference`` replace loading the protocol's model / reference (tests, notebooks).
    """
    from ..reporting import machine_description

    if not isinstance(protocol, Protocol):
        protocol = read_protocol(protocol)
    design = design_of(protocol.kind)
    if not design.writes_results:
        return _run_eval_design(design, protocol, out_dir, subject, progress, command)
    out = check_out_dir(out_dir if out_dir is not None else default_out_dir(protocol), protocol)
    if subject is None:
        model_path = resolve_path(protocol.model_path, protocol.file.parent)
        subject = load_subject(model_path, protocol.device)
    if reference is None and protocol.reference:
        reference = load_subject(resolve_path(protocol.reference, protocol.file.parent), protocol.device)
    was_training = subject.model.training
    subject.model.eval()
    bar = _Bar(progress, f"{protocol.kind} protocol", design.units(protocol), protocol.name)
    try:
        body = design.run(protocol, subject, reference, bar)
    finally:
        bar.close()
        subject.model.train(was_training)
    results = {
        "title": f"{protocol.kind} protocol: {protocol.name}",
        "protocol": {**protocol.header(), "copy": {"file": PROTOCOL_COPY, "text": protocol.text}},
        "model": {"path": subject.path or protocol.model_path, "type": subject.name, "reference": protocol.reference,
                  "parameters": sum(p.numel() for p in subject.model.parameters()),
                  "device": str(next(subject.model.parameters()).device)},
        "design": {"seeds": protocol.seeds, "samples_per_condition": protocol.samples_per_condition,
                   "prompts": {"source": protocol.prompt_source, "count": protocol.prompt_count,
                               "tokens": protocol.prompt_tokens,
                               "file": protocol.prompt_file} if protocol.kind not in WINDOW_KINDS else None,
                   "pairing": "window × seed" if protocol.kind in WINDOW_KINDS else "prompt × seed"},
        "decoding": {"max_new_tokens": protocol.max_new_tokens, "temperature": protocol.temperature,
                     "top_k": protocol.top_k,
                     "greedy": protocol.temperature == 0} if protocol.kind not in WINDOW_KINDS else None,
        "statistics": {"test": TESTS[protocol.test], "alpha": protocol.alpha, "power": protocol.power,
                       "ci_level": protocol.ci_level,
                       "correction": "Holm–Bonferroni over every p-value of the protocol's family",
                       "bootstrap_resamples": protocol.bootstrap_resamples,
                       "permutation_resamples": protocol.permutation_resamples},
        "metrics": protocol.metrics,
        **body,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }
    for table in results.get("tables", []):  # intervals as text: the tables are for reading, the numbers are above
        table["rows"] = [[_cell_text(c) if isinstance(c, (list, tuple)) else c for c in row] for row in table["rows"]]
    results["markdown"] = protocol_markdown(results)
    results = _jsonable(results)
    out.mkdir(parents=True, exist_ok=True)
    copy = protocol.file.read_bytes() if protocol.file.is_file() else protocol.text.encode("utf-8")
    (out / PROTOCOL_COPY).write_bytes(copy)
    if sha256_of(out / PROTOCOL_COPY) != protocol.sha256:  # the file changed while the protocol ran
        (out / PROTOCOL_COPY).write_text(protocol.text, encoding="utf-8")
    results["files"] = {"json": str(out / RESULTS), "md": str(out / "results.md"), "png": str(out / "results.png"),
                        "protocol": str(out / PROTOCOL_COPY)}
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / RESULTS)
    write_protocol_report(out, results)
    return results


def _run_eval_design(design: Design, protocol: Protocol, out_dir, subject: Subject | None, progress: bool,
                     command: str | None) -> dict:
    from ..evals import prepare_outputs

    out = Path(out_dir) if out_dir is not None else ev.default_eval_out(protocol)
    if design.check_out is not None:
        design.check_out(out)
    else:
        prepare_outputs(out, design.output, design.suffixes)  # refuse before the slow part
    if subject is None and design.open_subject is not None:
        subject = design.open_subject(protocol)
    return design.run(protocol, subject, out, progress, command)


def run_diagnostics(path: str | os.PathLike, out: str | os.PathLike | None = None, corpus: str | None = None,
                    cfg=None, device: str | None = None, command: str | None = None) -> dict:
    """Diagnose a fusion-family run directory or model folder (the ``fusion_diagnostics``
    design); writes ``diagnostics.json`` and ``plots/diag_*.png`` into ``out`` (default
    PATH/diagnostics), refusing one that already holds diagnostics.json. ``cfg``: a
    :class:`phaselm.evals.diagnostics.DiagnosticsConfig`."""
    return run_protocol(ev.diagnostics_protocol(path, corpus, config=cfg, device=device), out, progress=False,
                        command=command)


def _cell_text(value) -> str:
    from ..reporting.common import format_value

    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(v is None or isinstance(v, (int, float))
                                                                    for v in value):
        return f"[{format_value(value[0])}, {format_value(value[1])}]"
    return format_value(value)


def protocol_markdown(results: dict) -> str:
    """The protocol's verdict and tables as Markdown (every table states n)."""
    from ..reporting.markdown import markdown_table

    p = results["protocol"]
    lines = [f"# {results['title']}", "", f"Protocol file `{p['file']}`, SHA-256 `{p['sha256']}`."]
    if p.get("description"):
        lines += ["", p["description"]]
    lines += ["", f"Model: `{results['model']['path']}` ({results['model']['type']}).", "", f"**{results['verdict']}**",
              ""]
    for table in results.get("tables", []):
        lines += [f"## {table['title']}", ""]
        lines += markdown_table(table["header"],
                        [[_cell_text(c) if not isinstance(c, str) else c for c in row] for row in table["rows"]])
        if table.get("note"):
            lines += ["", table["note"]]
        lines.append("")
    if results.get("note"):
        lines += [results["note"], ""]
    return "\n".join(lines).rstrip() + "\n"


def write_protocol_report(out_dir: str | os.PathLike, results: dict) -> list[Path]:
    """Write a protocol's human-readable outputs from its results dict: ``results.md``,
    ``results.png`` (per-condition distributions, and R/U panels where there are any) and,
    where :mod:`phaselm.reporting` provides it, ``report.html``. Results in, files out; safe to
    call again (``phaselm report`` rebuilds from results.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "results.md"
    md.write_text(results.get("markdown") or protocol_markdown(results), encoding="utf-8")
    written.append(md)
    png = _plot_results(results, out / "results.png")
    if png is not None:
        written.append(png)
    from .. import reporting

    html_writer = getattr(reporting, "write_html_report", None)
    if html_writer is not None:
        text = (results.get("protocol", {}).get("copy") or {}).get("text")
        written.append(html_writer(out, title=results.get("title"), protocol_text=text,
                                   results=[results],
                                   commands=[results["command"]] if results.get("command") else None))
    return written


def _plot_results(results: dict, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    from ..reporting.plots import save_figure

    distributions = {m: c for m, c in (results.get("distributions") or {}).items() if any(c.values())}
    token_r = results.get("token_r") or {}
    panels = list(distributions) + (["per-token R"] if any(token_r.values()) else [])
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        if name == "per-token R":
            for mode, values in token_r.items():
                if values:
                    ax.hist(values, bins=40, range=(0, 1), alpha=0.5, label=f"{mode} (n={len(values)} tokens)")
            ax.set_xlabel("R")
            ax.legend(fontsize=7)
            ax.set_title("per-token R", fontsize=9)
            ax.grid(alpha=0.3)
            continue
        conditions = {c: v for c, v in distributions[name].items() if v}
        data = list(conditions.values())
        ax.boxplot(data, showfliers=False)
        for j, values in enumerate(data):
            jitter = np.random.default_rng(j).uniform(-0.15, 0.15, len(values))
            ax.scatter(np.full(len(values), j + 1) + jitter, values, s=8, alpha=0.5)
        ax.set_xticks(range(1, len(data) + 1), [f"{c}\n(n={len(v)})" for c, v in conditions.items()], fontsize=6,
                      rotation=15)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{results.get('title', 'protocol')} (n = {results.get('n')} per condition)", fontsize=10)
    return save_figure(fig, path)
