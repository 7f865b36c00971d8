"""A run directory as `phaselm train-lm` writes it, with a tiny model: what the eval, protocol
and CLI tests open."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from phaselm.corpora import load_text
from phaselm.tokenizers import CharTokenizer

EXAMPLE_PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"  # the protocol files users run
FAST_RESAMPLING = {"bootstrap_resamples": 200, "permutation_resamples": 200}  # keeps protocol tests quick
TINY_KSSM = dict(hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)


def make_run(root: Path, name: str, arch: str = "kssm", corpus: Path | None = None, **kssm) -> Path:
    """A run directory laid out as `phaselm train-lm` writes it (config.toml + model/), with a
    tiny randomly initialised model whose R and u are spread (so interventions show)."""
    import tomli_w

    from phaselm.backbones import save_backbone

    text = load_text(corpus)
    tokenizer = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    if arch == "kssm":
        from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

        model = KSSMForCausalLM(KSSMConfig(vocab_size=tokenizer.vocab_size, **{**TINY_KSSM, **kssm}))
        with torch.no_grad():
            for block in model.blocks:
                block.bank.omega0.copy_(torch.randn_like(block.bank.omega0) * 0.8)
                block.bank.to_params.weight.mul_(40)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2,
                                           n_positions=64, bos_token_id=None, eos_token_id=None))
    run = root / name
    run.mkdir(parents=True)
    recipe = {"arch": arch, "data": {"corpus": str(corpus), "val_fraction": 0.1}, "train": {"seq_len": 16}}
    (run / "config.toml").write_text(tomli_w.dumps(recipe), encoding="utf-8")
    save_backbone(model.eval(), tokenizer, run / "model")
    (run / "summary.json").write_text(json.dumps({"arch": arch, "val_ce": 4.0}), encoding="utf-8")
    return run
