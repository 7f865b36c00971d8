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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..backbones import save_backbone
from ..config import to_dict, with_kind
from ..data import encode_split, learn_tokenizer, load_text
from ..errors import PhaseLMError
from ..reporting import write_report
from ..training import LanguageModelObjective, TrainConfig, train
from .phase_mamba import MODEL_FOLDER, CorpusConfig, TokenizerConfig, _count, _write_json

ARCHES = ("kssm", "fusion", "gpt2")


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
    scan: str = "auto"  # SSD path: "auto" (= "chunked" for now), "fused" (Triton), "chunked", "reference"
    n_oscillators: int = 192
    n_harmonics: int = 32
    bistable: bool = True  # False: the monostable ablation
    u_min: float = 0.1
    u_max: float = 10.0
    bank_steps: int = 1
    spread_init: float = 0.1
    reg_weight: float = 0.5
    reg_through_hidden: bool = False  # True: the regulariser also trains the hidden state (stalls learning)
    mlp_ratio: int = 4
    dropout: float = 0.2
    position_embedding: bool = False
    max_position_embeddings: int = 1024


@dataclass
class FusionSpec:
    """Fusion-family shape (phaselm.models.fusion); defaults are GF-MH at ~5.6M parameters char-level."""

    mixer: str = "hybrid"  # "hybrid" (RWKV-6 ∥ Mamba-2, fused), "rwkv6" or "mamba2" (one branch)
    fusion: str = "GF"  # WS, HY, GF, HGF, CP or RF (SPEC.md §4); hybrid only
    gate_init: float | str = 0.3  # RWKV share at init, in (0, 1), or balanced / rwkv-heavy / mamba-heavy / extreme-mamba / extreme-rwkv
    hidden_size: int = 192
    n_layers: int = 7
    rwkv_head_dim: int = 64
    rwkv_mix_rank: int = 32
    rwkv_decay_rank: int = 64
    rwkv_chunk_size: int = 16
    mamba_state_size: int = 16
    mamba_expand: int = 2
    mamba_head_dim: int = 64
    mamba_conv_kernel: int = 4
    mamba_chunk_size: int = 64
    scan: str = "auto"  # "auto" (= "chunked" for now), "kernels" (fla's RWKV-6, our fused SSD; CUDA), "chunked", "reference"
    mlp_ratio: int = 4
    dropout: float = 0.2

    def model_config(self, vocab_size: int):
        from ..models.fusion import FusionConfig

        return FusionConfig(vocab_size=vocab_size, **asdict(self))


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
    KIND: ClassVar[str] = "language-model"  # config.toml's kind: a model trained from scratch, saved in model/

    arch: str = "kssm"  # "kssm", "fusion" or "gpt2"
    kssm: KSSMSpec = field(default_factory=KSSMSpec)
    fusion: FusionSpec = field(default_factory=FusionSpec)
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
        if self.arch == "fusion":
            self.fusion.model_config(vocab_size=1)  # checks the shape now (fusion type, gate init, heads)

    @property
    def spec(self):
        """The section of the chosen architecture."""
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
    if recipe.arch == "kssm":
        from ..models.kssm import KSSMConfig, KSSMForCausalLM

        return KSSMForCausalLM(KSSMConfig(vocab_size=vocab_size, **asdict(recipe.kssm)))
    if recipe.arch == "fusion":
        from ..models.fusion import FusionForCausalLM

        return FusionForCausalLM(recipe.fusion.model_config(vocab_size))
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
    tokenizer = learn_tokenizer(
        recipe.tokenizer.kind, text, recipe.data.val_fraction, recipe.tokenizer.vocab_size, recipe.tokenizer.pretrained or None
    )
    train_ids, val_ids = encode_split(tokenizer, text, recipe.data.val_fraction)
    torch.manual_seed(recipe.train.seed)
    model = build_lm(recipe, tokenizer.vocab_size)
    spec = to_dict(recipe.spec)
    reg_weight = recipe.kssm.reg_weight if recipe.arch == "kssm" else 0.0
    started = time.perf_counter()
    result = train(
        LanguageModelObjective(model, reg_weight), train_ids, val_ids, recipe.train, run_dir, recipe_text(recipe),
        resume=resume, progress=progress, description=f"train {recipe.arch}",
        checkpoint_config={"arch": recipe.arch, "model": spec, "vocab_size": tokenizer.vocab_size},
    )
    if not result.is_main:  # another process of a multi-process run: the main one writes the run
        return {"arch": recipe.arch, "val_ce": result.evaluation["val_ce"], "val_ppl": result.evaluation["val_ppl"]}
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
    write_report(run_dir, f"PhaseLM language model ({recipe.arch})", summary, recipe_text(recipe), [command or f"phaselm train-lm RECIPE --out {run_dir}"])
    return summary
