"""Opening a run directory or a saved model folder: :func:`open_run`, the one loader every
command uses (generate, serve, eval …, protocol run, report, diagnose).

A run's config.toml names its kind in a top-level ``kind`` key, written from the recipe class's
``KIND`` (as transformers' config.json names its ``model_type``), and the kind decides how the
run opens:

* ``phase-mamba`` (``phaselm train``, ``phaselm demo``): a Phase Core grafted onto a backbone;
  the backbone is rebuilt from the recipe and the core's latest checkpoint loaded into it.
* ``language-model`` (``phaselm train-lm``) and ``backbone`` (``phaselm pretrain``, the demo's
  OUT/backbone): the trained model saved with ``save_pretrained`` in the run's ``model/``.

Runs written before the kind was recorded are recognised by their recipe's sections. A model
folder (``config.json`` + weights + tokenizer) opens on its own, or as its run when it sits
inside one (so the run's corpus and validation split go with it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import MODEL_FOLDER
from .config import KIND_KEY, from_dict, tomllib
from .errors import PhaseLMError

PHASE_MAMBA = "phase-mamba"
LANGUAGE_MODEL = "language-model"
BACKBONE = "backbone"
MODEL_FOLDER_KIND = "model"  # a save_pretrained folder outside any run
RUN_KINDS = (PHASE_MAMBA, LANGUAGE_MODEL, BACKBONE)
EXPECTED = "a run directory (from train, train-lm, pretrain or demo) or a saved model folder (config.json)"


@dataclass
class RunLocation:
    """Where a run's parts are, found without loading any weights."""

    kind: str  # one of RUN_KINDS, or MODEL_FOLDER_KIND
    path: Path  # what the user passed
    run_dir: Path | None  # the run directory (None for a model folder outside any run)
    model_dir: Path | None  # the save_pretrained folder (None for a grafted Phase-Mamba run)
    config: dict = field(default_factory=dict)  # the run's config.toml as read ({} without a run)


@dataclass
class Run:
    """An opened run: the model ready for evaluation (``eval()`` mode) and what its run says.

    ``graft`` is the Phase Core's handle for a Phase-Mamba run (None otherwise); ``recipe`` is
    the run's typed recipe (None for a model folder outside any run).
    """

    model: nn.Module
    tokenizer: Any
    kind: str
    path: Path
    run_dir: Path | None
    model_dir: Path | None
    config: dict
    graft: Any = None
    recipe: Any = None

    @property
    def corpus(self) -> str:
        """The run's corpus (embedded Tiny Shakespeare for a model folder outside any run)."""
        return str(_table(self.config, "data").get("corpus", "tinyshakespeare"))

    @property
    def val_fraction(self) -> float:
        """The share of the corpus held out for validation ([data] val_fraction, default 0.1)."""
        return float(_table(self.config, "data").get("val_fraction", 0.1))

    @property
    def train_seq_len(self) -> int | None:
        """The training sequence length ([train] seq_len), or None if the run does not record one."""
        seq_len = _table(self.config, "train").get("seq_len")
        return seq_len if isinstance(seq_len, int) else None


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _table(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _read_config(run_dir: Path) -> dict:
    file = run_dir / "config.toml"
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PhaseLMError(f"cannot read {file}: {str(exc).splitlines()[0]}; is {run_dir} a run directory?") from None


def run_kind(config: dict, run_dir: Path) -> str:
    """The kind a run's config.toml records; for a run written before kinds were recorded,
    the kind its recipe's sections show."""
    kind = config.get(KIND_KEY)
    if kind is not None:
        if kind not in RUN_KINDS:
            raise PhaseLMError(f"{run_dir / 'config.toml'} records kind {kind!r}, which this PhaseLM cannot open; "
                               f"known kinds: {', '.join(RUN_KINDS)}")
        return kind
    if isinstance(config.get("backbone"), dict):
        return PHASE_MAMBA
    if "arch" in config:
        return LANGUAGE_MODEL
    if isinstance(config.get("model"), dict):
        return BACKBONE
    if (run_dir / MODEL_FOLDER / "config.json").is_file():
        return LANGUAGE_MODEL  # an unknown recipe around a saved model: the model is what opens
    raise PhaseLMError(f"{run_dir / 'config.toml'} records no kind and is no recipe PhaseLM writes; pass {EXPECTED}")


def locate_run(path: str | os.PathLike) -> RunLocation:
    """Find a run's kind and folders from a run directory or a model folder; loads nothing."""
    path = Path(path)
    if not path.exists():
        raise PhaseLMError(f"{path} does not exist; pass {EXPECTED}")
    if not path.is_dir():
        raise PhaseLMError(f"{path} is not a directory; pass {EXPECTED}")
    if (path / "config.toml").is_file():
        config = _read_config(path)
        kind = run_kind(config, path)
        if kind == PHASE_MAMBA:
            return RunLocation(kind, path, path, None, config)
        model_dir = path / MODEL_FOLDER
        if not (model_dir / "config.json").is_file():
            raise PhaseLMError(f"{path} is a {kind} run without its trained model ({model_dir} is missing); finish "
                               "training it (--resume) first")
        return RunLocation(kind, path, path, model_dir, config)
    if (path / "config.json").is_file():
        parent = path.parent
        if (parent / "config.toml").is_file() and path.name == MODEL_FOLDER:
            config = _read_config(parent)
            return RunLocation(run_kind(config, parent), path, parent, path, config)
        return RunLocation(MODEL_FOLDER_KIND, path, None, path, {})
    raise PhaseLMError(f"{path} is neither a run directory nor a model folder (no config.toml or config.json); pass "
                       f"{EXPECTED}")


def _typed_recipe(location: RunLocation):
    """The run's config.toml as its recipe class (None outside a run, or where the recipe no
    longer parses: the saved model is what opens, and it does not need it)."""
    from .experiments.language_model import LMRecipe
    from .experiments.phase_mamba import PhaseMambaRecipe, PretrainRecipe

    classes = {PHASE_MAMBA: PhaseMambaRecipe, LANGUAGE_MODEL: LMRecipe, BACKBONE: PretrainRecipe}
    if location.run_dir is None:
        return None
    try:
        return from_dict(classes[location.kind], location.config)
    except PhaseLMError:
        if location.kind == PHASE_MAMBA:
            raise
        return None


def open_run(path: str | os.PathLike, device: str | None = None) -> Run:
    """Open a run directory or a model folder → :class:`Run`, the model in ``eval()`` mode on
    ``device`` (default: CUDA when available)."""
    from .backbones import load_backbone

    location = locate_run(path)
    device = device or default_device()
    graft = None
    if location.kind == PHASE_MAMBA:
        from .experiments.phase_mamba import load_run

        try:
            model, tokenizer, graft, recipe = load_run(location.run_dir, device)
        except PhaseLMError as exc:
            raise PhaseLMError(f"cannot open the phase-mamba run {location.run_dir}: {exc}") from None
        graft.core.eval()
    else:
        model, tokenizer = load_backbone(str(location.model_dir), device)
        recipe = _typed_recipe(location)
    model.eval()
    return Run(
        model=model, tokenizer=tokenizer, kind=location.kind, path=location.path, run_dir=location.run_dir,
        model_dir=location.model_dir, config=location.config, graft=graft, recipe=recipe,
    )
