"""Blind and measured generation.

"Measured" only records what the model computes anyway: R of the position that produced each
token (from the graft's recording), U of the distribution the token was drawn from, and its
tone. The forward computation is identical in both modes, so with the same seed the same text
comes out; any blind-vs-measured difference in the seeds came from differing code paths.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .tokenizers import Tokenizer
from .errors import PhaseLMError
from .graft import Graft
from .observables import normalized_entropy, tone_of


@dataclass
class TokenReading:
    token: str
    id: int
    r: float | None  # None when the model has no oscillators
    u: float
    ru: float | None
    tone: str | None


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    readings: list[TokenReading] | None  # per generated token, measured mode only

    def to_json(self) -> dict:
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


def _position_limit(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0 and (name != "max_position_embeddings" or getattr(config, "position_embedding", True)):
            return value
    return None


@torch.no_grad()
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
    """Sample a continuation of ``prompt`` with the model's cached ``generate``.

    ``temperature = 0`` decodes greedily. Sampling uses its own RNG stream seeded by ``seed``
    so blind and measured runs with one seed are comparable token for token.
    """
    check_sampling(max_new_tokens, temperature, top_k)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise PhaseLMError("the prompt encodes to no tokens; pass a non-empty prompt")
    vocab = model.get_input_embeddings().num_embeddings
    if max(ids) >= vocab:
        raise PhaseLMError(f"the prompt has token id {max(ids)} but the model's vocabulary has {vocab}; use the model's own tokenizer")
    limit = _position_limit(model)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise PhaseLMError(
            f"the prompt ({len(ids)} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's {limit} positions; "
            "ask for fewer tokens or a shorter prompt"
        )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        attention_mask=torch.ones_like(input_ids),
        pad_token_id=0,
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        return_dict_in_generate=True,
        output_logits=True,
    )
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=top_k or 0)
    if tokenizer.vocab_size < vocab:
        # A model wider than its tokenizer (random weights of a published shape under a char
        # tokenizer) must not emit ids the tokenizer cannot decode.
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([_Decodable(tokenizer.vocab_size)])
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if measured and handle is not None:
            with handle.record() as recording:
                out = model.generate(input_ids, **kwargs)
            orders = recording.sequence()[0]
        else:
            out = model.generate(input_ids, **kwargs)
    new_ids = out.sequences[0, len(ids) :].tolist()
    text = tokenizer.decode(new_ids)
    if not measured:
        return Generation(prompt, text, None)
    readings = []
    for i, (token_id, logits) in enumerate(zip(new_ids, out.logits)):
        u = float(normalized_entropy(logits[0]))
        # Token i was drawn from the prediction at position len(ids) - 1 + i.
        r = float(orders[len(ids) - 1 + i]) if handle is not None else None
        readings.append(
            TokenReading(
                token=tokenizer.decode([token_id]),
                id=token_id,
                r=r,
                u=u,
                ru=r * u if r is not None else None,
                tone=tone_of(r).name if r is not None else None,
            )
        )
    return Generation(prompt, text, readings)
