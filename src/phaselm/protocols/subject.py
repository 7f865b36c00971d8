"""How a protocol's subject (a :class:`phaselm.subject.Subject`) generates and scores."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import statistics as st
from ..errors import PhaseLMError
from ..interventions import measure
from ..subject import Subject, subject_of
from .spec import Protocol


def load_subject(path: str | os.PathLike, device: str | None = None) -> Subject:
    """Any run directory or model folder (opened by :func:`phaselm.runs.open_run`) → Subject."""
    from ..runs import open_run

    return subject_of(open_run(path, device))


@contextlib.contextmanager
def _capture_sequences(model):
    """Keep the token ids ``model.generate`` returns (generate() itself returns only text in
    blind mode); reads the result, changes nothing."""
    original = model.generate
    had_own = "generate" in model.__dict__
    captured: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.append(out.sequences.detach().cpu())
        return out

    model.__dict__["generate"] = spy
    try:
        yield captured
    finally:
        if had_own:
            model.__dict__["generate"] = original
        else:
            del model.__dict__["generate"]


@dataclass
class Sample:
    prompt_ids: list[int]
    ids: list[int]  # the continuation
    recorded_r: list[float] | None = None  # measured mode: R recorded during generation, per token (mean over sites)


def generate_sample(subject: Subject, text: str, seed: int, protocol: Protocol, measured: bool = False) -> Sample:
    """One continuation of ``text`` with :func:`phaselm.generation.generate` (blind or measured)."""
    from ..generation import generate

    prompt_ids = subject.tokenizer.encode(text)
    args = (subject.model, subject.tokenizer, text, protocol.max_new_tokens, protocol.temperature, protocol.top_k or None, seed)
    recorded = None
    with _capture_sequences(subject.model) as captured:
        if measured and subject.handle is None:
            with measure(subject.model) as m:
                generation = generate(*args, handle=None, measured=True)
            orders = m.sequence()
            if orders.numel():
                per_position = orders[0].mean(0)
                recorded = [float(per_position[len(prompt_ids) - 1 + i]) for i in range(len(generation.readings))]
        else:
            generation = generate(*args, handle=subject.handle, measured=measured)
            if measured and subject.handle is not None:
                recorded = [r.r for r in generation.readings]
    sequence = captured[-1][0].tolist()
    return Sample(prompt_ids, sequence[len(prompt_ids):], recorded)


@torch.no_grad()
def forward(subject: Subject, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (T, V) float32 and R (sites, T) of one sequence (R None without oscillators or
    when the grafted core is switched off)."""
    device = next(subject.model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    if subject.handle is not None:
        subject.handle.last = None
    out = subject.model(input_ids=x)
    logits = out.logits[0].float().cpu()
    orders = None
    if subject.handle is not None:
        if subject.handle.last is not None:
            orders = subject.handle.last.order.float().cpu()  # (1, T)
    elif getattr(out, "orders", None) is not None:
        orders = out.orders[0].float().cpu()  # (L, T)
    return logits, orders


BATCHED_TYPES = ("kssm", "phaselm_fusion")  # models whose cache evals.sample drives directly


def _batch_groups(seqs: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indices grouped by length (no padding), ``size`` at a time, in order."""
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_length.setdefault(len(seq), []).append(i)
    return [idx[s : s + size] for idx in by_length.values() for s in range(0, len(idx), size)]


def generate_many(
    subject: Subject, prompts: list[list[int]], seed: int, protocol: Protocol, texts: list[str] | None = None, batch_size: int = 32
) -> list[list[int]]:
    """Continuations of many prompts with one seed. K-SSM and fusion models decode in batches of
    equal-length prompts with their recurrent cache (:func:`phaselm.evals.sample`, exactly
    ``max_new_tokens`` each); other models (grafted HF models) one prompt at a time through
    :func:`phaselm.generation.generate`. Either way a condition and the unforced model see the
    same batches and the same seed, so they draw the same random numbers."""
    from ..evals import sample

    model_type = getattr(getattr(subject.model, "config", None), "model_type", "")
    if subject.handle is not None or model_type not in BATCHED_TYPES:
        texts = texts if texts is not None else [subject.tokenizer.decode(p) for p in prompts]
        out = []
        for text, p in zip(texts, prompts):
            generated = generate_sample(subject, text, seed, protocol)
            if generated.prompt_ids != list(p):
                raise PhaseLMError(f"the prompt {text[:30]!r} does not encode back to the same tokens; use prompts the tokenizer round-trips")
            out.append(generated.ids)
        return out
    device = next(subject.model.parameters()).device
    out: list = [None] * len(prompts)
    for group in _batch_groups(prompts, batch_size):
        new, _ = sample(subject.model, torch.tensor([prompts[i] for i in group], device=device), protocol.max_new_tokens,
                        protocol.temperature, protocol.top_k or None, seed + group[0])
        for row, i in enumerate(group):
            out[i] = new[row].tolist()
    return out


@torch.no_grad()
def forward_many(subject: Subject, seqs: list[list[int]], batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`forward` of many sequences, batched by length: (logits (T, V), R (sites, T) or None) each."""
    device = next(subject.model.parameters()).device
    out: list = [None] * len(seqs)
    for group in _batch_groups(seqs, batch_size):
        if subject.handle is not None:
            subject.handle.last = None
        result = subject.model(input_ids=torch.tensor([seqs[i] for i in group], device=device))
        logits = result.logits.float().cpu()
        if subject.handle is not None:
            orders = subject.handle.last.order.float().cpu()[:, None] if subject.handle.last is not None else None
        else:
            orders = result.orders.float().cpu() if getattr(result, "orders", None) is not None else None
        for row, i in enumerate(group):
            out[i] = (logits[row], orders[row] if orders is not None else None)
    return out


def perplexity_many(subject: Subject, prompts: list[list[int]], continuations: list[list[int]]) -> list[float | None]:
    """exp(mean −log p) of each continuation given its prompt, under ``subject`` (temperature 1)."""
    scored = forward_many(subject, [p + c for p, c in zip(prompts, continuations)])
    out = []
    for (logits, _), p, c in zip(scored, prompts, continuations):
        if not c:
            out.append(None)
            continue
        logp = F.log_softmax(logits[_producing(len(p), len(c))], -1)
        out.append(float(torch.exp(-logp.gather(-1, torch.tensor(c)[:, None]).mean())))
    return out


def _producing(prompt_len: int, m: int) -> slice:
    """The positions whose predictions produced the m generated tokens."""
    return slice(prompt_len - 1, prompt_len - 1 + m)


def _prompts(protocol: Protocol, subject: Subject) -> list[str]:
    if protocol.prompt_source == "validation":
        from ..evals import validation_prompts

        windows = validation_prompts(subject.validation_ids(), max(protocol.prompt_count, st.MIN_N), protocol.prompt_tokens)
        return [subject.tokenizer.decode(w) for w in windows[: protocol.prompt_count]]
    return list(protocol.prompt_texts)


def _check_prompts(subject: Subject, texts: list[str], extra: int) -> None:
    from ..evals.outputs import _check_positions

    vocab = subject.model.get_input_embeddings().num_embeddings
    for text in texts:
        ids = subject.tokenizer.encode(text)
        if not ids:
            raise PhaseLMError(f"the prompt {text!r} encodes to no tokens; use non-empty prompts")
        if max(ids) >= vocab:
            raise PhaseLMError(f"the prompt {text[:30]!r} has token id {max(ids)} but the model's vocabulary has {vocab}")
    longest = max(len(subject.tokenizer.encode(t)) for t in texts)
    _check_positions(subject.model, longest + extra, "prompt + generation")


def _units(protocol: Protocol, n_prompts: int) -> list[tuple[int, int]]:
    """The pairing units: (prompt index, seed), prompts outer."""
    return [(i, seed) for i in range(n_prompts) for seed in protocol.seeds]


