"""Tiny randomly initialised Hugging Face models, seeding and the one-line PhaseLMError check,
shared by tests (import by name: pyproject puts tests/ on the path; conftest.py wraps them as fixtures).

The tiny models are built from configs (no downloads) and are small enough that a forward
pass or a five-token greedy generation takes milliseconds on a CPU.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch

from phaselm.errors import PhaseLMError

VOCAB = 64
HIDDEN = 32
N_LAYERS = {"mamba": 4, "gpt2": 3, "llama": 4, "rwkv": 4}
LAYER_PATH = {"mamba": "backbone.layers", "gpt2": "transformer.h", "llama": "model.layers", "rwkv": "rwkv.blocks"}
FAMILIES = tuple(N_LAYERS)


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _special_tokens() -> dict:
    # Keep special ids inside the tiny vocabulary (GPT-2's default 50256 is not) and never stop
    # generation early: all tests generate exactly the requested number of tokens.
    return {"bos_token_id": 1, "eos_token_id": None, "pad_token_id": 0}


def build_mamba():
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        state_size=8,
        num_hidden_layers=N_LAYERS["mamba"],
        expand=2,
        conv_kernel=4,
        **_special_tokens(),
    )
    return MambaForCausalLM(config)


def build_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=HIDDEN,
        n_layer=N_LAYERS["gpt2"],
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **_special_tokens(),
    )
    return GPT2LMHeadModel(config)


def build_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS["llama"],
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **_special_tokens(),
    )
    return LlamaForCausalLM(config)


def build_rwkv():
    from transformers import RwkvConfig, RwkvForCausalLM

    config = RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS["rwkv"],
        attention_hidden_size=HIDDEN,
        intermediate_size=64,
        context_length=64,
        **_special_tokens(),
    )
    return RwkvForCausalLM(config)


BUILDERS = {"mamba": build_mamba, "gpt2": build_gpt2, "llama": build_llama, "rwkv": build_rwkv}


def build_tiny(family: str, seed: int = 0):
    """A fresh tiny model of ``family`` in eval mode, identical for the same seed."""
    seed_everything(seed)
    model = BUILDERS[family]()
    model.eval()
    return model


@contextlib.contextmanager
def raises_one_line_phaselm_error(match: str | None = None):
    """``with raises_one_line_phaselm_error("regex"):`` — a PhaseLMError with a one-line message."""
    with pytest.raises(PhaseLMError, match=match) as info:
        yield info
    message = str(info.value)
    assert message.strip(), "PhaseLMError without a message"
    assert "\n" not in message, f"PhaseLMError message is not one line: {message!r}"
