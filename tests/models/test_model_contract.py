"""The contract every language model family of PhaseLM keeps, tested on tiny configs of each:
K-SSM (bistable, monostable, no mixer, Kuramoto mixer, driven bank), every fusion type, the two
pure fusion-family models, the hybrids with a Kuramoto branch, and the GPT-2 baseline.

- causal: changing later tokens leaves earlier logits bit for bit, and rows of a batch do not mix;
- cached step-by-step decoding gives the logits of the full forward;
- save_pretrained → AutoModelForCausalLM.from_pretrained gives identical logits;
- the reference path equals the fast path (forward and every gradient, on a length that is not a
  multiple of any chunk), with the resolver's record naming each path that ran;
- left padding with an attention mask leaves a row's real positions as they are unpadded
  (for the models that take masks).

A new model family joins by adding an entry to ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from phaselm.models.fusion import FUSIONS, FusionConfig, FusionForCausalLM
from phaselm.models.gpt import GPTConfig, build_gpt
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM
from phaselm.ops import backend

VOCAB = 40
KSSM_TINY = dict(
    vocab_size=VOCAB, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8, dropout=0.0
)
FUSION_TINY = dict(
    vocab_size=VOCAB, hidden_size=32, n_layers=2, rwkv_head_dim=16, rwkv_mix_rank=4, rwkv_decay_rank=8,
    rwkv_chunk_size=4, mamba_state_size=8, mamba_head_dim=16, mamba_chunk_size=8, dropout=0.0,
)
GPT_TINY = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, dropout=0.0)


@dataclass(frozen=True)
class Family:
    """How to build a tiny model of one family on its reference or its fast ("auto") path."""

    build: Callable[[str], torch.nn.Module]  # "reference" or "auto" → a model in eval mode
    ops: tuple[str, ...] = ()  # ops of phaselm.ops.backend whose choice the path sets
    takes_padding: bool = True


def kssm(**overrides) -> Family:
    return Family(
        lambda path: KSSMForCausalLM(KSSMConfig(**{**KSSM_TINY, **overrides}, scan=path)),
        ("ssd",) if overrides.get("mixer") != "none" else (),
    )


def kssm_kuramoto() -> Family:
    tiny = dict(mixer="kuramoto", kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)

    def build(path: str) -> KSSMForCausalLM:
        model = KSSMForCausalLM(KSSMConfig(**{**KSSM_TINY, **tiny}, kuramoto_backend=path))
        # The bank's evenly spread ω₀ makes every harmonic |Z_n| ≈ 0, where its gradient is a ratio
        # of rounding errors: ω₀'s gradient then differs by ~2 % between any two float32 paths
        # upstream. Spread unevenly (as training leaves it) the comparison measures the mixer.
        with torch.no_grad():
            for block in model.blocks:
                block.bank.omega0.add_(0.5 * torch.randn_like(block.bank.omega0))
        return model

    return Family(build, ("kuramoto_mixer",))


def fusion(**overrides) -> Family:
    mixer = overrides.get("mixer", "hybrid")
    ops = {"hybrid": ("rwkv6", "ssd"), "rwkv6": ("rwkv6",), "mamba2": ("ssd",)}[mixer]
    return Family(lambda path: FusionForCausalLM(FusionConfig(**{**FUSION_TINY, **overrides}, scan=path)), ops)


def fusion_kuramoto(branches: tuple[str, str]) -> Family:
    """A GF hybrid with the Kuramoto token mixer as one of its two branches."""
    ops = tuple({"rwkv6": "rwkv6", "mamba2": "ssd", "kuramoto": "kuramoto_mixer"}[kind] for kind in branches)
    tiny = dict(branches=branches, kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)

    def build(path: str) -> FusionForCausalLM:
        return FusionForCausalLM(FusionConfig(**FUSION_TINY, **tiny, scan=path, kuramoto_backend=path))

    return Family(build, ops)


def gpt() -> Family:
    # GPT-2's paths are transformers' attention implementations: eager is the plain reference.
    attention = {"reference": "eager", "auto": "sdpa"}
    def build(path: str) -> GPT2LMHeadModel:
        model = build_gpt(GPTConfig(**GPT_TINY))  # the baseline as train-lm builds it: SDPA
        model.set_attn_implementation(attention[path])
        assert model.config._attn_implementation == attention[path]
        return model

    return Family(build)


FAMILIES = {
    "kssm-bistable": kssm(),
    "kssm-monostable": kssm(bistable=False),
    "kssm-nobank": kssm(bank=False),
    "kssm-nomixer": Family(kssm(mixer="none", position_embedding=True).build, (), takes_padding=False),
    "kssm-kuramoto": kssm_kuramoto(),
    # recipes/kssm-v3-driven.toml's bank: a recurrent bank (carried phases) in the cache and under padding
    "kssm-driven": kssm(
        bank_phase_input="projected", bank_omega_init="random", bank_steps=2, bank_carry_phases=True,
        bank_readout="harmonics+R",
    ),
    **{f"fusion-{kind}": fusion(fusion=kind) for kind in FUSIONS},
    "rwkv6": fusion(mixer="rwkv6"),
    "mamba2": fusion(mixer="mamba2"),
    # the Kuramoto mixer in either place (recipes/fusion-gf-kuramoto.toml: in Mamba-2's)
    "fusion-rwkv6-kuramoto": fusion_kuramoto(("rwkv6", "kuramoto")),
    "fusion-kuramoto-mamba2": fusion_kuramoto(("kuramoto", "mamba2")),
    "gpt": gpt(),
}


def tiny(name: str, path: str = "auto") -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name].build(path).eval()


def forward(model, ids, **kwargs) -> torch.Tensor:
    return model(input_ids=ids, **kwargs).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_causal_and_rows_do_not_mix(name):
    model = tiny(name)
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        base = forward(model, ids)
        later = ids.clone()
        later[:, 11:] = (later[:, 11:] + 1) % VOCAB
        changed = forward(model, later)
        torch.testing.assert_close(changed[:, :11], base[:, :11], rtol=0, atol=0)
        assert not torch.allclose(changed[:, 11:], base[:, 11:])  # the change does reach later positions
        other_row = ids.clone()
        other_row[1] = (other_row[1] + 3) % VOCAB
        torch.testing.assert_close(forward(model, other_row)[0], base[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_decoding_equals_the_full_forward(name):
    model = tiny(name)
    prompt = torch.randint(1, VOCAB, (2, 7))  # no id 0: generate would read the pad id as padding
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=9, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True
        )
        full = forward(model, out.sequences)
    assert out.sequences.shape == (2, 16)
    for i, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, 6 + i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_save_and_load_give_identical_logits(name, tmp_path):
    model = tiny(name)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    settings = [
        key
        for key in model.config.to_dict()
        if key not in ("_name_or_path", "architectures", "dtype", "transformers_version")
    ]
    assert {k: getattr(loaded.config, k) for k in settings} == {k: getattr(model.config, k) for k in settings}
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(forward(loaded, ids), forward(model, ids), rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_path_equals_fast_path_forward_and_gradients(name):
    fast, reference = tiny(name, "auto"), tiny(name, "reference")
    reference.load_state_dict(fast.state_dict())
    ids = torch.randint(0, VOCAB, (2, 19))  # 19: not a multiple of any chunk size
    ran = {}
    for path, model in (("auto", fast), ("reference", reference)):
        logits = forward(model, ids)
        logits.square().mean().backward()
        ran[path] = {op: backend.chosen()[f"{op}@cpu"] for op in FAMILIES[name].ops}
        if path == "auto":
            fast_logits = logits
    assert all(choice == "reference" for choice in ran["reference"].values())
    assert all(choice != "reference" for choice in ran["auto"].values())  # "auto" took the fast path
    torch.testing.assert_close(fast_logits, forward(reference, ids), atol=1e-5, rtol=1e-4)
    for (param_name, a), b in zip(fast.named_parameters(), reference.parameters()):
        assert (a.grad is None) == (b.grad is None), param_name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-3, msg=param_name)


def left_padded(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), mask (B, T)) with each prompt at the right end of its row."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", [name for name, family in FAMILIES.items() if family.takes_padding])
def test_left_padding_leaves_the_real_positions_unchanged(name):
    model = tiny(name)
    prompts = [[3, 7, 1, 9, 4, 4, 2], [5, 8, 2], [11, 6, 6, 3, 1]]
    ids, mask = left_padded(prompts)
    extra = {}
    if isinstance(model, GPT2LMHeadModel):  # attention takes positions from the caller (as generate does)
        extra["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        batched = forward(model, ids, attention_mask=mask, **extra)
        for i, p in enumerate(prompts):
            alone = forward(model, torch.tensor([p]))[0]
            torch.testing.assert_close(batched[i, -len(p) :], alone, rtol=1e-4, atol=1e-5)
