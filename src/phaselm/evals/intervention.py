"""R intervention eval: force the phases at chosen layers and compare with the unforced model, paired by prompt."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import statistics as st
from ..errors import PhaseLMError
from ..generation import group_by_length, prompt_token_ids
from ..interventions import Intervention, intervene, require_oscillator_sites
from ..subject import Subject
from .outputs import check_positions, eval_mode, eval_progress, model_device, prepare_outputs, write_outputs
from .sampling import (
    check_decoding,
    continuation_logprobs,
    describe_metrics,
    generate_all,
    kl_divergence,
    mean_nll,
    per_prompt_metrics,
    r_per_layer,
)
from .subject import METRIC_LABELS, METRICS, SAMPLES_SHOWN


def r_intervention_eval(model: nn.Module, tokenizer, prompts: Sequence, interventions: Sequence[Intervention],
                        **settings) -> dict:
    """:func:`intervention_eval` of a bare model and its tokenizer (wrapped in a :class:`Subject`)."""
    return intervention_eval(Subject(model, tokenizer, corpus=None), prompts, interventions, **settings)


def intervention_eval(
    subject: Subject,
    prompts: Sequence,
    interventions: Sequence[Intervention],
    max_new_tokens: int = 64,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 16,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Force the phases of ``subject``'s model with each intervention and compare with the
    unforced model, per prompt (the ``r_intervention`` design of :mod:`phaselm.protocols`).

    ``prompts``: texts or token-id sequences (any lengths; equal lengths are batched together).

    For every prompt: the unforced continuation (seeded sampling, or greedy at temperature 0);
    per intervention the forced continuation with the same seed, and KL(p_unforced ‖ p_forced)
    along the unforced continuation. Metrics (see the module doc) are compared forced vs
    unforced with :func:`phaselm.statistics.paired` (t-test, Wilcoxon, d_z, rank-biserial,
    bootstrap CI) and Holm-corrected over all metrics × interventions (t and Wilcoxon p-values
    separately). Writes ``intervention.json`` and ``intervention.png`` into ``out_dir``.
    """
    model, tokenizer = subject.model, subject.tokenizer
    check_decoding(max_new_tokens, temperature, top_k)
    interventions = list(interventions)
    if not interventions:
        raise PhaseLMError("give at least one intervention (sync, disorder or pin=r)")
    for item in interventions:
        if not isinstance(item, Intervention):
            raise PhaseLMError(f"expected Intervention objects, got {type(item).__name__}")
    prompts = prompt_token_ids(tokenizer, prompts)
    if len(prompts) < st.MIN_N:
        raise PhaseLMError(f"paired statistics need at least {st.MIN_N} prompts, got {len(prompts)}; use 50 or more")
    require_oscillator_sites(model, "an R intervention eval")
    files = prepare_outputs(out_dir, "intervention")
    check_positions(model, max(len(p) for p in prompts) + max_new_tokens, "prompt + generation")
    with intervene(model, *interventions) as applied:  # validates every layer before any work
        records = applied.to_json()
    batches = group_by_length(prompts, batch_size)
    device = model_device(model)
    k = len(interventions)
    with eval_mode(model), eval_progress(progress) as bar:
        task = bar.add_task("R intervention", total=len(batches) * (2 + 3 * k), status="")
        advance = lambda: bar.update(task, advance=1)  # noqa: E731
        args = (max_new_tokens, temperature, top_k, seed, advance)
        bar.update(task, status="unforced")
        unforced = generate_all(model, prompts, batches, *args)
        forced = []
        for item in interventions:
            bar.update(task, status=item.label)
            with intervene(model, item):
                forced.append(generate_all(model, prompts, batches, *args))
        bar.update(task, status="scoring")
        ppl_unforced = np.zeros(len(prompts))
        ppl_forced = np.zeros((k, len(prompts)))
        kl = np.zeros((k, len(prompts)))
        for batch in batches:
            prompt = torch.tensor([prompts[i] for i in batch], device=device)
            cont = torch.tensor([unforced.ids[i] for i in batch], device=device)
            logp = continuation_logprobs(model, prompt, cont)
            ppl_unforced[batch] = torch.exp(mean_nll(logp, cont)).double().cpu().numpy()
            advance()
            for j, item in enumerate(interventions):
                with intervene(model, item):
                    logq = continuation_logprobs(model, prompt, cont)
                kl[j, batch] = kl_divergence(logp, logq).mean(-1).double().cpu().numpy()
                advance()
                cont_f = torch.tensor([forced[j].ids[i] for i in batch], device=device)
                ppl_forced[j, batch] = torch.exp(mean_nll(continuation_logprobs(model, prompt, cont_f),
                                                      cont_f)).double().cpu().numpy()
                advance()
    base = per_prompt_metrics(unforced, ppl_unforced)
    base["kl"] = [0.0] * len(prompts)
    per_forced = []
    for j in range(k):
        values = per_prompt_metrics(forced[j], ppl_forced[j])
        values["kl"] = kl[j].tolist()
        per_forced.append(values)

    comparisons = []
    for j in range(k):
        comparisons.append({m: st.paired(per_forced[j][m], base[m], n_resamples=n_resamples, seed=seed).to_dict()
                            for m in METRICS})
    for key in ("p_t", "p_wilcoxon"):
        flat = [comparisons[j][m][key] for j in range(k) for m in METRICS]
        adjusted = st.holm(flat)
        for idx, (j, m) in enumerate((j, m) for j in range(k) for m in METRICS):
            comparisons[j][m][f"{key}_holm"] = adjusted[idx]
    for j in range(k):
        for m in METRICS:
            c = comparisons[j][m]
            c["significant"] = c["p_t_holm"] is not None and c["p_t_holm"] <= alpha

    def texts(ids_list):
        return [tokenizer.decode(ids_list[i]) for i in range(min(SAMPLES_SHOWN, len(prompts)))]

    results = []
    for j, item in enumerate(interventions):
        results.append({
            "intervention": records[j],
            "label": item.label,
            "forced": {"metrics": describe_metrics({m: per_forced[j][m] for m in METRICS}, seed),
                       "r_per_layer": r_per_layer(forced[j])},
            "comparisons": comparisons[j],
        })
    result = {
        "eval": "r_intervention",
        "command": command,
        "model": model_name,
        "n_prompts": len(prompts),
        "prompt_tokens": sorted({len(p) for p in prompts}),
        "max_new_tokens": max_new_tokens,
        "decoding": {"temperature": temperature, "top_k": top_k, "seed": seed, "greedy": temperature == 0},
        "alpha": alpha,
        "holm_family": f"{k} interventions × {len(METRICS)} metrics = {k * len(METRICS)} tests (t and Wilcoxon "
                       "corrected separately)",
        "definitions": {
            "difference": "forced − unforced, per prompt",
            "kl": "mean over generated positions of KL(p_unforced ‖ p_forced) along the unforced continuation "
                  "(compared with 0)",
            "repetition": "1 − distinct-4 of the continuation",
            "perplexity": "of the continuation given its prompt, under the unforced model at temperature 1",
            "mean_r": "R of the positions that produced the generated tokens, mean over layers",
        },
        "interventions": records,
        "unforced": {"metrics": describe_metrics({m: base[m] for m in METRICS if m != "kl"}, seed),
                     "r_per_layer": r_per_layer(unforced)},
        "results": results,
        "per_prompt": {"unforced": {m: base[m] for m in METRICS if m != "kl"}, "forced": per_forced},
        "samples": {
            "prompts": [tokenizer.decode(prompts[i]) for i in range(min(SAMPLES_SHOWN, len(prompts)))],
            "unforced": texts(unforced.ids),
            "forced": {item.label: texts(forced[j].ids) for j, item in enumerate(interventions)},
        },
        "device": str(device),
    }
    result["markdown"] = _intervention_markdown(result)
    return write_outputs(files, result, lambda path: _plot_intervention(result, path))


def table_markdown(header: list[str], rows: list[list]) -> str:
    """A Markdown table (one string) with numbers formatted as in every report."""
    from ..reporting.common import format_value
    from ..reporting.markdown import markdown_table

    cells = [[format_value(c) if not isinstance(c, str) else c for c in row] for row in rows]
    return "\n".join(markdown_table(header, cells))


def _intervention_markdown(result: dict) -> str:
    from ..reporting.common import format_value

    rows = []
    for res in result["results"]:
        for m in METRICS:
            c = res["comparisons"][m]
            rows.append([res["label"], METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"],
                         f"[{format_value(c['ci_low'])}, {format_value(c['ci_high'])}]", c["cohens_dz"], c["p_t_holm"],
                         c["p_wilcoxon_holm"]])
    header = ["intervention", "metric", "n", "unforced", "forced", "Δ mean", "95% CI", "d_z", "p (t, Holm)",
              "p (Wilcoxon, Holm)"]
    return table_markdown(header, rows)


def _plot_intervention(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..reporting.common import format_value
    from ..reporting.plots import save_figure

    labels = [r["label"] for r in result["results"]]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for ax, m in zip(axes.flat, METRICS):
        data = []
        for j in range(len(labels)):
            forced = np.asarray(result["per_prompt"]["forced"][j][m], dtype=float)
            base = np.zeros_like(forced) if m == "kl" else np.asarray(result["per_prompt"]["unforced"][m], dtype=float)
            data.append(forced - base)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.boxplot(data, showfliers=False)
        for j, d in enumerate(data):
            jitter = np.random.default_rng(j).uniform(-0.15, 0.15, len(d))
            ax.scatter(np.full(len(d), j + 1) + jitter, d, s=8, alpha=0.5)
        ax.set_xticks(range(1, len(labels) + 1), [label.replace(" @ ", "\n") for label in labels], fontsize=7)
        p = [r["comparisons"][m]["p_t_holm"] for r in result["results"]]
        ax.set_title(f"{METRIC_LABELS[m]}\nHolm p: " + ", ".join(format_value(x, 2) for x in p), fontsize=8)
        ax.set_ylabel("KL" if m == "kl" else "forced − unforced", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes.flat[-1]
    base = result["unforced"]["r_per_layer"]
    ax.plot(range(len(base)), base, marker="o", color="black", label="unforced")
    for res in result["results"]:
        ax.plot(range(len(base)), res["forced"]["r_per_layer"], marker=".", label=res["label"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(range(len(base)))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean R")
    ax.set_title("R per layer during generation", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"R intervention: n = {result['n_prompts']} prompts, {result['max_new_tokens']} new tokens (paired)")
    save_figure(fig, path)
