"""The one model interface of the evals, the protocols and the CLI: a :class:`Subject` is an
opened run's model and tokenizer with what evaluating it needs (its graft, corpus and
validation split), built from :func:`phaselm.runs.open_run` by :func:`subject_of`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import PhaseLMError
from .runs import Run


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
        from .interventions import structure

        return structure(self.target).name

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
        """The validation split of the corpus as token ids (1-D), encoded once."""
        if self._val_ids is None:
            from .corpora import load_text
            from .data import encode_split

            if self.corpus is None:
                raise PhaseLMError("this model has no corpus to draw validation windows from; give prompts as a file or list")
            _, self._val_ids = encode_split(self.tokenizer, load_text(self.corpus), self.val_fraction)
        return self._val_ids


def subject_of(run: Run, corpus: str | None = None, val_fraction: float | None = None) -> Subject:
    """The Subject of an opened run; ``corpus`` / ``val_fraction`` override the run's."""
    return Subject(
        model=run.model, tokenizer=run.tokenizer, handle=run.graft, corpus=corpus or run.corpus,
        val_fraction=val_fraction if val_fraction is not None else run.val_fraction, path=str(run.path),
        run_dir=run.run_dir, model_dir=run.model_dir, train_seq_len=run.train_seq_len,
    )
