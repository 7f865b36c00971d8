"""Padding masks in PhaseLM's own models: a left-padded row computes what it would alone.

Greedy batched generation with left padding against each prompt generated alone, for K-SSM and
the fusion hybrid, and the refusal where position embeddings make padding wrong. The forward
logits at the real positions are part of the shared contract (tests/models/test_model_contract.py).
"""

from __future__ import annotations

import pytest
import torch

from phaselm.models.fusion import FusionConfig, FusionForCausalLM
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

VOCAB = 40


def kssm():
    return KSSMForCausalLM(
        KSSMConfig(
            vocab_size=VOCAB, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, dropout=0.0
        )
    )


def fusion(mixer="hybrid"):
    return FusionForCausalLM(
        FusionConfig(
            vocab_size=VOCAB, hidden_size=32, n_layers=2, rwkv_head_dim=16, mamba_head_dim=16, mixer=mixer, dropout=0.0
        )
    )


MODELS = {"kssm": kssm, "fusion": fusion}


def left_padded(prompts, pad=0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", ["kssm", "fusion"])
def test_batched_left_padded_generate_equals_one_prompt_at_a_time(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    prompts = [[3, 7, 1, 9, 4, 4, 2], [5, 8, 2], [11, 6, 6, 3, 1]]
    ids, mask = left_padded(prompts)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
    for i, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), **kwargs)[
            0, len(p) :
        ]
        assert torch.equal(batched[i], alone), (i, batched[i], alone)


def test_padding_with_position_embeddings_is_refused(raises_phaselm):
    model = KSSMForCausalLM(
        KSSMConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            n_layers=1,
            head_dim=16,
            n_oscillators=8,
            n_harmonics=4,
            position_embedding=True,
        )
    )
    ids, mask = left_padded([[1, 2, 3], [4]])
    with raises_phaselm("padding with position embeddings is not supported"):
        model(input_ids=ids, attention_mask=mask)
