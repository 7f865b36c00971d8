"""Prompts, batched cached generation, scoring and the text metrics (distinct-n, repetition)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import statistics as st
from ..errors import PhaseLMError
from ..metrics import TEXT_METRICS, distinct_n, text_metrics  # noqa: F401  (re-exported: phaselm.evals)
from .outputs import model_device


def validation_prompts(val_ids: torch.Tensor, n: int = 50, prompt_tokens: int = 32) -> list[list[int]]:
    """``n`` prompts of ``prompt_tokens`` tokens, evenly spaced over the validation split."""
    if n < st.MIN_N:
        raise PhaseLMError(f"paired statistics need at least {st.MIN_N} prompts, got {n}; use --prompts 50 or more")
    if prompt_tokens < 1:
        raise PhaseLMError(f"prompt length must be at least 1 token, got {prompt_tokens}")
    room = len(val_ids) - prompt_tokens
    if room + 1 < n:
        raise PhaseLMError(
            f"the validation split has {len(val_ids)} tokens: too short for {n} distinct prompts of {prompt_tokens} "
            "tokens; use fewer or shorter prompts"
        )
    starts = [(i * room) // (n - 1) for i in range(n)]
    return [val_ids[s : s + prompt_tokens].tolist() for s in starts]


def sample(
    model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
    seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Continue a batch of equal-length prompts (B, P) with the model's cache
    (:func:`phaselm.generation.sample_tokens`, exactly ``max_new_tokens`` each).

    Returns the new tokens (B, M) and, for models with oscillators (K-SSM's banks, a grafted
    core), R of the positions that produced them (B, sites, M); both on the CPU.
    ``temperature = 0`` decodes greedily.
    """
    from ..generation import sample_tokens

    sampled = sample_tokens(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            seed=seed)
    return sampled.ids, sampled.orders


@torch.no_grad()
def continuation_logprobs(model: nn.Module, prompt: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """log p(· | prefix) at the M positions that predict the continuation: (B, M, V), float32."""
    full = torch.cat([prompt, continuation.to(prompt.device)], 1)
    logits = model(input_ids=full).logits[:, prompt.shape[1] - 1 : -1]
    return F.log_softmax(logits.float(), -1)


def mean_nll(logprobs: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """Mean −log p of the continuation per sequence: (B,)."""
    return -logprobs.gather(-1, continuation.to(logprobs.device)[..., None]).squeeze(-1).mean(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities; exactly 0 when they are equal."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


def check_decoding(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """One-line errors for decoding settings an eval cannot use (max_new_tokens < 4, temperature < 0, top_k < 0)."""
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


def generate_all(model, prompts, batches, max_new_tokens, temperature, top_k, seed, advance) -> _Generated:
    """Continuations of every prompt, batch by batch (seed + the batch's first index), with R per
    layer and token (n, L, M) when the model has oscillators."""
    device = model_device(model)
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


def per_prompt_metrics(generated: _Generated, perplexity: np.ndarray) -> dict[str, list]:
    """Each text metric, perplexity and (with oscillators) mean R, one value per prompt."""
    rows = [text_metrics(c) for c in generated.ids]
    out = {m: [r[m] for r in rows] for m in TEXT_METRICS}
    out["perplexity"] = perplexity.tolist()
    out["mean_r"] = generated.orders.mean(axis=(1, 2)).tolist() if generated.orders is not None else None
    return out


def r_per_layer(generated: _Generated) -> list[float] | None:
    """Mean R per layer over prompts and tokens, or None without oscillators."""
    return generated.orders.mean(axis=(0, 2)).tolist() if generated.orders is not None else None


def describe_metrics(values: dict[str, list | None], seed: int) -> dict:
    """n, mean, spread and a bootstrap CI of each metric's per-prompt values (None stays None)."""
    return {m: (st.describe(v, seed=seed) if v is not None else None) for m, v in values.items()}
