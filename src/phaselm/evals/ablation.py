"""Ablation table: several trained runs side by side."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import PhaseLMError
from ..subject import Subject
from .intervention import table_markdown
from .outputs import eval_mode, eval_progress, model_device, prepare_outputs, write_outputs
from .subject import load_subject
from .validation import check_eval_shape, count_batches, r_summary, token_stats, trained_bounds, u_summary


def ablation_table(
    run_dirs: Sequence[str | os.PathLike],
    batch_size: int = 16,
    seq_len: int | None = None,
    max_batches: int = 20,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | None = None,
    command: str | None = None,
) -> dict:
    """Several trained runs side by side on their validation splits, with the same batches.

    Columns: variant, parameters, val loss (CE) and perplexity, R mean/std, u mean/std and the
    share of u at the clamp bounds; "—" where a model has no such quantity (GPT has no R or u;
    a monostable K-SSM has no bounds). ``seq_len`` defaults to the shortest training seq_len of
    the runs. Writes ablation.json, ablation.md and ablation.png.
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise PhaseLMError("give at least one run directory")
    for p in run_dirs:
        if not p.exists():
            raise PhaseLMError(f"run directory {p} does not exist; pass `phaselm train-lm` run directories")
    files = prepare_outputs(out_dir, "ablation", (".json", ".md", ".png"))
    subjects = [load_subject(p, device) for p in run_dirs]
    if seq_len is None:
        known = [s.train_seq_len for s in subjects if s.train_seq_len]
        seq_len = min(known) if known else 256
    names = _unique_names(run_dirs)
    for s in subjects:
        check_eval_shape(s.model, s.validation_ids(), batch_size, seq_len, max_batches)
    rows = []
    with eval_progress(progress) as bar:
        total = sum(count_batches(s.validation_ids(), batch_size, seq_len, max_batches) for s in subjects)
        task = bar.add_task("ablation", total=total, status="")
        for name, s in zip(names, subjects):
            bar.update(task, status=name)
            with eval_mode(s.model):
                stats = token_stats(s.model, s.validation_ids(), batch_size, seq_len, max_batches,
                                     lambda: bar.update(task, advance=1))
            r = r_summary(stats)
            rows.append({
                "run": name,
                "path": str(s.path),
                "arch": s.arch,
                "variant": s.variant,
                "parameters": sum(p.numel() for p in s.model.parameters()),
                "tokenizer": f"{getattr(s.tokenizer, 'kind', '?')} ({s.tokenizer.vocab_size})",
                "corpus": s.corpus,
                "val_ce": stats.val_ce,
                "val_ppl": math.exp(min(stats.val_ce, 50.0)),
                "r_mean": r["r_mean"],
                "r_std": r["r_std"],
                "r_per_layer": r["r_per_layer"],
                **u_summary(stats, trained_bounds(s.model)),
                "tokens": int(stats.ce.size),
                "val_ce_at_training": _summary_val_ce(s),
            })
    header = ["run", "variant", "params", "val loss", "val ppl", "R mean", "R std", "u mean", "u std", "u at bounds"]
    table = [[r["run"], r["variant"], f"{r['parameters']:,}", r["val_ce"], r["val_ppl"], r["r_mean"], r["r_std"],
              r["u_mean"], r["u_std"], r["u_at_bounds"]] for r in rows]
    notes = [f"Validation CE on up to {max_batches} batches of {batch_size} × {seq_len} tokens of each run's "
             "validation split; — = not defined for that model (GPT has no R or u; a monostable K-SSM has no clamp "
             "bounds)."]
    if len({(r["tokenizer"], r["corpus"]) for r in rows}) > 1:
        notes.append("The runs use different corpora or tokenizers: their losses are not directly comparable.")
    result = {
        "eval": "ablation_table",
        "command": command,
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "rows": rows,
        "notes": notes,
        "markdown": table_markdown(header, table) + "\n\n" + "\n".join(notes),
        "device": str(model_device(subjects[0].model)),
    }
    return write_outputs(files, result, lambda path: _plot_ablation(result, path))


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name if p.resolve().name != "model" else p.resolve().parent.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def _summary_val_ce(subject: Subject) -> float | None:
    run = subject.model_dir.parent
    try:
        return float(json.loads((run / "summary.json").read_text(encoding="utf-8"))["val_ce"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plot_ablation(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..reporting.plots import save_figure

    rows = result["rows"]
    labels = [f"{r['run']}\n{r['variant']}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    losses = [r["val_ce"] for r in rows]
    axes[0].plot(x, losses, "o", color="tab:blue", ms=8)
    for i, loss in enumerate(losses):
        axes[0].annotate(f"{loss:.3f}", (i, loss), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    axes[0].set_ylabel("validation loss (CE, nats)")
    for ax, key, label in ((axes[1], "r", "R"), (axes[2], "u", "u")):
        for i, r in enumerate(rows):
            if r[f"{key}_mean"] is None:
                ax.text(i, 0.5, "—", ha="center", va="center", fontsize=14, transform=ax.get_xaxis_transform())
            else:
                ax.errorbar([i], [r[f"{key}_mean"]], yerr=[r[f"{key}_std"]], fmt="o", capsize=4, color="tab:orange")
        ax.set_ylabel(f"{label} mean ± std")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(alpha=0.3)
    fig.suptitle("Ablation: val loss, R and u per run (— = not defined)")
    save_figure(fig, path)
