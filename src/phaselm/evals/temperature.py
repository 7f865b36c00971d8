"""Temperature sweep: quality of sampled text per temperature."""

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
from ..subject import Subject
from .intervention import table_markdown
from .outputs import check_positions, eval_mode, eval_progress, model_device, prepare_outputs, write_outputs
from .sampling import (
    check_decoding,
    continuation_logprobs,
    describe_metrics,
    generate_all,
    mean_nll,
    per_prompt_metrics,
    r_per_layer,
)
from .subject import DEFAULT_TEMPERATURES, METRIC_LABELS


def temperature_sweep(model: nn.Module, tokenizer, prompts: Sequence,
                      temperatures: Sequence[float] = DEFAULT_TEMPERATURES, **settings) -> dict:
    """:func:`temperature_eval` of a bare model and its tokenizer (wrapped in a :class:`Subject`)."""
    return temperature_eval(Subject(model, tokenizer, corpus=None), prompts, temperatures, **settings)


def temperature_eval(
    subject: Subject,
    prompts: Sequence,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    max_new_tokens: int = 64,
    seed: int = 0,
    top_k: int | None = None,
    batch_size: int = 16,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Quality of text that ``subject`` generates per sampling temperature (0 = greedy), over the
    same prompts (texts or token-id sequences); the ``temperature_sweep`` design.

    Per temperature: distinct-1/2/3, repetition, perplexity under the model at temperature 1,
    and mean R (per layer too) for models with oscillators. Writes temperature.json/.png.
    """
    model, tokenizer = subject.model, subject.tokenizer
    temperatures = [float(t) for t in temperatures]
    if not temperatures:
        raise PhaseLMError("give at least one temperature, e.g. 0,0.8,1.0")
    if len(set(temperatures)) != len(temperatures):
        raise PhaseLMError("temperatures are listed twice; give each once")
    for t in temperatures:
        check_decoding(max_new_tokens, t, top_k)
    prompts = prompt_token_ids(tokenizer, prompts)
    if len(prompts) < st.MIN_N:
        raise PhaseLMError(f"a temperature sweep needs at least {st.MIN_N} prompts, got {len(prompts)}")
    files = prepare_outputs(out_dir, "temperature")
    check_positions(model, max(len(p) for p in prompts) + max_new_tokens, "prompt + generation")
    batches = group_by_length(prompts, batch_size)
    device = model_device(model)
    rows = []
    with eval_mode(model), eval_progress(progress) as bar:
        task = bar.add_task("temperature sweep", total=len(batches) * 2 * len(temperatures), status="")
        advance = lambda: bar.update(task, advance=1)  # noqa: E731
        for t in temperatures:
            bar.update(task, status=f"T = {t:g}")
            generated = generate_all(model, prompts, batches, max_new_tokens, t, top_k, seed, advance)
            ppl = np.zeros(len(prompts))
            for batch in batches:
                prompt = torch.tensor([prompts[i] for i in batch], device=device)
                cont = torch.tensor([generated.ids[i] for i in batch], device=device)
                nll = mean_nll(continuation_logprobs(model, prompt, cont), cont)
                ppl[batch] = torch.exp(nll).double().cpu().numpy()
                advance()
            values = per_prompt_metrics(generated, ppl)
            rows.append({
                "temperature": t,
                "metrics": describe_metrics(values, seed),
                "r_per_layer": r_per_layer(generated),
                "sample": tokenizer.decode(generated.ids[0]),
            })
    quality = ("distinct_1", "distinct_2", "distinct_3", "repetition", "perplexity", "mean_r")
    table_rows = [[r["temperature"]] + [(r["metrics"][m] or {}).get("mean") for m in quality] for r in rows]
    result = {
        "eval": "temperature_sweep",
        "command": command,
        "model": model_name,
        "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "decoding": {"top_k": top_k, "seed": seed, "temperature_0": "greedy"},
        "definitions": {"perplexity": "of the continuation given its prompt, under the model at temperature 1",
                        "repetition": "1 − distinct-4 of the continuation"},
        "rows": rows,
        "markdown": table_markdown(["T"] + [METRIC_LABELS[m] for m in quality], table_rows),
        "device": str(device),
    }
    return write_outputs(files, result, lambda path: _plot_temperature(result, path))


def _plot_temperature(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from ..reporting.plots import save_figure

    temps = [r["temperature"] for r in result["rows"]]
    panels = [(("distinct_1", "distinct_2", "distinct_3"), "distinct-n"), (("repetition",), "repetition"),
              (("perplexity",), "perplexity (T = 1)"), (("mean_r",), "mean R")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (metrics, title) in zip(axes, panels):
        for m in metrics:
            stats = [r["metrics"][m] for r in result["rows"]]
            if any(s is None for s in stats):
                ax.text(0.5, 0.5, "— (no oscillators)", ha="center", va="center", transform=ax.transAxes)
                continue
            mean = np.array([s["mean"] for s in stats])
            low = mean - np.array([s.get("ci_low", s["mean"]) for s in stats])
            high = np.array([s.get("ci_high", s["mean"]) for s in stats]) - mean
            ax.errorbar(temps, mean, yerr=[low, high], marker="o", capsize=3, label=METRIC_LABELS[m])
        if len(metrics) > 1:
            ax.legend(fontsize=8)
        if metrics == ("perplexity",):
            ax.set_yscale("log")
        ax.set_xlabel("temperature (0 = greedy)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Temperature sweep: n = {result['n_prompts']} prompts, {result['max_new_tokens']} new tokens, mean ± "
                 "95% CI")
    save_figure(fig, path)


def parse_floats(text: str, what: str) -> list[float]:
    """Comma-separated numbers → floats; ``what`` names the option in the one-line error."""
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PhaseLMError(f"bad {what} {text!r}; write comma-separated numbers, e.g. 0,0.8,1.0") from None
