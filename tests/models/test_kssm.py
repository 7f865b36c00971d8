"""K-SSM: the bistable bank's equations, its guards, and what only K-SSM does (its mixer, orders,
the bank's start). Causality, cached decoding, save/load, the reference path and padding are
the shared contract (tests/models/test_model_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm.bistable import BankConfig, BistableBank, bistable_map, regulariser
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

TINY = dict(vocab_size=40, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)


def tiny(**overrides) -> KSSMForCausalLM:
    torch.manual_seed(0)
    return KSSMForCausalLM(KSSMConfig(**{**TINY, **overrides})).eval()


# ---------------------------------------------------------------- the bank


def test_bistable_map_against_a_float64_hand_computation():
    p = torch.tensor([[0.3, -1.2, 0.7, 2.0, 0.5, 0.9, -0.4, 1.1, 0.0, 0.0]], dtype=torch.float64)
    a, b, c, d, e, f, g, h = p[0, :8].tolist()
    delta, u = bistable_map(p, BankConfig(bistable=False))
    assert float(delta) == pytest.approx(b * g - c * f, rel=1e-12)
    assert float(u) == pytest.approx((d * g - c * h) / (a * g - c * e), rel=1e-12)
    cfg = BankConfig()
    reg = regulariser(delta, u.clamp(0.1, 10), cfg)
    u_c = min(max((d * g - c * h) / (a * g - c * e), 0.1), 10)
    assert float(reg) == pytest.approx(0.1 / (abs(b * g - c * f) + 1e-5) - 0.5 * math.log(u_c + 1e-5), rel=1e-10)


def test_clamp_keeps_u_in_range_and_monostable_does_not():
    p = torch.randn(10_000, 10) * 5
    _, u = bistable_map(p, BankConfig(u_min=0.1, u_max=10.0))
    assert u.min() >= 0.1 and u.max() <= 10.0
    _, u_free = bistable_map(p, BankConfig(bistable=False))
    assert u_free.min() < 0.1 and u_free.max() > 10.0


def test_singular_point_gives_finite_values_and_gradients():
    """Δ = 0 and a·g − c·e = 0 exactly: nothing may become NaN or Inf, forward or backward."""
    bank = BistableBank(6, BankConfig(n_oscillators=8, n_harmonics=4, bistable=False))
    with torch.no_grad():
        bank.to_params.weight.zero_()
        bank.to_params.bias.zero_()  # every parameter a…j is 0: Δ = 0, numerator = denominator = 0
    hidden = torch.randn(2, 5, 6, requires_grad=True)
    out = bank(hidden)
    assert torch.all(out.delta == 0)
    loss = out.out.sum() + out.reg.mean() + out.order.sum()
    assert torch.isfinite(loss)
    loss.backward()
    for tensor in [hidden.grad] + [p.grad for p in bank.parameters()]:
        assert tensor is not None and torch.isfinite(tensor).all()


def test_regulariser_is_per_position():
    bank = BistableBank(6, BankConfig(n_oscillators=8, n_harmonics=4))
    out = bank(torch.randn(3, 7, 6))
    assert out.reg.shape == (3, 7) and out.u.shape == (3, 7) and out.order.shape == (3, 7)


@pytest.mark.parametrize("through_hidden", [False, True])
def test_regulariser_reaches_the_hidden_state_only_when_asked(through_hidden):
    bank = BistableBank(6, BankConfig(n_oscillators=8, n_harmonics=4, reg_through_hidden=through_hidden))
    hidden = torch.randn(3, 7, 6, requires_grad=True)
    out = bank(hidden)
    direct = regulariser(*bistable_map(bank.to_params(hidden), bank.cfg), bank.cfg)
    torch.testing.assert_close(out.reg, direct)  # same values either way
    out.reg.mean().backward()
    assert bank.to_params.weight.grad.abs().sum() > 0
    reached = hidden.grad is not None and bool(hidden.grad.abs().sum() > 0)
    assert reached == through_hidden


def test_noise_only_in_training():
    bank = BistableBank(6, BankConfig(n_oscillators=8, n_harmonics=4, spread_init=0.5)).eval()
    h = torch.randn(1, 4, 6)
    torch.testing.assert_close(bank(h).out, bank(h).out, rtol=0, atol=0)
    bank.train()
    assert not torch.equal(bank(h).out, bank(h).out)


@pytest.mark.parametrize("bounds", [(1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (-1.0, 1.0)])
def test_bad_clamp_bounds(raises_phaselm, bounds):
    with raises_phaselm(r"0 < u_min < u_max"):
        KSSMConfig(**TINY, u_min=bounds[0], u_max=bounds[1])


# ---------------------------------------------------------------- the model


def test_the_mixer_mixes_tokens_and_the_control_does_not():
    ids = torch.randint(0, 40, (1, 12))
    changed = ids.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 40
    with_mixer = tiny()
    assert not torch.allclose(with_mixer(ids).logits[0, 8], with_mixer(changed).logits[0, 8])
    control = tiny(mixer="none")
    torch.testing.assert_close(control(ids).logits[0, 8], control(changed).logits[0, 8], rtol=0, atol=0)


def test_a_fresh_process_loads_a_saved_kssm_folder(tmp_path):
    """load_backbone registers PhaseLM's model types itself (no prior import of the model module)."""
    import subprocess
    import sys

    from phaselm.backbones import save_backbone
    from phaselm.data import CharTokenizer

    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,;:!?'\n")
    save_backbone(tiny(vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "model")
    code = (
        "from phaselm.backbones import load_backbone; "
        f"m, t = load_backbone({str(tmp_path / 'model')!r}); print(type(m).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "KSSMForCausalLM"


def test_orders_per_layer_and_position():
    out = tiny()(torch.randint(0, 40, (3, 11)), output_orders=True)
    assert out.orders.shape == (3, 2, 11) and out.u.shape == (3, 2, 11)
    assert (out.orders >= 0).all() and (out.orders <= 1).all()


def test_bad_inputs(raises_phaselm):
    with raises_phaselm(r"outside the model's vocabulary of 40"):
        tiny()(torch.tensor([[1, 2, 45]]))
    with raises_phaselm(r"longer than the model allows \(8 positions\)"):
        tiny(mixer="none", position_embedding=True, max_position_embeddings=8)(torch.zeros(1, 9, dtype=torch.long))
    with raises_phaselm(r"head_dim 24 must divide"):
        KSSMConfig(**{**TINY, "head_dim": 24})
    with raises_phaselm(r"mixer must be one of"):
        KSSMConfig(**{**TINY, "mixer": "attention"})


def test_bank_starts_at_a_regular_point_inside_a_model():
    """Δ ≈ 1 and u ≈ 1 at initialisation, even after the model's own weight init runs."""
    model = tiny()
    bank = model.blocks[0].bank
    p = bank.to_params(torch.randn(50, 32) * 0.1)
    delta, u = bistable_map(p, bank.cfg)
    assert (delta.abs() > 0.5).all() and ((u > 0.5) & (u < 2)).all()


def test_no_bank_ablation_has_no_bank_no_r_and_no_oscillator_sites():
    from phaselm.objectives import LanguageModelObjective

    model = tiny(bank=False)
    assert all(block.bank is None for block in model.blocks)
    assert not any("bank" in name for name, _ in model.named_parameters())
    ids = torch.randint(0, 40, (2, 12))
    out = model(ids, labels=ids, output_orders=True)
    assert out.orders is None and out.u is None and float(out.reg) == 0.0
    assert not model.intervention_sites().oscillators
    step = LanguageModelObjective(model)(ids[:, :-1], ids[:, 1:])
    assert step.order is None and torch.isfinite(step.losses["loss"])
