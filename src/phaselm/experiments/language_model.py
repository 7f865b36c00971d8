"""Train a language model from scratch — K-SSM, the fusion family or the GPT-2 baseline — with the one training loop.

``phaselm train-lm recipes/kssm-v3.toml`` writes a run directory with config.toml,
metrics.jsonl, checkpoints/, model/ (save_pretrained + tokenizer), summary.json, plots and
report.md. The K-SSM variants (bistable, monostable, no mixer), the fusion models (pure RWKV-6,
pure Mamba-2, RWKV-6 + Mamba-2 hybrids with every fusion type) and the baseline differ only in
their recipes, so they are trained and measured by the same code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..atomic import replace_json
from ..backbones import save_backbone
from ..config import recipe_table, to_dict, with_kind
from ..corpora import load_text
from ..data import encode_split
from ..errors import PhaseLMError
from ..models.fusion import FusionConfig, FusionForCausalLM
from ..models.gpt import GPTConfig, build_gpt
from ..models.kssm import KSSMConfig, KSSMForCausalLM
from ..objectives import LanguageModelObjective
from ..reporting import write_report
from ..tokenizers import learn_tokenizer
from ..training import TrainConfig, train
from .phase_mamba import MODEL_FOLDER, CorpusConfig, TokenizerConfig, count_parameters

ARCHES = ("kssm", "fusion", "gpt2")


@dataclass
class LMRecipe:
    """A ``train-lm`` recipe. The model sections are the models' own configs, built directly from
    the recipe's ``[kssm]`` / ``[fusion]`` / ``[gpt]`` table (keys checked against the config's
    keywords); only the section that ``arch`` names is used and written to config.toml."""

    KIND: ClassVar[str] = "language-model"  # config.toml's kind: a model trained from scratch, saved in model/

    arch: str = "kssm"  # "kssm", "fusion" or "gpt2"
    kssm: KSSMConfig = field(default_factory=KSSMConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise PhaseLMError(f"arch must be one of {', '.join(ARCHES)}, got {self.arch!r}")
        if self.arch == "gpt2" and self.train.seq_len > self.gpt.n_positions:
            raise PhaseLMError(
                f"train.seq_len {self.train.seq_len} is longer than gpt.n_positions {self.gpt.n_positions}; "
                "shorten it or raise n_positions"
            )
        if (
            self.arch == "kssm"
            and self.kssm.position_embedding
            and self.train.seq_len > self.kssm.max_position_embeddings
        ):
            raise PhaseLMError(
                f"train.seq_len {self.train.seq_len} is longer than "
                f"kssm.max_position_embeddings {self.kssm.max_position_embeddings}"
            )

    @property
    def model_config(self):
        """The config of the chosen architecture (its vocabulary size is set when the model is built)."""
        return getattr(self, ARCH_SECTIONS[self.arch])


ARCH_SECTIONS = {"kssm": "kssm", "fusion": "fusion", "gpt2": "gpt"}


def recipe_text(recipe: LMRecipe) -> str:
    """config.toml of a run: the recipe with only the chosen architecture's model section."""
    import tomli_w

    data = to_dict(recipe)
    for arch, section in ARCH_SECTIONS.items():
        if arch != recipe.arch:
            data.pop(section, None)
    return with_kind(tomli_w.dumps(data), recipe.KIND)


def build_lm(recipe: LMRecipe, vocab_size: int):
    """A freshly initialised model of the recipe's architecture for a vocabulary of ``vocab_size``."""
    section = recipe.model_config
    config = type(section)(vocab_size=vocab_size, **recipe_table(section))
    if recipe.arch == "kssm":
        return KSSMForCausalLM(config)
    if recipe.arch == "fusion":
        return FusionForCausalLM(config)
    return build_gpt(config)


def train_lm(
    recipe: LMRecipe,
    run_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train the recipe's language model from scratch into ``run_dir`` (model, summary, report); the summary."""
    run_dir = Path(run_dir)
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
    model = build_lm(recipe, tokenizer.vocab_size)
    model_settings = recipe_table(recipe.model_config)
    reg_weight = recipe.kssm.reg_weight if recipe.arch == "kssm" else 0.0
    started = time.perf_counter()
    result = train(
        LanguageModelObjective(model, reg_weight), train_ids, val_ids, recipe.train, run_dir, recipe_text(recipe),
        resume=resume, progress=progress, description=f"train {recipe.arch}",
        checkpoint_config={"arch": recipe.arch, "model": model_settings, "vocab_size": tokenizer.vocab_size},
    )
    if not result.is_main:  # another process of a multi-process run: the main one writes the run
        return {"arch": recipe.arch, "val_ce": result.evaluation["val_ce"], "val_ppl": result.evaluation["val_ppl"]}
    # A resumed run that extended train.steps replaces the model it wrote when it first finished.
    save_backbone(model.cpu(), tokenizer, run_dir / MODEL_FOLDER, replace=resume)
    summary = {
        "arch": recipe.arch,
        "steps": result.step,
        "parameters": count_parameters(model),
        "val_ce": result.evaluation["val_ce"],
        "val_ppl": result.evaluation["val_ppl"],
        "train_seconds": time.perf_counter() - started,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    replace_json(run_dir / "summary.json", summary)
    write_report(
        run_dir,
        f"PhaseLM language model ({recipe.arch})",
        summary,
        recipe_text(recipe),
        [command or f"phaselm train-lm RECIPE --out {run_dir}"],
    )
    return summary
