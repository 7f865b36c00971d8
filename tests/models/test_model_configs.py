"""One config class per model: the recipes' model tables build KSSMConfig / FusionConfig /
GPTConfig directly, every shipped recipe still builds exactly the model it built before, and
run folders written before the change still open.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from phaselm.bistable import BankConfig
from phaselm.config import load_recipe, recipe_keys
from phaselm.experiments.language_model import LMRecipe, build_lm, recipe_text
from phaselm.models.fusion import FusionConfig
from phaselm.models.gpt import GPTConfig
from phaselm.models.kssm import KSSMConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# Pinned from the code before the change (commit bbe6f4d, when the recipes went through
# KSSMSpec / FusionSpec / GPTSpec): for each train-lm recipe, build_lm(recipe, vocab_size=65)'s
# config.to_dict() without transformers' generic keys (id2label, return_dict, …) and its
# parameter count. Values shared by every recipe of a family are in *_ALL.
KSSM_ALL = {
    "bank": True,
    "bank_steps": 1, "chunk_size": 64, "conv_kernel": 4, "dropout": 0.2, "expand": 1, "head_dim": 64,
    "hidden_size": 384, "max_position_embeddings": 1024, "mlp_ratio": 4, "model_type": "kssm", "n_harmonics": 32,
    "n_layers": 6, "n_oscillators": 192, "reg_through_hidden": False, "reg_weight": 0.5, "scan": "auto",
    "spread_init": 0.1, "state_size": 64, "tie_word_embeddings": True, "u_max": 10.0, "u_min": 0.1, "vocab_size": 65,
}
FUSION_ALL = {
    "dropout": 0.2,
    "fusion": "GF",
    "gate_init": 0.3,
    "hidden_size": 192,
    "mamba_chunk_size": 64,
    "mamba_conv_kernel": 4,
    "mamba_expand": 2,
    "mamba_head_dim": 64,
    "mamba_state_size": 16,
    "mlp_ratio": 4,
    "model_type": "phaselm_fusion",
    "rwkv_chunk_size": 16,
    "rwkv_decay_rank": 64,
    "rwkv_head_dim": 64,
    "rwkv_mix_rank": 32,
    "scan": "auto",
    "tie_word_embeddings": True,
    "vocab_size": 65,
}
GPT_ALL = {
    "activation_function": "gelu_new",
    "add_cross_attention": False,
    "attn_pdrop": 0.2,
    "bos_token_id": None,
    "embd_pdrop": 0.2,
    "eos_token_id": None,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_inner": None,
    "n_positions": 256,
    "pad_token_id": None,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.2,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "tie_word_embeddings": True,
    "use_cache": True,
    "vocab_size": 65,
}
KURAMOTO = {
    "kuramoto_heads": 6, "kuramoto_oscillators": 32, "kuramoto_key_dim": 64, "kuramoto_steps": 2, "kuramoto_dt": 0.5,
    "kuramoto_coupling_init": 1.0, "kuramoto_backend": "auto", "kuramoto_readout": "phases", "kuramoto_rotary": True,
}  # fmt: skip
KSSM_V3 = {**KSSM_ALL, "bistable": True, "mixer": "ssd", "position_embedding": False}
KSSM_V3_DRIVEN = {
    **KSSM_V3, "bank_steps": 2, "bank_phase_input": "projected", "bank_omega_init": "random", "bank_omega_std": 2.0,
    "bank_carry_phases": True, "bank_readout": "harmonics+R",
}  # fmt: skip
GF_MH = {**FUSION_ALL, "mixer": "hybrid", "n_layers": 7}
MAMBA2 = {**FUSION_ALL, "mixer": "mamba2", "n_layers": 9}
RWKV6 = {**FUSION_ALL, "mixer": "rwkv6", "n_layers": 9}
BABY_GPT = {**GPT_ALL, "n_embd": 384, "n_head": 6, "n_layer": 6}
GPT_FUSION_SIZE = {**GPT_ALL, "n_embd": 224, "n_head": 4, "n_layer": 11}
PINNED = {  # recipe → (config values, parameter count)
    "kssm-v3.toml": (KSSM_V3, 10350126),
    "kssm-v3-bpe.toml": (KSSM_V3, 10350126),
    "kssm-v3-monostable.toml": ({**KSSM_V3, "bistable": False}, 10350126),
    "kssm-v3-nobank.toml": ({**KSSM_V3, "bank": False}, 10100076),
    "kssm-v3-nomixer.toml": ({**KSSM_ALL, "bistable": True, "mixer": "none", "position_embedding": True}, 7760322),
    "kssm-v3-driven.toml": (KSSM_V3_DRIVEN, 10795950),
    "kssm-kuramoto.toml": (
        {**KSSM_V3, "mixer": "kuramoto", "state_size": 16, "expand": 2, **KURAMOTO},
        10922214,
    ),
    "fusion-gf-mh.toml": (GF_MH, 5611685),
    "fusion-gf-mh-bpe.toml": (GF_MH, 5611685),
    "fusion-gf-kuramoto.toml": (
        {**GF_MH, "branches": ["rwkv6", "kuramoto"], **KURAMOTO, "kuramoto_key_dim": 32},
        5551345,
    ),
    "mamba2.toml": (MAMBA2, 4757634),
    "mamba2-bpe.toml": (MAMBA2, 4757634),
    "rwkv6.toml": (RWKV6, 5129280),
    "rwkv6-bpe.toml": (RWKV6, 5129280),
    "gpt-baseline.toml": (BABY_GPT, 10770816),
    "gpt-baseline-bpe.toml": (BABY_GPT, 10770816),
    "gpt2-fusion-baseline.toml": (GPT_FUSION_SIZE, 6727616),
    "gpt2-fusion-baseline-bpe.toml": (GPT_FUSION_SIZE, 6727616),
}


def lm_recipes() -> list[str]:
    """Every shipped recipe with a top-level ``arch`` (the train-lm ones)."""
    return sorted(
        p.name for p in RECIPES.glob("*.toml") if any(line.startswith("arch =") for line in p.read_text().splitlines())
    )


def test_every_train_lm_recipe_is_pinned():
    assert lm_recipes() == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_recipes_build_the_same_models_as_before(name):
    want, parameters = PINNED[name]
    with torch.device("meta"):  # the shapes without the cost of initialising 10M weights
        model = build_lm(load_recipe(LMRecipe, RECIPES / name), 65)
    config = model.config.to_dict()
    assert {key: config.get(key) for key in want} == want
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_recipe_sections_are_the_model_configs():
    recipe = load_recipe(LMRecipe, RECIPES / "fusion-gf-mh.toml", {"fusion.gate_init": "extreme-rwkv"})
    assert type(recipe.fusion) is FusionConfig and recipe.fusion.gate_init == 0.97
    assert type(recipe.kssm) is KSSMConfig and type(recipe.gpt) is GPTConfig
    # The table's keys are the config's keywords less what the tokenizer sets.
    assert "vocab_size" not in recipe_keys(KSSMConfig) and "dropout" in recipe_keys(KSSMConfig)
    assert set(recipe_keys(GPTConfig)) == {"n_embd", "n_layer", "n_head", "n_positions", "dropout"}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"kssm.mixr": "ssd"}, "unknown key 'mixr' in [kssm]; did you mean 'mixer'?"),
        ({"fusion.gate_int": 0.3}, "unknown key 'gate_int' in [fusion]; did you mean 'gate_init'?"),
        ({"gpt.dropuot": 0.1}, "unknown key 'dropuot' in [gpt]; did you mean 'dropout'?"),
        ({"kssm.vocab_size": 10}, "unknown key 'vocab_size' in [kssm]"),
        ({"kssm.u_min": "low"}, "kssm.u_min = 'low' has the wrong type; it needs float"),
        ({"kssm.mixer": "attention"}, "[kssm] mixer must be one of ssd, kuramoto, none"),
        ({"fusion.fusion": "GX"}, "[fusion] unknown fusion type 'GX'; did you mean GF?"),
        ({"kssm.u_min": 2.0, "kssm.u_max": 1.0}, "[kssm] bistable clamp bounds need 0 < u_min < u_max"),
        ({"kssm.bank_readout": "R"}, "[kssm] bank readout must be one of harmonics, harmonics+R, phases"),
    ],
)
def test_model_tables_are_checked_in_one_line(raises_phaselm, override, message):
    with raises_phaselm(re.escape(message)):
        load_recipe(LMRecipe, RECIPES / "kssm-v3.toml", override)


def test_each_default_is_written_once():
    """KSSMConfig's bank settings default to BankConfig's and build it field by field; the
    drifted defaults are decided by the recipes and docs (dropout 0.2; GF-MH's gate 0.3)."""
    default = KSSMConfig()
    assert default.bank_config() == BankConfig()
    changed = KSSMConfig(
        n_oscillators=8,
        n_harmonics=4,
        bistable=False,
        u_min=0.5,
        u_max=2.0,
        bank_steps=3,
        spread_init=0.2,
        reg_through_hidden=True,
        bank_phase_input="projected",
        bank_omega_init="random",
        bank_omega_std=0.5,
        bank_carry_phases=True,
        bank_readout="phases",
    )
    assert changed.bank_config() == BankConfig(
        n_oscillators=8,
        n_harmonics=4,
        bistable=False,
        u_min=0.5,
        u_max=2.0,
        steps=3,
        spread_init=0.2,
        reg_through_hidden=True,
        phase_input="projected",
        omega_init="random",
        omega_std=0.5,
        carry_phases=True,
        readout="phases",
    )
    assert (KSSMConfig().dropout, FusionConfig().dropout, GPTConfig().dropout) == (0.2, 0.2, 0.2)
    assert (FusionConfig().gate_init, FusionConfig().n_layers) == (0.3, 7)


# config.toml of a fusion run and model/config.json files as the code before the change wrote
# them (commit bbe6f4d; dropout and gate_init at the old FusionConfig defaults 0.0 and 0.5).
OLD_FUSION_RUN_TOML = """arch = "fusion"

[fusion]
mixer = "rwkv6"
fusion = "GF"
gate_init = 0.3
hidden_size = 192
n_layers = 9
rwkv_head_dim = 64
rwkv_mix_rank = 32
rwkv_decay_rank = 64
rwkv_chunk_size = 16
mamba_state_size = 16
mamba_expand = 2
mamba_head_dim = 64
mamba_conv_kernel = 4
mamba_chunk_size = 64
scan = "auto"
mlp_ratio = 4
dropout = 0.2

[data]
corpus = "tinyshakespeare"
val_fraction = 0.1
"""
OLD_KSSM_JSON = {
    "bank_steps": 1, "bistable": True, "chunk_size": 64, "conv_kernel": 4, "dropout": 0.0, "expand": 2, "head_dim": 16,
    "hidden_size": 32, "max_position_embeddings": 1024, "mixer": "ssd", "mlp_ratio": 4, "model_type": "kssm",
    "n_harmonics": 4, "n_layers": 2, "n_oscillators": 8, "position_embedding": False, "reg_through_hidden": False,
    "reg_weight": 0.5, "scan": "auto", "spread_init": 0.1, "state_size": 16, "tie_word_embeddings": True,
    "transformers_version": "5.23.0", "u_max": 10.0, "u_min": 0.1, "vocab_size": 40,
}
OLD_FUSION_JSON = {
    "dropout": 0.0,
    "fusion": "GF",
    "gate_init": 0.5,
    "hidden_size": 32,
    "mamba_chunk_size": 64,
    "mamba_conv_kernel": 4,
    "mamba_expand": 2,
    "mamba_head_dim": 16,
    "mamba_state_size": 16,
    "mixer": "hybrid",
    "mlp_ratio": 4,
    "model_type": "phaselm_fusion",
    "n_layers": 2,
    "rwkv_chunk_size": 16,
    "rwkv_decay_rank": 64,
    "rwkv_head_dim": 16,
    "rwkv_mix_rank": 32,
    "scan": "auto",
    "tie_word_embeddings": True,
    "transformers_version": "5.23.0",
    "vocab_size": 40,
}


def test_an_old_run_config_still_loads_and_writes_the_same_settings(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(OLD_FUSION_RUN_TOML)
    recipe = load_recipe(LMRecipe, path)
    assert recipe.fusion.mixer == "rwkv6" and recipe.fusion.n_layers == 9
    again = tmp_path / "again.toml"
    again.write_text(recipe_text(recipe))
    assert recipe_text(load_recipe(LMRecipe, again)) == recipe_text(recipe)


@pytest.mark.parametrize("saved", [OLD_KSSM_JSON, OLD_FUSION_JSON], ids=["kssm", "fusion"])
def test_old_model_folders_keep_their_saved_settings(saved, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = AutoConfig.from_pretrained(tmp_path)
    for key, value in saved.items():
        if key != "transformers_version":
            assert getattr(config, key) == value, key


def test_the_gpt_baseline_saves_as_plain_gpt2(tmp_path):
    recipe = load_recipe(
        LMRecipe,
        RECIPES / "gpt-baseline.toml",
        {"gpt.n_layer": 1, "gpt.n_embd": 32, "gpt.n_head": 2, "gpt.dropout": 0.1},
    )
    model = build_lm(recipe, 40)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "gpt2" and "dropout" not in saved
    assert (saved["resid_pdrop"], saved["embd_pdrop"], saved["attn_pdrop"]) == (0.1, 0.1, 0.1)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "GPT2Config"
