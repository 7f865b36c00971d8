"""How a protocol's subject (a :class:`phaselm.subject.Subject`) generates and scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import statistics as st
from ..errors import PhaseLMError
from ..subject import Subject, subject_of
from .spec import Protocol


def load_subject(path: str | os.PathLike, device: str | None = None) -> Subject:
    """Any run directory or model folder (opened by :func:`phaselm.runs.open_run`) → Subject."""
    from ..runs import open_run

    return subject_of(open_run(path, device))


@dataclass
class Sample:
    """One generated continuation of a prompt, with R recorded during generation in measured mode."""
    prompt_ids: list[int]
    ids: list[int]  # the continuation
    recorded_r: list[float] | None = None  # measured mode: R recorded during generation, per token (mean over sites)


def generate_sample(subject: Subject, text: str, seed: int, protocol: Protocol, measured: bool = False) -> Sample:
    """One continuation of ``text`` (blind or measured) with :meth:`Subject.generate`, stopping
    at the tokenizer's EOS; measured mode records R per token (mean over sites)."""
    (c,) = subject.generate([text], protocol.max_new_tokens, protocol.temperature, protocol.top_k or None, seed,
                            measured=measured, batch_size=1, stop_at_eos=True)
    return Sample(c.prompt_ids, c.ids, c.mean_r if measured else None)


def forward(subject: Subject, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (T, V) float32 and R (sites, T) of one sequence (R None without oscillators or
    when the grafted core is switched off): :meth:`Subject.readings`."""
    (reading,) = subject.readings([list(ids)])
    return reading.logits, reading.r


BATCHED_TYPES = ("kssm", "phaselm_fusion")  # models whose prompts a protocol decodes in batches


def generate_many(subject: Subject, prompts: list[list[int]], seed: int, protocol: Protocol,
                  batch_size: int = 32) -> list[list[int]]:
    """Continuations of many prompts (token ids) with one seed, by :meth:`Subject.generate`.
    K-SSM and fusion models decode in batches of equal-length prompts (exactly
    ``max_new_tokens`` each, batch starting at prompt i seeded with seed + i); other models
    (grafted HF models) one prompt at a time with ``seed``, stopping at EOS. Either way a
    condition and the unforced model see the same batches and the same seed, so they draw the
    same random numbers."""
    model_type = getattr(getattr(subject.model, "config", None), "model_type", "")
    settings = (protocol.max_new_tokens, protocol.temperature, protocol.top_k or None)
    if subject.handle is not None or model_type not in BATCHED_TYPES:
        return [subject.generate([p], *settings, seed, measured=False, batch_size=1, stop_at_eos=True)[0].ids
                for p in prompts]
    return [c.ids for c in subject.generate(prompts, *settings, seed, measured=False, batch_size=batch_size)]


def forward_many(subject: Subject, seqs: list[list[int]],
                 batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`forward` of many sequences, batched by length: (logits (T, V), R (sites, T) or None) each."""
    return [(r.logits, r.r) for r in subject.readings(seqs, batch_size)]


def perplexity_many(subject: Subject, prompts: list[list[int]], continuations: list[list[int]]) -> list[float | None]:
    """exp(mean −log p) of each continuation given its prompt, under ``subject`` (temperature 1)."""
    return [s.perplexity for s in subject.score(prompts, continuations)]


def producing_positions(prompt_len: int, m: int) -> slice:
    """The positions whose predictions produced the m generated tokens."""
    return slice(prompt_len - 1, prompt_len - 1 + m)


def protocol_prompts(protocol: Protocol, subject: Subject) -> list[str]:
    """The protocol's prompt texts: its own, or windows decoded from the model's validation split."""
    if protocol.prompt_source == "validation":
        from ..evals import validation_prompts

        windows = validation_prompts(subject.validation_ids(), max(protocol.prompt_count, st.MIN_N),
                                     protocol.prompt_tokens)
        return [subject.tokenizer.decode(w) for w in windows[: protocol.prompt_count]]
    return list(protocol.prompt_texts)


def check_prompts(subject: Subject, texts: list[str], extra: int) -> None:
    """One-line errors for a prompt that encodes to nothing, leaves the vocabulary, or with ``extra``
    generated tokens exceeds the model's positions."""
    from ..evals.outputs import check_positions

    vocab = subject.model.get_input_embeddings().num_embeddings
    for text in texts:
        ids = subject.tokenizer.encode(text)
        if not ids:
            raise PhaseLMError(f"the prompt {text!r} encodes to no tokens; use non-empty prompts")
        if max(ids) >= vocab:
            raise PhaseLMError(f"the prompt {text[:30]!r} has token id {max(ids)} but the model's vocabulary has "
                               f"{vocab}")
    longest = max(len(subject.tokenizer.encode(t)) for t in texts)
    check_positions(subject.model, longest + extra, "prompt + generation")


def pairing_units(protocol: Protocol, n_prompts: int) -> list[tuple[int, int]]:
    """The pairing units: (prompt index, seed), prompts outer."""
    return [(i, seed) for i in range(n_prompts) for seed in protocol.seeds]


