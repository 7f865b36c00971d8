"""The one model interface of the evals, the protocols and the CLI: a :class:`Subject` is an
opened run's model and tokenizer with what evaluating it needs (its graft, corpus and
validation split), built from :func:`phaselm.runs.open_run` by :func:`subject_of`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import PhaseLMError
from .generation import (
    Step,
    TokenReading,
    check_prompt_fits,
    check_sampling,
    group_by_length,
    prompt_token_ids,
    sample_tokens,
    token_reading,
)
from .observables import normalized_entropy, tone_of
from .runs import Run


@dataclass
class Continuation:
    """One prompt's continuation from :meth:`Subject.generate`."""

    prompt_ids: list[int]
    ids: list[int]  # the continuation (ends at EOS where generation stopped there)
    u: list[float]  # U of the distribution each token was drawn from
    # (sites, M) R of the positions that produced the tokens; None unless measured with oscillators
    r: torch.Tensor | None

    @property
    def mean_r(self) -> list[float] | None:
        """R per token, the mean over sites (None unless measured with oscillators)."""
        return self.r.mean(0).tolist() if self.r is not None else None

    def token_readings(self, tokenizer) -> list[TokenReading]:
        """Per token: text, id, R (mean over sites), U, R·U, tone."""
        r = self.mean_r or [None] * len(self.ids)
        return [token_reading(tokenizer, t, r[i], self.u[i]) for i, t in enumerate(self.ids)]


@dataclass
class Readings:
    """What one forward pass over a sequence of T tokens computes, per position."""

    logits: torch.Tensor  # (T, V) float32, CPU: position t predicts token t + 1
    u: torch.Tensor  # (T,) normalised entropy of each position's prediction
    r: torch.Tensor | None  # (sites, T) R per oscillator site; None without oscillators (or with them off)

    @property
    def tones(self) -> list[str] | None:
        """The tone of R (mean over sites) per position; None without oscillators."""
        return [tone_of(float(x)).name for x in self.r.mean(0)] if self.r is not None else None


@dataclass
class Score:
    """Log-probabilities of a continuation given its prompt (temperature 1)."""

    logprobs: torch.Tensor  # (M,) log p of each continuation token, float32, CPU

    @property
    def perplexity(self) -> float | None:
        """exp of the mean negative log-probability of the generated tokens (None if there are none)."""
        return float(torch.exp(-self.logprobs.mean())) if len(self.logprobs) else None


def left_padded(seqs: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, P) left-padded with 0 and the attention mask (B, P), 0 at padding."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Subject:
    """A model under evaluation. ``handle`` is the Phase Core's graft (None unless grafted);
    ``run_dir`` / ``model_dir`` / ``train_seq_len`` are None where there is no run / saved model."""

    model: Any
    tokenizer: Any
    handle: Any = None
    corpus: str | None = "tinyshakespeare"
    val_fraction: float = 0.1
    path: str = ""  # what the user passed
    run_dir: Path | None = None
    model_dir: Path | None = None
    train_seq_len: int | None = None
    _val_ids: torch.Tensor | None = None

    @property
    def target(self):
        """What interventions act on: the graft where there is one, else the model."""
        return self.handle if self.handle is not None else self.model

    @property
    def name(self) -> str:
        """The model's family as the intervention API names it (e.g. kssm, fusion, grafted mamba)."""
        from .interventions import structure

        return structure(self.target).name

    @property
    def arch(self) -> str:
        """The Hugging Face model_type (or class name)."""
        return str(getattr(self.model.config, "model_type", type(self.model).__name__))

    @property
    def variant(self) -> str:
        """A readable name for tables: K-SSM bistable / monostable / no-mixer (with "(Kuramoto mixer)"
        when that is its mixer), GPT-2, or the arch."""
        cfg = self.model.config
        if self.arch == "kssm":
            if cfg.mixer == "none":
                return "K-SSM no-mixer"
            name = "K-SSM bistable" if cfg.bistable else "K-SSM monostable"
            return name + " (Kuramoto mixer)" if cfg.mixer == "kuramoto" else name
        return {"gpt2": "GPT-2"}.get(self.arch, self.arch)

    def validation_ids(self) -> torch.Tensor:
        """The validation split of the corpus as token ids (1-D), encoded once."""
        if self._val_ids is None:
            from .corpora import load_text
            from .data import encode_split

            if self.corpus is None:
                raise PhaseLMError("this model has no corpus to draw validation windows from; give prompts as a file "
                                   "or list")
            _, self._val_ids = encode_split(self.tokenizer, load_text(self.corpus), self.val_fraction)
        return self._val_ids

    @property
    def device(self) -> torch.device:
        """The device the model's parameters are on."""
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence) -> list[list[int]]:
        """Texts or token-id sequences → token ids; an empty prompt is a one-line error."""
        return prompt_token_ids(self.tokenizer, prompts)

    def generate(
        self,
        prompts: Sequence,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        measured: bool = True,
        batch_size: int = 32,
        pad: bool = False,
        stop_at_eos: bool = False,
        on_step: Callable[[list[int], Step], None] | None = None,
    ) -> list[Continuation]:
        """Continue each prompt (texts or token ids) with :func:`phaselm.generation.sample_tokens`.

        Batches of ``batch_size``: prompts of one length together (no padding; the default, so a
        prompt's continuation does not depend on which others share its batch beyond its
        group), or with ``pad`` any prompts left-padded with an attention mask. Batch ``b``
        starting at prompt ``i`` is seeded with ``seed + i``. ``measured`` reads R per token
        where the model has oscillators (reading does not change the computation).
        ``stop_at_eos`` ends a continuation at the tokenizer's EOS; otherwise each has exactly
        ``max_new_tokens``. ``on_step(indices, step)`` gets each token of the batch holding
        the prompts ``indices`` as soon as it is chosen (streaming).
        """
        check_sampling(max_new_tokens, temperature, top_k)
        ids = self.encode(prompts)
        for p in ids:
            check_prompt_fits(self.model, p, max_new_tokens)
        if pad:
            if batch_size < 1:
                raise PhaseLMError(f"batch size must be at least 1, got {batch_size}")
            groups = [list(range(s, min(s + batch_size, len(ids)))) for s in range(0, len(ids), batch_size)]
        else:
            groups = group_by_length(ids, batch_size)
        eos = getattr(self.tokenizer, "eos_token_id", None) if stop_at_eos else None
        out: list = [None] * len(ids)
        for group in groups:
            input_ids, mask = left_padded([ids[i] for i in group], self.device)
            step_hook = (lambda step, group=group: on_step(group, step)) if on_step is not None else None
            sampled = sample_tokens(
                self.model, input_ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                seed=seed + group[0], eos_token_id=eos, vocab_limit=self.tokenizer.vocab_size, read_r=measured,
                on_step=step_hook,
            )
            for row, i in enumerate(group):
                new = sampled.ids[row].tolist()
                m = new.index(eos) + 1 if eos is not None and eos in new else len(new)
                r = sampled.orders[row, :, :m] if sampled.orders is not None else None
                out[i] = Continuation(ids[i], new[:m], sampled.u[row, :m].tolist(), r)
        return out

    @torch.no_grad()
    def readings(self, seqs: Sequence[Sequence[int]], batch_size: int = 32) -> list[Readings]:
        """One forward pass per batch of equal-length sequences (token ids) → per sequence its
        logits (T, V), U (T,) and R (sites, T) where the model has oscillators (K-SSM's banks,
        a grafted Phase Core), read by :func:`phaselm.interventions.measure`."""
        from .interventions import measure, oscillator_sites

        seqs = [list(s) for s in seqs]
        out: list = [None] * len(seqs)
        oscillators = bool(oscillator_sites(self.model))
        for group in group_by_length(seqs, batch_size):
            x = torch.tensor([seqs[i] for i in group], device=self.device)
            orders = None
            if oscillators:
                with measure(self.model) as m:
                    logits = self.model(input_ids=x).logits.float().cpu()
                calls = [m.orders[layer] for layer in sorted(m.orders)]
                if all(len(c) == 1 for c in calls):  # a site that did not run (core off) gives no R
                    orders = torch.stack([c[0] for c in calls], 1)  # (B, sites, T)
            else:
                logits = self.model(input_ids=x).logits.float().cpu()
            u = normalized_entropy(logits)
            for row, i in enumerate(group):
                out[i] = Readings(logits[row], u[row], orders[row] if orders is not None else None)
        return out

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
              batch_size: int = 32) -> list[Score]:
        """log p of each continuation token given its prompt and the tokens before it (token
        ids; temperature 1): one :class:`Score` (logprobs (M,), perplexity) per pair."""
        if len(prompts) != len(continuations):
            raise PhaseLMError(f"score needs one continuation per prompt, got {len(prompts)} prompts and "
                               f"{len(continuations)} continuations")
        read = self.readings([list(p) + list(c) for p, c in zip(prompts, continuations)], batch_size)
        out = []
        for reading, p, c in zip(read, prompts, continuations):
            # position t predicts token t + 1: the continuation is predicted from len(p) - 1 on
            logp = F.log_softmax(reading.logits[len(p) - 1 : len(p) - 1 + len(c)], -1)
            out.append(Score(logp.gather(-1, torch.tensor(list(c), dtype=torch.long)[:, None]).squeeze(-1)))
        return out


def subject_of(run: Run, corpus: str | None = None, val_fraction: float | None = None) -> Subject:
    """The Subject of an opened run; ``corpus`` / ``val_fraction`` override the run's."""
    return Subject(
        model=run.model, tokenizer=run.tokenizer, handle=run.graft, corpus=corpus or run.corpus,
        val_fraction=val_fraction if val_fraction is not None else run.val_fraction, path=str(run.path),
        run_dir=run.run_dir, model_dir=run.model_dir, train_seq_len=run.train_seq_len,
    )
