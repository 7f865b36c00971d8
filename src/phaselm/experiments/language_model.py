"""Train a language model from scratch — K-SSM or the GPT-2 baseline — with the one training loop.

``phaselm train-lm recipes/kssm-v3.toml`` writes a run directory with config.toml,
metrics.jsonl, checkpoints/, model/ (save_pretrained + tokenizer), summary.json, plots and
report.md. The K-SSM variants (bistable, monostable, no mixer) and the baseline differ only in
their recipes, so they are trained and measured by the same code.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..backbones import save_backbone
from ..config import dump_recipe, to_dict
from ..data import build_tokenizer, encode_corpus, load_text, train_val_split
from ..errors import PhaseLMError
from ..reporting import write_report
from ..training import LanguageModelObjective, TrainConfig, train
from .phase_mamba import MODEL_FOLDER, CorpusConfig, TokenizerConfig, _count, _write_json

ARCHES = ("kssm", "gpt2")


@dataclass
class KSSMSpec:
    """K-SSM shape; defaults are the seed's size (hidden 384, 6 layers, 192 oscillators, 32 harmonics)."""

    hidden_size: int = 384
    n_layers: int = 6
    mixer: str = "ssd"  # "ssd" or "none" (the original's token-independent model)
    state_size: int = 16
    expand: int = 2
    head_dim: int = 64
    conv_kernel: int = 4
    chunk_size: int = 64
    n_oscillators: int = 192
    n_harmonics: int = 32
    bistable: bool = True  # False: the monostable ablation
    u_min: float = 0.1
    u_max: float = 10.0
    bank_steps: int = 1
    spread_init: float = 0.1
    reg_weight: float = 0.5
    mlp_ratio: int = 4
    dropout: float = 0.2
    position_embedding: bool = False
    max_position_embeddings: int = 1024


@dataclass
class GPTSpec:
    """The transformer baseline: HF GPT-2 with SDPA attention (nanoGPT's "baby GPT" by default)."""

    n_embd: int = 384
    n_layer: int = 6
    n_head: int = 6
    n_positions: int = 256
    dropout: float = 0.2


@dataclass
class LMRecipe:
    arch: str = "kssm"  # "kssm" or "gpt2"
    kssm: KSSMSpec = field(default_factory=KSSMSpec)
    gpt: GPTSpec = field(default_factory=GPTSpec)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise PhaseLMError(f"arch must be one of {', '.join(ARCHES)}, got {self.arch!r}")
        if self.arch == "gpt2" and self.train.seq_len > self.gpt.n_positions:
            raise PhaseLMError(f"train.seq_len {self.train.seq_len} is longer than gpt.n_positions {self.gpt.n_positions}; shorten it or raise n_positions")
        if self.arch == "kssm" and self.kssm.position_embedding and self.train.seq_len > self.kssm.max_position_embeddings:
            raise PhaseLMError(
                f"train.seq_len {self.train.seq_len} is longer than kssm.max_position_embeddings {self.kssm.max_position_embeddings}"
            )


def build_lm(recipe: LMRecipe, vocab_size: int):
    if recipe.arch == "kssm":
        from ..models.kssm import KSSMConfig, KSSMForCausalLM

        return KSSMForCausalLM(KSSMConfig(vocab_size=vocab_size, **asdict(recipe.kssm)))
    from transformers import GPT2Config, GPT2LMHeadModel

    g = recipe.gpt
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=g.n_embd, n_layer=g.n_layer, n_head=g.n_head, n_positions=g.n_positions,
        resid_pdrop=g.dropout, embd_pdrop=g.dropout, attn_pdrop=g.dropout, bos_token_id=None, eos_token_id=None,
    )
    return GPT2LMHeadModel(config, attn_implementation="sdpa") if _accepts_attn(GPT2LMHeadModel) else GPT2LMHeadModel(config)


def _accepts_attn(cls) -> bool:
    import inspect

    return "attn_implementation" in inspect.signature(cls.__init__).parameters


def train_lm(recipe: LMRecipe, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True, command: str | None = None) -> dict:
    run_dir = Path(run_dir)
    text = load_text(recipe.data.corpus)
    tokenizer = build_tokenizer(recipe.tokenizer.kind, text, recipe.tokenizer.vocab_size, recipe.tokenizer.pretrained or None)
    train_ids, val_ids = train_val_split(encode_corpus(tokenizer, text), recipe.data.val_fraction)
    torch.manual_seed(recipe.train.seed)
    model = build_lm(recipe, tokenizer.vocab_size)
    spec = to_dict(recipe.kssm if recipe.arch == "kssm" else recipe.gpt)
    reg_weight = recipe.kssm.reg_weight if recipe.arch == "kssm" else 0.0
    started = time.perf_counter()
    result = train(
        LanguageModelObjective(model, reg_weight), train_ids, val_ids, recipe.train, run_dir, dump_recipe(recipe),
        resume=resume, progress=progress, description=f"train {recipe.arch}",
        checkpoint_config={"arch": recipe.arch, "model": spec, "vocab_size": tokenizer.vocab_size},
    )
    save_backbone(model.cpu(), tokenizer, run_dir / MODEL_FOLDER)
    summary = {
        "arch": recipe.arch,
        "parameters": _count(model),
        "val_ce": result.evaluation["val_ce"],
        "val_ppl": result.evaluation["val_ppl"],
        "train_seconds": time.perf_counter() - started,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    _write_json(run_dir / "summary.json", summary)
    write_report(run_dir, f"PhaseLM language model ({recipe.arch})", summary, dump_recipe(recipe), [command or f"phaselm train-lm RECIPE --out {run_dir}"])
    return summary
