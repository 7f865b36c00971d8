"""Loading a trained run for evaluation, and the names and constants every eval shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import PhaseLMError


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
        from ..data import encode_split, load_text

        cached = getattr(self, "_val_ids", None)
        if cached is None:
            _, cached = encode_split(self.tokenizer, load_text(self.corpus), self.val_fraction)
            self._val_ids = cached
        return cached


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_run_config(run_dir: Path) -> dict:
    from ..config import tomllib

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
    from ..backbones import load_backbone
    from ..experiments.phase_mamba import MODEL_FOLDER

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
