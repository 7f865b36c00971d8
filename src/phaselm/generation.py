"""The one sampling loop (:func:`sample_tokens`) and single-prompt generation on it.

Every path that samples text — :meth:`phaselm.subject.Subject.generate`, ``phaselm generate``,
the evals, the protocols and the live view — runs :func:`sample_tokens`: the model's own cached
``generate`` (so every cache a model keeps, KV, recurrent state or a grafted core's phases,
works as it does in Hugging Face), seeded under ``torch.random.fork_rng``, with a forward hook
that reads what the model computes anyway and a streamer that hands each token over as soon
as it is chosen. "Measured" only records: R of the position that produced each token (from the
model's oscillator sites: K-SSM's banks or a grafted Phase Core), U of the distribution the token
was drawn from (before temperature), and its tone. The forward computation is identical in
both modes, so with the same seed the same text comes out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import PhaseLMError
from .graft import Graft
from .interventions import measure, oscillator_sites
from .observables import normalized_entropy, tone_of
from .tokenizers import Tokenizer


@dataclass
class TokenReading:
    """One generated token with the readings of the step that drew it (R, U, R·U, tone)."""
    token: str
    id: int
    r: float | None  # None when the model has no oscillators
    u: float
    ru: float | None
    tone: str | None


def token_reading(tokenizer: Tokenizer, token_id: int, r: float | None, u: float) -> TokenReading:
    """One token's reading: R (None without oscillators), U, R·U and R's tone."""
    r = r if r is None or math.isfinite(r) else None
    return TokenReading(
        token=tokenizer.decode([token_id]), id=token_id, r=r, u=u,
        ru=r * u if r is not None else None, tone=tone_of(r).name if r is not None else None,
    )


@dataclass
class Generation:
    """A prompt's continuation, with per-token readings when generated in measured mode."""
    prompt: str
    text: str  # the continuation only
    readings: list[TokenReading] | None  # per generated token, measured mode only

    def to_json(self) -> dict:
        """The JSON form `phaselm generate --json` prints (mode: blind or measured)."""
        data = {"prompt": self.prompt, "text": self.text, "mode": "measured" if self.readings is not None else "blind"}
        if self.readings is not None:
            data["tokens"] = [asdict(r) for r in self.readings]
        return data


class _Decodable:
    """Logits processor: ids at or past the tokenizer's vocabulary get probability zero."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.vocab_size :] = float("-inf")
        return scores


MAX_NEW_TOKENS = 100_000  # a bound on one call (a recurrent model has no position limit of its own)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """One-line errors for sampling settings no model can honour (checked before any loading)."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise PhaseLMError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS:,}, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise PhaseLMError(f"temperature must be a finite number ≥ 0 (0 decodes greedily), got {temperature}")
    if top_k is not None and top_k < 0:
        raise PhaseLMError(f"top_k must be ≥ 0 (0 keeps every token), got {top_k}")


def position_limit(model: nn.Module) -> int | None:
    """Positions the model can take, where it has a limit (GPT-2's n_positions, K-SSM with a
    position embedding); recurrent models (Mamba, K-SSM without one) have none."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        counts_positions = name != "max_position_embeddings" or getattr(config, "position_embedding", True)
        if isinstance(value, int) and value > 0 and counts_positions:
            return value
    return None


@dataclass
class Step:
    """One generated token of every row, handed to ``on_step`` as soon as it is chosen."""

    index: int  # 0 for the first generated token
    ids: torch.Tensor  # (B,) the chosen tokens, CPU
    u: torch.Tensor  # (B,) normalised entropy of the distribution they were drawn from, CPU
    r: torch.Tensor | None  # (B, sites) R of the producing position per oscillator site, CPU; None without


@dataclass
class Sampled:
    """What :func:`sample_tokens` returns (CPU tensors). Rows that met EOS before the others
    continue with the pad id, as in Hugging Face's ``generate``."""

    ids: torch.Tensor  # (B, M) the continuations
    u: torch.Tensor  # (B, M)
    # (B, sites, M) R of the producing positions; None without oscillators (or with them off)
    orders: torch.Tensor | None


class _Readings:
    """After each model call, the last position's U and the R its oscillator sites computed
    (recorded by :func:`phaselm.interventions.measure`, which only reads)."""

    def __init__(self, model: nn.Module, read_r: bool):
        self._stack = contextlib.ExitStack()
        self.measurement = self._stack.enter_context(measure(model)) if read_r and oscillator_sites(model) else None
        self.u: torch.Tensor | None = None
        self.r: torch.Tensor | None = None
        self._seen: dict[int, int] = {}
        self._stack.callback(model.register_forward_hook(self._model_hook).remove)

    def _model_hook(self, module, args, output):
        logits = output.logits if hasattr(output, "logits") else output[0]
        self.u = normalized_entropy(logits[:, -1].detach()).cpu()
        self.r = None
        if self.measurement is None:
            return
        calls = self.measurement.orders
        # A site that did not run (a grafted core switched off) leaves no R for this step.
        if all(len(c) > self._seen.get(layer, 0) for layer, c in calls.items()):
            self.r = torch.stack([calls[layer][-1][:, -1] for layer in sorted(calls)], 1)
        self._seen = {layer: len(c) for layer, c in calls.items()}

    def remove(self) -> None:
        self._stack.close()


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    eos_token_id: int | None = None,
    vocab_limit: int | None = None,
    read_r: bool = True,
    on_step: Callable[[Step], None] | None = None,
) -> Sampled:
    """Continue a batch of prompts ``input_ids`` (B, P), left-padded where ``attention_mask``
    (B, P) has zeros, with the model's cached ``generate``: the one sampling loop.

    ``temperature = 0`` decodes greedily; ``top_k`` 0 or None keeps every token. The global RNG
    is seeded with ``seed`` inside ``fork_rng`` (the caller's stream is untouched), so sampling
    and any noise inside the model are reproducible. Without ``eos_token_id`` exactly
    ``max_new_tokens`` come out. ``vocab_limit`` forbids ids at or past it (a model wider than
    its tokenizer). ``on_step`` receives each :class:`Step` as it is chosen (an exception it
    raises stops the generation and propagates).
    """
    from transformers.generation.streamers import BaseStreamer

    device = input_ids.device
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, attention_mask=mask, pad_token_id=0,
                  eos_token_id=eos_token_id)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=top_k or 0)
    vocab = model.get_input_embeddings().num_embeddings
    if vocab_limit is not None and vocab_limit < vocab:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([_Decodable(vocab_limit)])
    ids, us, orders = [], [], []
    readings = _Readings(model, read_r)

    class Streamer(BaseStreamer):
        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate() first hands over the prompt
                self.prompt_seen = True
                return
            step = Step(len(ids), value.reshape(-1).cpu(), readings.u, readings.r)
            ids.append(step.ids)
            us.append(step.u)
            orders.append(step.r)
            if on_step is not None:
                on_step(step)

        def end(self):
            pass

    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model.generate(input_ids, streamer=Streamer(), **kwargs)
    finally:
        readings.remove()
    batch = input_ids.shape[0]
    if not ids:
        return Sampled(torch.zeros(batch, 0, dtype=torch.long), torch.zeros(batch, 0), None)
    have_r = all(r is not None for r in orders)
    return Sampled(torch.stack(ids, 1), torch.stack(us, 1), torch.stack(orders, -1) if have_r else None)


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
    handle: Graft | None = None,
    measured: bool = False,
) -> Generation:
    """Sample a continuation of ``prompt`` (one text) with :func:`sample_tokens`, stopping at
    the tokenizer's EOS. ``temperature = 0`` decodes greedily. Measured mode reads R from every
    oscillator site the model has (K-SSM's banks, a grafted core; ``handle`` is accepted for
    callers that hold one, the core is found on the model either way) as the mean over sites."""
    check_sampling(max_new_tokens, temperature, top_k)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise PhaseLMError("the prompt encodes to no tokens; pass a non-empty prompt")
    check_prompt_fits(model, ids, max_new_tokens)
    device = next(model.parameters()).device
    sampled = sample_tokens(
        model, torch.tensor([ids], device=device), max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        seed=seed, eos_token_id=getattr(tokenizer, "eos_token_id", None), vocab_limit=tokenizer.vocab_size,
        read_r=measured,
    )
    new_ids = sampled.ids[0].tolist()
    text = tokenizer.decode(new_ids)
    if not measured:
        return Generation(prompt, text, None)
    r = sampled.orders[0].mean(0).tolist() if sampled.orders is not None else [None] * len(new_ids)
    readings = [token_reading(tokenizer, t, r[i], float(sampled.u[0, i])) for i, t in enumerate(new_ids)]
    return Generation(prompt, text, readings)


def check_prompt_fits(model: nn.Module, ids: list[int], max_new_tokens: int) -> None:
    """One-line errors for a prompt (token ids) the model cannot take or continue that far."""
    vocab = model.get_input_embeddings().num_embeddings
    if max(ids) >= vocab:
        raise PhaseLMError(f"the prompt has token id {max(ids)} but the model's vocabulary has {vocab}; use the "
                           "model's own tokenizer")
    limit = position_limit(model)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise PhaseLMError(
            f"the prompt ({len(ids)} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's {limit} "
            "positions; ask for fewer tokens or a shorter prompt"
        )


def group_by_length(seqs: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indices of ``seqs`` grouped by length (batches that need no padding), ``size`` at a time, in order of
    first appearance."""
    if size < 1:
        raise PhaseLMError(f"batch size must be at least 1, got {size}")
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_length.setdefault(len(seq), []).append(i)
    return [idx[s : s + size] for idx in by_length.values() for s in range(0, len(idx), size)]


def prompt_token_ids(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Texts or token-id sequences → token ids; an empty prompt is a one-line error."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            ids = tokenizer.encode(p)
        else:
            ids = [int(i) for i in (p.tolist() if isinstance(p, torch.Tensor) else p)]
        if not ids:
            raise PhaseLMError("a prompt encodes to no tokens; pass non-empty prompts")
        out.append(ids)
    return out
