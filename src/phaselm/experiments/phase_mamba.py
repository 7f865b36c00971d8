"""The Phase-Mamba experiment: pretrain a backbone, graft a Phase Core, train it, observe, report.

Each stage is a function of a recipe (a dataclass loaded from TOML) and a run directory; the
CLI commands ``pretrain``, ``train``, ``generate`` and ``demo`` are thin wrappers over them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch

from .. import checkpoint as ckpt
from ..atomic import replace_json
from ..backbones import MODEL_FOLDER, MambaSpec, build_mamba, load_backbone, mamba_of_shape, save_backbone
from ..config import dump_recipe, from_dict, kinds_field, to_dict
from ..corpora import load_text
from ..data import encode_split, sequential_batches
from ..errors import PhaseLMError
from ..fast_mamba import fast_mamba, scan_path
from ..generation import generate
from ..graft import Graft, graft, hidden_size_of
from ..losses import LossConfig
from ..objectives import LanguageModelObjective, PhaseCoreObjective
from ..observables import DriftConfig, normalized_entropy, summarize
from ..ops.backend import chosen
from ..phase_block import PhaseBlockConfig
from ..phase_core import PhaseCoreConfig
from ..reporting import write_report
from ..tokenizers import learn_tokenizer
from ..training import TrainConfig, train


@dataclass
class CorpusConfig:
    """Where the text comes from and how much of its end validates."""

    corpus: str = "tinyshakespeare"  # embedded corpus, a file, a folder, or "hf:NAME"
    val_fraction: float = 0.1  # the last 10 % of the text validates


@dataclass
class TokenizerConfig:
    """Which tokenizer a pretraining run learns (char, BPE) or loads (pretrained)."""

    kind: str = "char"  # "char", "bpe" or "pretrained"
    vocab_size: int = 16000  # bpe only
    pretrained: str = ""  # hub name or folder, kind = "pretrained" only


@dataclass
class PretrainRecipe:
    """A recipe for ``phaselm pretrain``: a small Mamba trained from scratch as a backbone to graft onto."""

    KIND: ClassVar[str] = "backbone"  # config.toml's kind: a small Mamba pretrained to graft onto

    model: MambaSpec = field(default_factory=MambaSpec)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-3, min_lr=3e-4))


@dataclass
class BackboneConfig:
    """The backbone a core is grafted onto (a hub name, a folder, or a published shape) and the layer."""

    name: str = ""  # hub name or local folder (e.g. runs/demo/backbone/model)
    layer: int | str = "middle"
    # A published Mamba's shape (mamba-130m … mamba-2.8b) with random weights instead of `name`:
    # the seed experiment's speed and memory where no hub is reachable. Its tokenizer is then
    # char-level on the corpus (ids use a corner of the 50,280-token vocabulary).
    shape: str = ""

    def __post_init__(self) -> None:
        from ..backbones import MAMBA_SHAPES

        if self.shape and self.shape not in MAMBA_SHAPES:
            raise PhaseLMError(
                f"backbone.shape must be one of {', '.join(MAMBA_SHAPES)} (or empty), got {self.shape!r}"
            )


@dataclass
class SampleConfig:
    """The sample a Phase-Mamba run writes into its report: prompt and sampling settings."""

    prompt: str = "ROMEO:"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0: no top-k filtering
    seed: int = 0


# What the [core] table's ``kind`` builds: the Phase Core on a layer's output (default) or the
# PhaseBlock inside a layer's Mamba mixer (issue 15).
CORE_KINDS = {"phase-core": PhaseCoreConfig, "phase-block": PhaseBlockConfig}


@dataclass
class PhaseMambaRecipe:
    """A recipe for ``phaselm train``: a Phase Core (or PhaseBlock) grafted onto a frozen backbone,
    its loss, drift and training."""

    KIND: ClassVar[str] = "phase-mamba"  # config.toml's kind: a Phase Core grafted onto a backbone

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    core: PhaseCoreConfig | PhaseBlockConfig = kinds_field(CORE_KINDS)  # noqa: RUF009 - a field(), as field() itself
    drift: DriftConfig = field(default_factory=lambda: DriftConfig(enabled=True))
    loss: LossConfig = field(default_factory=LossConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-2, min_lr=1e-3))
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if isinstance(self.core, PhaseBlockConfig) and self.drift.enabled:
            raise PhaseLMError(
                "a PhaseBlock runs its own drift controller (core.drift_control, core.band_low/high); "
                "set drift.enabled = false"
            )


# --------------------------------------------------------------------------------------------
# pretraining a backbone
# --------------------------------------------------------------------------------------------


def pretrain(
    recipe: PretrainRecipe,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Train a small HF Mamba on the corpus; returns the ``save_pretrained`` folder."""
    run_dir = Path(run_dir)
    model_dir = run_dir / MODEL_FOLDER
    text = load_text(recipe.data.corpus)
    tokenizer = learn_tokenizer(
        recipe.tokenizer.kind,
        text,
        recipe.data.val_fraction,
        recipe.tokenizer.vocab_size,
        recipe.tokenizer.pretrained or None,
    )
    train_ids, val_ids = encode_split(tokenizer, text, recipe.data.val_fraction)
    torch.manual_seed(recipe.train.seed)
    model = build_mamba(recipe.model, tokenizer.vocab_size)
    # On a GPU the new model runs on PhaseLM's Mamba kernels, as a loaded backbone does (training
    # moves it there); transformers' own path without mamba_ssm loops over positions in Python.
    fast_mamba(model, device="cuda" if torch.cuda.is_available() else "cpu")
    result = train(
        LanguageModelObjective(model),
        train_ids,
        val_ids,
        recipe.train,
        run_dir,
        dump_recipe(recipe),
        resume=resume,
        progress=progress,
        description="pretrain",
        checkpoint_config={"model": to_dict(recipe.model), "vocab_size": tokenizer.vocab_size},
    )
    if not result.is_main:  # another process of a multi-process run: the main one writes the run
        return model_dir
    # A resumed run that extended train.steps replaces the model it wrote when it first finished.
    save_backbone(model.cpu(), tokenizer, model_dir, replace=resume)
    summary = {
        "steps": result.step,
        "val_ppl": result.evaluation["val_ppl"],
        "val_ce": result.evaluation["val_ce"],
        "parameters": count_parameters(model),
    }
    replace_json(run_dir / "summary.json", summary)
    write_report(
        run_dir,
        "PhaseLM pretraining",
        summary,
        dump_recipe(recipe),
        [command or f"phaselm pretrain RECIPE --out {run_dir}"],
    )
    return model_dir


# --------------------------------------------------------------------------------------------
# grafting and training the Phase Core
# --------------------------------------------------------------------------------------------


def build_grafted(recipe: PhaseMambaRecipe, device: str = "cpu"):
    """Load the recipe's backbone and graft a fresh core; returns (model, tokenizer, handle).

    On CUDA with ``train.bf16`` the frozen backbone is cast to bf16 (only the core trains, and it
    stays float32): half the memory and no per-step weight casts under autocast.
    """
    bf16 = torch.device(device).type == "cuda" and recipe.train.bf16
    if recipe.backbone.shape:
        # Seeded, so reopening the run rebuilds the same weights (on the same kind of device).
        torch.manual_seed(recipe.train.seed)
        model = mamba_of_shape(recipe.backbone.shape, device, torch.bfloat16 if bf16 else None)
        text = load_text(recipe.data.corpus)
        tokenizer = learn_tokenizer("char", text, recipe.data.val_fraction)
    else:
        model, tokenizer = load_backbone(recipe.backbone.name, device)
        if bf16:
            model.to(torch.bfloat16)
    core = recipe.core
    if isinstance(core, PhaseBlockConfig):  # graft() takes d_inner from the layer's mixer and checks it
        return model, tokenizer, graft(model, core, layer=recipe.backbone.layer)
    if core.hidden_size not in (0, hidden_size_of(model)):
        raise PhaseLMError(
            f"core.hidden_size {core.hidden_size} does not match the backbone's {hidden_size_of(model)}; leave it at 0"
        )
    handle = graft(model, replace(core, hidden_size=hidden_size_of(model)), layer=recipe.backbone.layer)
    return model, tokenizer, handle


def stored_backbone(recipe: PhaseMambaRecipe, run_dir: str | os.PathLike) -> PhaseMambaRecipe:
    """The recipe as a run stores it: a local backbone folder inside the run directory as a path
    relative to it (the run can be moved or copied whole), any other local folder as an
    absolute path (the run opens from any working directory); hub ids stay as they are."""
    name = recipe.backbone.name
    if not name or not Path(name).exists():
        return recipe
    folder, run = Path(name).resolve(), Path(run_dir).resolve()
    kept = folder.relative_to(run).as_posix() if folder.is_relative_to(run) else str(folder)
    return replace(recipe, backbone=replace(recipe.backbone, name=kept))


def loadable_backbone(recipe: PhaseMambaRecipe, run_dir: str | os.PathLike) -> PhaseMambaRecipe:
    """A stored recipe with a run-relative backbone path made loadable from the working
    directory (runs written before paths were stored this way keep their own)."""
    name = recipe.backbone.name
    if name and not Path(name).is_absolute() and (Path(run_dir) / name).exists():
        return replace(recipe, backbone=replace(recipe.backbone, name=str(Path(run_dir) / name)))
    return recipe


def train_core(
    recipe: PhaseMambaRecipe,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Graft, train the core, then observe it on validation text and write summary + report."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(recipe.train.seed)
    stored = stored_backbone(recipe, run_dir)
    model, tokenizer, handle = build_grafted(loadable_backbone(stored, run_dir), device)
    text = load_text(recipe.data.corpus)
    train_ids, val_ids = encode_split(tokenizer, text, recipe.data.val_fraction)
    objective = PhaseCoreObjective(handle, recipe.loss, recipe.drift)
    result = train(
        objective, train_ids, val_ids, recipe.train, run_dir, dump_recipe(stored), resume, progress, "train core",
        checkpoint_config=core_checkpoint_config(handle),
    )
    if not result.is_main:  # another process of a multi-process run: the main one observes and writes
        return {"val_ppl_with_core": result.evaluation["val_ppl"]}
    summary = observe(model, tokenizer, handle, val_ids, recipe)
    summary.update(
        steps=result.step,
        trainable_parameters=count_parameters(handle.core),
        val_ppl_with_core=result.evaluation["val_ppl"],
        val_ppl_without_core=result.evaluation["val_ppl_without_core"],
        drift_actions=result.drift_actions,
        coupling_scale=float(handle.core.coupling_scale),
        graft_layer=handle.layer_path,
        kernels={"mamba_mixers": scan_path(model), "ops": chosen()},
    )
    replace_json(Path(run_dir) / "summary.json", summary)
    write_report(
        run_dir, "Phase-Mamba run", summary, dump_recipe(stored), [command or f"phaselm train RECIPE --out {run_dir}"]
    )
    return summary


@torch.no_grad()
def observe(model, tokenizer, handle: Graft, val_ids: torch.Tensor, recipe: PhaseMambaRecipe) -> dict:
    """Per-token R/U statistics on validation text, plus one blind and one measured sample."""
    cfg = recipe.train
    device = next(model.parameters()).device
    orders, uncertainties = [], []
    for i, (x, _) in enumerate(sequential_batches(val_ids, cfg.batch_size, cfg.seq_len)):
        if i >= cfg.eval_batches:
            break
        logits = model(input_ids=x.to(device)).logits
        orders.append(handle.last.order.flatten().cpu())
        uncertainties.append(normalized_entropy(logits).flatten().cpu())
    summary = summarize(torch.cat(orders), torch.cat(uncertainties))
    s = recipe.sample
    args = dict(
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k or None, seed=s.seed, handle=handle
    )
    blind = generate(model, tokenizer, s.prompt, measured=False, **args)
    measured = generate(model, tokenizer, s.prompt, measured=True, **args)
    summary["samples"] = {
        "prompt": s.prompt,
        "blind": blind.text,
        "measured_text": measured.text,
        "measured": [r.__dict__ for r in measured.readings],
    }
    return summary


def core_checkpoint_config(handle: Graft) -> dict:
    """What a core checkpoint must match to load: the core's config and where it sits."""
    return {"core": to_dict(handle.core.config), "layer": handle.layer_path}


def load_run(run_dir: str | os.PathLike, device: str = "cpu"):
    """A trained Phase-Mamba run → (model, tokenizer, handle) with the core's latest weights."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.is_file():
        raise PhaseLMError(f"{run_dir} is not a PhaseLM run (no config.toml); pass a run directory or a model folder")
    from ..config import tomllib

    recipe = loadable_backbone(
        from_dict(PhaseMambaRecipe, tomllib.loads(config_file.read_text(encoding="utf-8"))), run_dir
    )
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        raise PhaseLMError(f"{run_dir} holds no complete checkpoint; train it first (phaselm train)")
    model, tokenizer, handle = build_grafted(recipe, device)
    ckpt.load_module_state(latest, handle.core, expected_config=core_checkpoint_config(handle))
    return model, tokenizer, handle, recipe


# --------------------------------------------------------------------------------------------


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())
