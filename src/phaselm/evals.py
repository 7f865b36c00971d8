"""Evaluations of trained language models (K-SSM and the GPT baseline), each a JSON-able dict
plus a plot:

* :func:`r_intervention_eval` — force the oscillator phases (sync / disorder / pin R) at chosen
  layers and measure what changes against the unforced model, paired by prompt.
* :func:`temperature_sweep` — quality of sampled text per temperature.
* :func:`clamp_sweep` — evaluation-time bounds of K-SSM's u and their effect on loss and R.
* :func:`order_loss_correlation` — per-token cross-entropy against R, per layer.
* :func:`ablation_table` — several trained runs side by side (params, val loss, R, u).

Definitions used throughout (per prompt, over the ``max_new_tokens`` generated tokens):

* distinct-n: unique n-grams / all n-grams of the continuation (n = 1, 2, 3);
* repetition: 1 − distinct-4, the share of the continuation's 4-grams that repeat an earlier
  one (the seeds' "distinct-4" turned into a rate that grows with repetition);
* perplexity: exp(mean −log p(token)) of the continuation given its prompt, under the
  *unforced* model at temperature 1 (so forced text is judged by the same model);
* KL: mean over positions of KL(p_unforced ‖ p_forced) of the next-token distributions, both
  evaluated (teacher forced) along the *unforced* continuation;
* mean R: the order parameter of the positions that produced the generated tokens, per layer
  and averaged over layers.

Prompts are windows of the validation split (the last ``val_fraction`` of the token stream, as
in training), evenly spaced, so the same run always gets the same prompts. Generation runs
batched with the model's recurrent cache; sampling uses its own seeded generator, and a
forced run reuses the unforced run's seed, so both draw the same random numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import statistics as st
from .errors import PhaseLMError
from .interventions import Intervention, check_clamp_bounds, has_oscillators, intervene, override_clamp, require_oscillators

METRICS = ("kl", "distinct_1", "distinct_2", "distinct_3", "repetition", "perplexity", "mean_r")
TEXT_METRICS = ("distinct_1", "distinct_2", "distinct_3", "repetition")
METRIC_LABELS = {
    "kl": "KL(unforced ‖ forced)",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "distinct_3": "distinct-3",
    "repetition": "repetition (1 − distinct-4)",
    "perplexity": "perplexity (unforced model)",
    "mean_r": "mean R",
}
DEFAULT_TEMPERATURES = (0.0, 0.5, 0.8, 1.0, 1.2, 1.5)
DEFAULT_BOUNDS = ((0.1, 10.0), (0.05, 20.0), (0.5, 2.0), (0.1, 1.0), (1.0, 10.0))
SAMPLES_SHOWN = 3
CLAMP_NOTE = (
    "evaluation-time sweep: the trained weights are unchanged and u is clamped to each pair of bounds "
    "only while evaluating; this is not retraining with those bounds"
)
CORRELATION_NOTE = (
    "tokens of one sequence are not independent, so these p-values overstate the evidence; "
    "read the coefficients, and compare runs or layers, rather than the p-values"
)


# --------------------------------------------------------------------------------------------
# Loading a run
# --------------------------------------------------------------------------------------------


@dataclass
class EvalSubject:
    """A trained model with what the evals need to know about its run."""

    model: nn.Module
    tokenizer: object
    path: Path  # what the user passed
    model_dir: Path
    corpus: str
    val_fraction: float
    train_seq_len: int | None

    @property
    def arch(self) -> str:
        return str(getattr(self.model.config, "model_type", type(self.model).__name__))

    @property
    def variant(self) -> str:
        cfg = self.model.config
        if self.arch == "kssm":
            if cfg.mixer == "none":
                return "K-SSM no-mixer"
            return "K-SSM bistable" if cfg.bistable else "K-SSM monostable"
        return {"gpt2": "GPT-2"}.get(self.arch, self.arch)

    def validation_ids(self) -> torch.Tensor:
        from .data import encode_corpus, load_text, train_val_split

        cached = getattr(self, "_val_ids", None)
        if cached is None:
            _, cached = train_val_split(encode_corpus(self.tokenizer, load_text(self.corpus)), self.val_fraction)
            self._val_ids = cached
        return cached


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_run_config(run_dir: Path) -> dict:
    from .config import tomllib

    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PhaseLMError(f"cannot read {run_dir / 'config.toml'}: {str(exc).splitlines()[0]}; is {run_dir} a run directory?") from None


def load_subject(
    path: str | os.PathLike, device: str | None = None, corpus: str | None = None, val_fraction: float | None = None
) -> EvalSubject:
    """A ``phaselm train-lm`` (or ``pretrain``) run directory, or a model folder → EvalSubject.

    The corpus and validation fraction come from the run's config.toml (a model folder inside
    a run uses its run's); ``corpus`` / ``val_fraction`` override them, and a bare model folder
    without a run defaults to the embedded Tiny Shakespeare with val_fraction 0.1.
    """
    from .backbones import load_backbone
    from .experiments.phase_mamba import MODEL_FOLDER

    path = Path(path)
    if not path.exists():
        raise PhaseLMError(f"run directory {path} does not exist; pass a `phaselm train-lm` run directory or its model folder")
    if not path.is_dir():
        raise PhaseLMError(f"{path} is not a directory; pass a `phaselm train-lm` run directory or its model folder")
    if (path / MODEL_FOLDER / "config.json").is_file():
        run_dir, model_dir = path, path / MODEL_FOLDER
    elif (path / "config.json").is_file():
        run_dir, model_dir = (path.parent if (path.parent / "config.toml").is_file() else None), path
    elif (path / "config.toml").is_file():
        raise PhaseLMError(
            f"{path} holds no trained model folder ({path / MODEL_FOLDER} is missing); evals take a finished "
            "`phaselm train-lm` run (a grafted Phase-Mamba run has no standalone model)"
        )
    else:
        raise PhaseLMError(f"{path} is neither a run directory nor a model folder (no config.toml, model/ or config.json)")
    recipe = _read_run_config(run_dir) if run_dir is not None else {}
    data = recipe.get("data", {}) if isinstance(recipe.get("data"), dict) else {}
    train = recipe.get("train", {}) if isinstance(recipe.get("train"), dict) else {}
    model, tokenizer = load_backbone(str(model_dir), device or default_device())
    fraction = val_fraction if val_fraction is not None else float(data.get("val_fraction", 0.1))
    if not 0.0 < fraction < 1.0:
        raise PhaseLMError(f"val_fraction must be in (0, 1) for evaluation, got {fraction}")
    return EvalSubject(
        model=model, tokenizer=tokenizer, path=path, model_dir=model_dir,
        corpus=corpus or str(data.get("corpus", "tinyshakespeare")), val_fraction=fraction,
        train_seq_len=int(train["seq_len"]) if isinstance(train.get("seq_len"), int) else None,
    )


def default_out_dir(path: str | os.PathLike) -> Path:
    """Where a run's evals go by default: RUN_DIR/evals (a model folder inside a run: the run's)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path.parent / "config.toml").is_file():
        return path.parent / "evals"
    return path / "evals"


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def prepare_outputs(out_dir: str | os.PathLike | None, name: str, suffixes: Sequence[str] = (".json", ".png")) -> dict[str, Path] | None:
    """The files an eval will write; refuses (before any work) to overwrite existing ones."""
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PhaseLMError(f"--out {out_dir} is a file; choose a directory")
    files = {s.lstrip("."): out_dir / f"{name}{s}" for s in suffixes}
    existing = [p for p in files.values() if p.exists()]
    if existing:
        raise PhaseLMError(f"{out_dir} already holds {existing[0].name} from an earlier `{name}` eval; choose another --out")
    return files


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _write_outputs(files: dict[str, Path] | None, result: dict, plot) -> dict:
    """Draw the plot and write the JSON (atomically); returns the final, JSON-clean result."""
    from .reporting import machine_description

    result["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = machine_description()
    if files is not None:
        files["json"].parent.mkdir(parents=True, exist_ok=True)
        result["files"] = {k: str(v) for k, v in files.items()}
        plot(files["png"])
        if "md" in files:
            files["md"].write_text(result["markdown"] + "\n", encoding="utf-8")
    result = _jsonable(result)
    if files is not None:
        tmp = files["json"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, files["json"])
    return result


def _progress(enabled: bool):
    from .training import _progress as project_progress

    return project_progress(enabled)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if getattr(cfg, "model_type", "") == "kssm":
        return cfg.max_position_embeddings if cfg.position_embedding else None
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def _check_positions(model: nn.Module, length: int, what: str) -> None:
    limit = _max_positions(model)
    if limit is not None and length > limit:
        raise PhaseLMError(f"{what} needs {length} positions but the model allows {limit}; use fewer tokens")


# --------------------------------------------------------------------------------------------
# Prompts, generation, scoring, text metrics
# --------------------------------------------------------------------------------------------


def validation_prompts(val_ids: torch.Tensor, n: int = 50, prompt_tokens: int = 32) -> list[list[int]]:
    """``n`` prompts of ``prompt_tokens`` tokens, evenly spaced over the validation split."""
    if n < st.MIN_N:
        raise PhaseLMError(f"paired statistics need at least {st.MIN_N} prompts, got {n}; use --prompts 50 or more")
    if prompt_tokens < 1:
        raise PhaseLMError(f"prompt length must be at least 1 token, got {prompt_tokens}")
    room = len(val_ids) - prompt_tokens
    if room + 1 < n:
        raise PhaseLMError(
            f"the validation split has {len(val_ids)} tokens: too short for {n} distinct prompts of {prompt_tokens} tokens; "
            "use fewer or shorter prompts"
        )
    starts = [(i * room) // (n - 1) for i in range(n)]
    return [val_ids[s : s + prompt_tokens].tolist() for s in starts]


def _prompt_ids(tokenizer, prompts: Sequence) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tokenizer.encode(p) if isinstance(p, str) else [int(i) for i in (p.tolist() if isinstance(p, torch.Tensor) else p)]
        if not ids:
            raise PhaseLMError("a prompt encodes to no tokens; pass non-empty prompts")
        out.append(ids)
    return out


def _batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices grouped by prompt length (no padding needed), ``batch_size`` at a time, in order."""
    if batch_size < 1:
        raise PhaseLMError(f"batch size must be at least 1, got {batch_size}")
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    return [idx[s : s + batch_size] for idx in by_length.values() for s in range(0, len(idx), batch_size)]


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample(
    model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Continue a batch of equal-length prompts (B, P) with the recurrent/KV cache.

    Returns the new tokens (B, M) and, for models with oscillators, R of the positions that
    produced them (B, n_layers, M); both on the CPU. ``temperature = 0`` decodes greedily.
    """
    device = prompt.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    tokens, orders = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # any noise inside the model (noise_in_eval) is seeded too
        out = model(input_ids=prompt, use_cache=True)
        for i in range(max_new_tokens):
            order = getattr(out, "orders", None)
            if order is not None:
                orders.append(order[:, :, -1].float())
            nxt = _pick(out.logits[:, -1].float(), temperature, top_k, generator)
            tokens.append(nxt)
            if i + 1 < max_new_tokens:
                out = model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
    new = torch.stack(tokens, 1).cpu()
    return new, (torch.stack(orders, -1).cpu() if orders else None)


@torch.no_grad()
def _continuation_logprobs(model: nn.Module, prompt: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """log p(· | prefix) at the M positions that predict the continuation: (B, M, V), float32."""
    full = torch.cat([prompt, continuation.to(prompt.device)], 1)
    logits = model(input_ids=full).logits[:, prompt.shape[1] - 1 : -1]
    return F.log_softmax(logits.float(), -1)


def _nll(logprobs: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """Mean −log p of the continuation per sequence: (B,)."""
    return -logprobs.gather(-1, continuation.to(logprobs.device)[..., None]).squeeze(-1).mean(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities; exactly 0 when they are equal."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def distinct_n(ids: Sequence[int], n: int) -> float | None:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def text_metrics(ids: Sequence[int]) -> dict[str, float | None]:
    """distinct-1/2/3 and repetition (1 − distinct-4) of one continuation."""
    d4 = distinct_n(ids, 4)
    return {
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "distinct_3": distinct_n(ids, 3),
        "repetition": None if d4 is None else 1.0 - d4,
    }


def _check_decoding(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if max_new_tokens < 4:
        raise PhaseLMError(f"max_new_tokens must be at least 4 (repetition counts 4-grams), got {max_new_tokens}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise PhaseLMError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise PhaseLMError(f"top_k must be ≥ 0 (0 keeps every token), got {top_k}")


@dataclass
class _Generated:
    ids: list[list[int]]  # continuation per prompt
    orders: np.ndarray | None  # (n, L, M)


def _generate_all(model, prompts, batches, max_new_tokens, temperature, top_k, seed, advance) -> _Generated:
    device = _device(model)
    ids: list = [None] * len(prompts)
    orders = None
    for batch in batches:
        prompt = torch.tensor([prompts[i] for i in batch], device=device)
        new, order = sample(model, prompt, max_new_tokens, temperature, top_k, seed + batch[0])
        for row, i in enumerate(batch):
            ids[i] = new[row].tolist()
        if order is not None:
            if orders is None:
                orders = np.zeros((len(prompts), order.shape[1], max_new_tokens), dtype=np.float64)
            orders[batch] = order.double().numpy()
        advance()
    return _Generated(ids, orders)


def _per_prompt_metrics(generated: _Generated, perplexity: np.ndarray) -> dict[str, list]:
    rows = [text_metrics(c) for c in generated.ids]
    out = {m: [r[m] for r in rows] for m in TEXT_METRICS}
    out["perplexity"] = perplexity.tolist()
    out["mean_r"] = generated.orders.mean(axis=(1, 2)).tolist() if generated.orders is not None else None
    return out


def _r_per_layer(generated: _Generated) -> list[float] | None:
    return generated.orders.mean(axis=(0, 2)).tolist() if generated.orders is not None else None


def _describe_metrics(values: dict[str, list | None], seed: int) -> dict:
    return {m: (st.describe(v, seed=seed) if v is not None else None) for m, v in values.items()}


# --------------------------------------------------------------------------------------------
# R intervention
# --------------------------------------------------------------------------------------------


def r_intervention_eval(
    model: nn.Module,
    tokenizer,
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
    """Force the phases with each intervention and compare with the unforced model, per prompt.

    For every prompt: the unforced continuation (seeded sampling, or greedy at temperature 0);
    per intervention the forced continuation with the same seed, and KL(p_unforced ‖ p_forced)
    along the unforced continuation. Metrics (see the module doc) are compared forced vs
    unforced with :func:`phaselm.statistics.paired` (t-test, Wilcoxon, d_z, rank-biserial,
    bootstrap CI) and Holm-corrected over all metrics × interventions (t and Wilcoxon p-values
    separately). Writes ``intervention.json`` and ``intervention.png`` into ``out_dir``.
    """
    _check_decoding(max_new_tokens, temperature, top_k)
    interventions = list(interventions)
    if not interventions:
        raise PhaseLMError("give at least one intervention (sync, disorder or pin=r)")
    for item in interventions:
        if not isinstance(item, Intervention):
            raise PhaseLMError(f"expected Intervention objects, got {type(item).__name__}")
    prompts = _prompt_ids(tokenizer, prompts)
    if len(prompts) < st.MIN_N:
        raise PhaseLMError(f"paired statistics need at least {st.MIN_N} prompts, got {len(prompts)}; use 50 or more")
    require_oscillators(model, "an R intervention eval")
    files = prepare_outputs(out_dir, "intervention")
    _check_positions(model, max(len(p) for p in prompts) + max_new_tokens, "prompt + generation")
    with intervene(model, *interventions) as applied:  # validates every layer before any work
        records = applied.to_json()
    batches = _batches(prompts, batch_size)
    device = _device(model)
    k = len(interventions)
    with _eval_mode(model), _progress(progress) as bar:
        task = bar.add_task("R intervention", total=len(batches) * (2 + 3 * k), status="")
        advance = lambda: bar.update(task, advance=1)  # noqa: E731
        args = (max_new_tokens, temperature, top_k, seed, advance)
        bar.update(task, status="unforced")
        unforced = _generate_all(model, prompts, batches, *args)
        forced = []
        for j, item in enumerate(interventions):
            bar.update(task, status=item.label)
            with intervene(model, item):
                forced.append(_generate_all(model, prompts, batches, *args))
        bar.update(task, status="scoring")
        ppl_unforced = np.zeros(len(prompts))
        ppl_forced = np.zeros((k, len(prompts)))
        kl = np.zeros((k, len(prompts)))
        for batch in batches:
            prompt = torch.tensor([prompts[i] for i in batch], device=device)
            cont = torch.tensor([unforced.ids[i] for i in batch], device=device)
            logp = _continuation_logprobs(model, prompt, cont)
            ppl_unforced[batch] = torch.exp(_nll(logp, cont)).double().cpu().numpy()
            advance()
            for j, item in enumerate(interventions):
                with intervene(model, item):
                    logq = _continuation_logprobs(model, prompt, cont)
                kl[j, batch] = kl_divergence(logp, logq).mean(-1).double().cpu().numpy()
                advance()
                cont_f = torch.tensor([forced[j].ids[i] for i in batch], device=device)
                ppl_forced[j, batch] = torch.exp(_nll(_continuation_logprobs(model, prompt, cont_f), cont_f)).double().cpu().numpy()
                advance()
    base = _per_prompt_metrics(unforced, ppl_unforced)
    base["kl"] = [0.0] * len(prompts)
    per_forced = []
    for j in range(k):
        values = _per_prompt_metrics(forced[j], ppl_forced[j])
        values["kl"] = kl[j].tolist()
        per_forced.append(values)

    comparisons = []
    for j in range(k):
        comparisons.append({m: st.paired(per_forced[j][m], base[m], n_resamples=n_resamples, seed=seed).to_dict() for m in METRICS})
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
            "forced": {"metrics": _describe_metrics({m: per_forced[j][m] for m in METRICS}, seed), "r_per_layer": _r_per_layer(forced[j])},
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
        "holm_family": f"{k} interventions × {len(METRICS)} metrics = {k * len(METRICS)} tests (t and Wilcoxon corrected separately)",
        "definitions": {
            "difference": "forced − unforced, per prompt",
            "kl": "mean over generated positions of KL(p_unforced ‖ p_forced) along the unforced continuation (compared with 0)",
            "repetition": "1 − distinct-4 of the continuation",
            "perplexity": "of the continuation given its prompt, under the unforced model at temperature 1",
            "mean_r": "R of the positions that produced the generated tokens, mean over layers",
        },
        "interventions": records,
        "unforced": {"metrics": _describe_metrics({m: base[m] for m in METRICS if m != "kl"}, seed), "r_per_layer": _r_per_layer(unforced)},
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
    return _write_outputs(files, result, lambda path: _plot_intervention(result, path))


def _fmt(value, digits: int = 4) -> str:
    from .reporting import _fmt as fmt

    return fmt(value, digits)


def _md_table(header: list[str], rows: list[list]) -> str:
    from .reporting import _table

    return "\n".join(_table(header, [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]))


def _intervention_markdown(result: dict) -> str:
    rows = []
    for res in result["results"]:
        for m in METRICS:
            c = res["comparisons"][m]
            rows.append([res["label"], METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"],
                         f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]", c["cohens_dz"], c["p_t_holm"], c["p_wilcoxon_holm"]])
    header = ["intervention", "metric", "n", "unforced", "forced", "Δ mean", "95% CI", "d_z", "p (t, Holm)", "p (Wilcoxon, Holm)"]
    return _md_table(header, rows)


def _plot_intervention(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .reporting import _save

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
        ax.set_xticks(range(1, len(labels) + 1), [l.replace(" @ ", "\n") for l in labels], fontsize=7)
        p = [r["comparisons"][m]["p_t_holm"] for r in result["results"]]
        ax.set_title(f"{METRIC_LABELS[m]}\nHolm p: " + ", ".join(_fmt(x, 2) for x in p), fontsize=8)
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
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Temperature sweep
# --------------------------------------------------------------------------------------------


def temperature_sweep(
    model: nn.Module,
    tokenizer,
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
    """Quality of generated text per sampling temperature (0 = greedy), over the same prompts.

    Per temperature: distinct-1/2/3, repetition, perplexity under the model at temperature 1,
    and mean R (per layer too) for models with oscillators. Writes temperature.json/.png.
    """
    temperatures = [float(t) for t in temperatures]
    if not temperatures:
        raise PhaseLMError("give at least one temperature, e.g. 0,0.8,1.0")
    if len(set(temperatures)) != len(temperatures):
        raise PhaseLMError("temperatures are listed twice; give each once")
    for t in temperatures:
        _check_decoding(max_new_tokens, t, top_k)
    prompts = _prompt_ids(tokenizer, prompts)
    if len(prompts) < st.MIN_N:
        raise PhaseLMError(f"a temperature sweep needs at least {st.MIN_N} prompts, got {len(prompts)}")
    files = prepare_outputs(out_dir, "temperature")
    _check_positions(model, max(len(p) for p in prompts) + max_new_tokens, "prompt + generation")
    batches = _batches(prompts, batch_size)
    device = _device(model)
    rows = []
    with _eval_mode(model), _progress(progress) as bar:
        task = bar.add_task("temperature sweep", total=len(batches) * 2 * len(temperatures), status="")
        advance = lambda: bar.update(task, advance=1)  # noqa: E731
        for t in temperatures:
            bar.update(task, status=f"T = {t:g}")
            generated = _generate_all(model, prompts, batches, max_new_tokens, t, top_k, seed, advance)
            ppl = np.zeros(len(prompts))
            for batch in batches:
                prompt = torch.tensor([prompts[i] for i in batch], device=device)
                cont = torch.tensor([generated.ids[i] for i in batch], device=device)
                ppl[batch] = torch.exp(_nll(_continuation_logprobs(model, prompt, cont), cont)).double().cpu().numpy()
                advance()
            values = _per_prompt_metrics(generated, ppl)
            rows.append({
                "temperature": t,
                "metrics": _describe_metrics(values, seed),
                "r_per_layer": _r_per_layer(generated),
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
        "markdown": _md_table(["T"] + [METRIC_LABELS[m] for m in quality], table_rows),
        "device": str(device),
    }
    return _write_outputs(files, result, lambda path: _plot_temperature(result, path))


def _plot_temperature(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .reporting import _save

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
    fig.suptitle(f"Temperature sweep: n = {result['n_prompts']} prompts, {result['max_new_tokens']} new tokens, mean ± 95% CI")
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Validation passes: CE, R and u per token
# --------------------------------------------------------------------------------------------


@dataclass
class _TokenStats:
    ce: np.ndarray  # (tokens,)
    orders: np.ndarray | None  # (layers, tokens)
    u: np.ndarray | None  # (layers, tokens)

    @property
    def val_ce(self) -> float:
        return float(self.ce.mean())


def _check_eval_shape(model, val_ids, batch_size: int, seq_len: int, max_batches: int) -> None:
    from .data import check_length

    if batch_size < 1 or max_batches < 1:
        raise PhaseLMError(f"batch size and number of batches must be at least 1, got {batch_size} and {max_batches}")
    _check_positions(model, seq_len, f"seq_len {seq_len}")
    check_length(val_ids, seq_len, "validation split")


@torch.no_grad()
def _token_stats(model, val_ids, batch_size: int, seq_len: int, max_batches: int, advance=lambda: None) -> _TokenStats:
    from .data import sequential_batches

    device = _device(model)
    oscillators = has_oscillators(model)
    ce, orders, us = [], [], []
    for i, (x, y) in enumerate(sequential_batches(val_ids, batch_size, seq_len)):
        if i >= max_batches:
            break
        out = model(input_ids=x.to(device), output_orders=True) if oscillators else model(input_ids=x.to(device))
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), y.to(device).flatten(), reduction="none")
        ce.append(loss.cpu())
        if oscillators:
            orders.append(out.orders.float().transpose(0, 1).flatten(1).cpu())  # (L, B·T)
            us.append(out.u.float().transpose(0, 1).flatten(1).cpu())
        advance()
    return _TokenStats(
        torch.cat(ce).double().numpy(),
        torch.cat(orders, 1).double().numpy() if orders else None,
        torch.cat(us, 1).double().numpy() if us else None,
    )


def _n_batches(val_ids, batch_size: int, seq_len: int, max_batches: int) -> int:
    windows = (len(val_ids) - 1) // seq_len
    return min(max_batches, -(-windows // batch_size))


def _u_summary(stats: _TokenStats, bounds: tuple[float, float] | None) -> dict:
    if stats.u is None:
        return {"u_mean": None, "u_std": None, "u_observed_min": None, "u_observed_max": None, "u_at_lower": None, "u_at_upper": None, "u_at_bounds": None}
    u = stats.u
    out = {"u_mean": float(u.mean()), "u_std": float(u.std()), "u_observed_min": float(u.min()), "u_observed_max": float(u.max())}
    if bounds is None:
        out.update(u_at_lower=None, u_at_upper=None, u_at_bounds=None)
    else:
        # clamp returns the bound itself, computed in float32: compare in float32
        lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
        u32 = u.astype(np.float32)
        lower, upper = float(np.mean(u32 <= lo)), float(np.mean(u32 >= hi))
        out.update(u_at_lower=lower, u_at_upper=upper, u_at_bounds=lower + upper)
    return out


def _r_summary(stats: _TokenStats) -> dict:
    if stats.orders is None:
        return {"r_mean": None, "r_std": None, "r_per_layer": None}
    return {"r_mean": float(stats.orders.mean()), "r_std": float(stats.orders.std()), "r_per_layer": stats.orders.mean(1).tolist()}


def _trained_bounds(model) -> tuple[float, float] | None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", "") == "kssm" and cfg.bistable:
        return (float(cfg.u_min), float(cfg.u_max))
    return None


# --------------------------------------------------------------------------------------------
# Clamp sweep
# --------------------------------------------------------------------------------------------


def clamp_sweep(
    model: nn.Module,
    val_ids: torch.Tensor,
    bounds: Sequence[tuple[float, float]] = DEFAULT_BOUNDS,
    batch_size: int = 16,
    seq_len: int = 256,
    max_batches: int = 20,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Evaluate a trained K-SSM with u clamped to each (u_min, u_max) — at evaluation time only.

    The first row is the model as trained. Each row: validation CE and perplexity, R mean/std
    (and per layer), u mean/std/min/max, and the share of positions whose u sits at the lower
    or upper bound. Bounds need u_min < u_max, and u_min > 0 for a bistable model.
    Writes clamp.json and clamp.png.
    """
    banks = require_oscillators(model, "a clamp sweep")
    if getattr(getattr(model, "config", None), "model_type", "") != "kssm":
        raise PhaseLMError("a clamp sweep needs a K-SSM model (bounds of its bistable u)")
    bistable = all(b.cfg.bistable for b in banks)
    bounds = [check_clamp_bounds(lo, hi, bistable=bistable) for lo, hi in (_pair(b) for b in bounds)]
    if not bounds:
        raise PhaseLMError("give at least one pair of bounds, e.g. 0.1:10")
    _check_eval_shape(model, val_ids, batch_size, seq_len, max_batches)
    files = prepare_outputs(out_dir, "clamp")
    per_pass = _n_batches(val_ids, batch_size, seq_len, max_batches)
    trained = _trained_bounds(model)
    first = "as trained" + (f" [{trained[0]:g}, {trained[1]:g}]" if trained else " (no clamp)")
    conditions: list[tuple[str, tuple[float, float] | None]] = [(first, None)] + [(f"[{lo:g}, {hi:g}]", (lo, hi)) for lo, hi in bounds]
    rows = []
    with _eval_mode(model), _progress(progress) as bar:
        task = bar.add_task("clamp sweep", total=per_pass * len(conditions), status="")
        for label, pair in conditions:
            bar.update(task, status=label)
            ctx = override_clamp(model, *pair) if pair is not None else contextlib.nullcontext()
            with ctx:
                stats = _token_stats(model, val_ids, batch_size, seq_len, max_batches, lambda: bar.update(task, advance=1))
            active = pair if pair is not None else _trained_bounds(model)
            rows.append({
                "bounds": label,
                "u_min": None if active is None else active[0],
                "u_max": None if active is None else active[1],
                "trained": pair is None,
                "val_ce": stats.val_ce,
                "val_ppl": math.exp(min(stats.val_ce, 50.0)),
                **_r_summary(stats),
                **_u_summary(stats, active),
                "tokens": int(stats.ce.size),
            })
    header = ["bounds", "val loss", "val ppl", "R mean", "R std", "u mean", "u std", "u at bounds"]
    table = [[r["bounds"], r["val_ce"], r["val_ppl"], r["r_mean"], r["r_std"],
              r["u_mean"], r["u_std"], r["u_at_bounds"]] for r in rows]
    result = {
        "eval": "clamp_sweep",
        "command": command,
        "model": model_name,
        "note": CLAMP_NOTE,
        "trained_bistable": bistable,
        "trained_bounds": _trained_bounds(model),
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "rows": rows,
        "markdown": "Evaluation-time clamp sweep (not retraining).\n\n" + _md_table(header, table),
        "device": str(_device(model)),
    }
    return _write_outputs(files, result, lambda path: _plot_clamp(result, path))


def _pair(bound) -> tuple[float, float]:
    try:
        lo, hi = bound
    except (TypeError, ValueError):
        raise PhaseLMError(f"clamp bounds must be pairs (u_min, u_max), got {bound!r}") from None
    return lo, hi


def parse_bounds(text: str) -> tuple[float, float]:
    """``"0.1:10"`` → (0.1, 10.0)."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise PhaseLMError(f"bad bounds {text!r}; write u_min:u_max, e.g. 0.1:10") from None


def _plot_clamp(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .reporting import _save

    rows = result["rows"]
    labels = [r["bounds"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(x, [r["val_ce"] for r in rows], color="tab:blue", marker="o")
    axes[0].plot([0], [rows[0]["val_ce"]], color="tab:grey", marker="s", ms=10, ls="none", label="as trained")
    axes[0].legend(fontsize=8)
    axes[0].set_ylabel("validation loss (CE, nats)")
    axes[1].errorbar(x, [r["r_mean"] for r in rows], yerr=[r["r_std"] for r in rows], fmt="o", capsize=3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("R (mean ± std over layers and positions)")
    axes[2].errorbar(x, [r["u_mean"] for r in rows], yerr=[r["u_std"] for r in rows], fmt="o", capsize=3, label="u mean ± std")
    axes[2].set_ylabel("u (mean ± std)")
    share = axes[2].twinx()
    share.bar(x, [r["u_at_bounds"] or 0.0 for r in rows], alpha=0.25, color="tab:red")
    share.set_ylim(0, 1)
    share.set_ylabel("share of u at a bound (bars)", color="tab:red")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Clamp sweep of u — evaluation time only, not retraining (grey: as trained)")
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# R vs per-token loss
# --------------------------------------------------------------------------------------------


def order_loss_correlation(
    model: nn.Module,
    val_ids: torch.Tensor,
    batch_size: int = 16,
    seq_len: int = 256,
    max_batches: int = 20,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
    bins: int = 10,
) -> dict:
    """Correlate per-token cross-entropy with R (per layer and the layer mean) on validation text.

    Pearson and Spearman with p-values, plus the mean CE in each R decile. R at position t is
    paired with the loss of predicting token t+1 from position t. Writes correlation.json/.png.
    """
    require_oscillators(model, "an R–loss correlation")
    _check_eval_shape(model, val_ids, batch_size, seq_len, max_batches)
    files = prepare_outputs(out_dir, "correlation")
    with _eval_mode(model), _progress(progress) as bar:
        task = bar.add_task("R–loss correlation", total=_n_batches(val_ids, batch_size, seq_len, max_batches), status="")
        stats = _token_stats(model, val_ids, batch_size, seq_len, max_batches, lambda: bar.update(task, advance=1))
    if stats.ce.size < st.MIN_N:
        raise PhaseLMError(f"a correlation needs at least {st.MIN_N} tokens, got {stats.ce.size}")
    series = {f"layer {i}": stats.orders[i] for i in range(stats.orders.shape[0])}
    series["mean over layers"] = stats.orders.mean(0)
    layers = []
    for name, r in series.items():
        layers.append({"layer": name, **st.correlation(r, stats.ce).to_dict(), "r_mean": float(r.mean()), "r_std": float(r.std()),
                       "binned": _binned(r, stats.ce, bins)})
    table = [[row["layer"], row["n"], row["pearson_r"], row["pearson_p"], row["spearman_rho"], row["spearman_p"], row["r_mean"]] for row in layers]
    result = {
        "eval": "order_loss_correlation",
        "command": command,
        "model": model_name,
        "note": CORRELATION_NOTE,
        "tokens": int(stats.ce.size),
        "val_ce": stats.val_ce,
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "layers": layers,
        "markdown": _md_table(["R of", "n", "Pearson r", "p", "Spearman ρ", "p", "R mean"], table),
        "device": str(_device(model)),
    }
    return _write_outputs(files, result, lambda path: _plot_correlation(result, series, stats.ce, path))


def _binned(r: np.ndarray, ce: np.ndarray, bins: int) -> list[dict]:
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return [{"r_low": float(r.min()), "r_high": float(r.max()), "n": int(r.size), "ce_mean": float(ce.mean())}]
    which = np.clip(np.searchsorted(edges, r, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        mask = which == b
        if mask.any():
            out.append({"r_low": float(edges[b]), "r_high": float(edges[b + 1]), "n": int(mask.sum()), "ce_mean": float(ce[mask].mean())})
    return out


def _plot_correlation(result: dict, series: dict, ce: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .reporting import _save

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
        ax.plot(centers, [b["ce_mean"] for b in info["binned"]], color="red", marker="o", ms=3, label="mean CE per R decile")
        ax.set_title(f"{name}: r = {_fmt(info['pearson_r'], 3)}, ρ = {_fmt(info['spearman_rho'], 3)}", fontsize=9)
        ax.set_xlabel("R")
        ax.set_ylabel("per-token CE (nats)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"R vs per-token loss on validation text ({result['tokens']:,} tokens)")
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# Ablation table
# --------------------------------------------------------------------------------------------


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
        _check_eval_shape(s.model, s.validation_ids(), batch_size, seq_len, max_batches)
    rows = []
    with _progress(progress) as bar:
        total = sum(_n_batches(s.validation_ids(), batch_size, seq_len, max_batches) for s in subjects)
        task = bar.add_task("ablation", total=total, status="")
        for name, s in zip(names, subjects):
            bar.update(task, status=name)
            with _eval_mode(s.model):
                stats = _token_stats(s.model, s.validation_ids(), batch_size, seq_len, max_batches, lambda: bar.update(task, advance=1))
            r = _r_summary(stats)
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
                **_u_summary(stats, _trained_bounds(s.model)),
                "tokens": int(stats.ce.size),
                "val_ce_at_training": _summary_val_ce(s),
            })
    header = ["run", "variant", "params", "val loss", "val ppl", "R mean", "R std", "u mean", "u std", "u at bounds"]
    table = [[r["run"], r["variant"], f"{r['parameters']:,}", r["val_ce"], r["val_ppl"], r["r_mean"], r["r_std"], r["u_mean"], r["u_std"],
              r["u_at_bounds"]] for r in rows]
    notes = [f"Validation CE on up to {max_batches} batches of {batch_size} × {seq_len} tokens of each run's validation split; "
             "— = not defined for that model (GPT has no R or u; a monostable K-SSM has no clamp bounds)."]
    if len({(r["tokenizer"], r["corpus"]) for r in rows}) > 1:
        notes.append("The runs use different corpora or tokenizers: their losses are not directly comparable.")
    result = {
        "eval": "ablation_table",
        "command": command,
        "batches": {"batch_size": batch_size, "seq_len": seq_len, "max_batches": max_batches},
        "rows": rows,
        "notes": notes,
        "markdown": _md_table(header, table) + "\n\n" + "\n".join(notes),
        "device": str(_device(subjects[0].model)),
    }
    return _write_outputs(files, result, lambda path: _plot_ablation(result, path))


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name if p.resolve().name != "model" else p.resolve().parent.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def _summary_val_ce(subject: EvalSubject) -> float | None:
    run = subject.model_dir.parent
    try:
        return float(json.loads((run / "summary.json").read_text(encoding="utf-8"))["val_ce"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plot_ablation(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .reporting import _save

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
    _save(fig, path)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PhaseLMError(f"bad {what} {text!r}; write comma-separated numbers, e.g. 0,0.8,1.0") from None


def iter_bounds(items: Iterable[str]) -> list[tuple[float, float]]:
    return [parse_bounds(t) for item in items for t in item.split(",") if t.strip()]
