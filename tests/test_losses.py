"""The Phase-Mamba objective, term by term, against float64 hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm.losses import LossConfig, phase_lm_losses


def reference64(logits, targets, order, cfg: LossConfig):
    x = logits.double()
    x = x - x.max(-1, keepdim=True).values
    log_z = torch.log(torch.exp(x).sum(-1, keepdim=True))
    logp = x - log_z
    p = torch.exp(logp)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()
    u = -(p * logp).sum(-1) / math.log(logits.shape[-1])
    u_reg = (u - cfg.uncertainty_target).abs().mean()
    presence = (1.0 - (p * p).sum(-1)).mean()
    if order is None:
        tonal = torch.zeros((), dtype=torch.float64)
    else:
        r = order.double()
        tonal = torch.where(r > cfg.tonal_threshold, r - cfg.tonal_center, torch.zeros_like(r)).mean()
    total = ce + cfg.uncertainty_weight * u_reg - cfg.presence_weight * presence + cfg.tonal_weight * tonal
    return {"loss": total, "ce": ce, "uncertainty_reg": u_reg, "presence": presence, "tonal": tonal}


def make_inputs(b=3, t=5, v=13, scale=2.0):
    logits = torch.randn(b, t, v) * scale
    logits[0, 0] = torch.linspace(-1, 1, v) * 0.01  # nearly uniform: U ≈ 1
    logits[0, 1, 3] += 30.0  # peaked: U ≈ 0
    targets = torch.randint(0, v, (b, t))
    # R with values on both sides of the 0.95 over-sync threshold, and exactly on it.
    order = torch.tensor(
        [[0.99, 0.96, 0.95, 0.5, 0.97], [0.1, 0.951, 0.8, 1.0, 0.3], [0.94, 0.96, 0.2, 0.99, 0.0]]
    )[:b, :t]
    return logits, targets, order


def test_terms_match_float64_reference():
    logits, targets, order = make_inputs()
    cfg = LossConfig()
    got = phase_lm_losses(logits, targets, order, cfg)
    expected = reference64(logits, targets, order, cfg)
    assert set(got) == {"loss", "ce", "uncertainty_reg", "presence", "tonal"}
    for name, value in expected.items():
        assert got[name].dim() == 0, name
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name


def test_default_weights_are_the_seed_values():
    """total = ce + 0.1·u_reg − 0.05·presence + 0.5·tonal, U* = 0.5, centre 0.8, threshold 0.95."""
    logits, targets, order = make_inputs()
    got = phase_lm_losses(logits, targets, order, LossConfig())
    total = got["ce"] + 0.1 * got["uncertainty_reg"] - 0.05 * got["presence"] + 0.5 * got["tonal"]
    assert got["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # The tonal term from its definition: mean over positions of (R − 0.8)·[R > 0.95].
    r = [v for row in order.double().tolist() for v in row]
    assert got["tonal"].item() == pytest.approx(sum(x - 0.8 for x in r if x > 0.95) / len(r), rel=1e-6)
    # Presence is rewarded (lowers the loss), the others raise it.
    assert got["presence"].item() > 0 and got["tonal"].item() > 0 and got["uncertainty_reg"].item() > 0


def test_uncertainty_regulariser_is_mean_abs_deviation_per_position():
    """mean|U − 0.5| per position, not |mean U − 0.5|: two positions at U = 0 and U = 1 cost 0.5."""
    v = 8
    logits = torch.zeros(1, 2, v)
    logits[0, 0, 0] = 200.0  # U = 0
    targets = torch.zeros(1, 2, dtype=torch.long)
    got = phase_lm_losses(logits, targets, None, LossConfig())
    assert got["uncertainty_reg"].item() == pytest.approx(0.5, abs=1e-6)
    # presence: position 0 → 1 − 1 = 0, position 1 → 1 − 1/V.
    assert got["presence"].item() == pytest.approx((1 - 1 / v) / 2, abs=1e-6)


def test_tonal_is_per_position_not_gated_on_batch_mean():
    """Mean R = 0.525 (not over-sync) but one position at 0.99 is: the penalty is (0.99 − 0.8)/2."""
    logits = torch.randn(1, 2, 5)
    targets = torch.tensor([[1, 2]])
    got = phase_lm_losses(logits, targets, torch.tensor([[0.99, 0.06]]), LossConfig())
    assert got["tonal"].item() == pytest.approx(0.19 / 2, rel=1e-5)
    got = phase_lm_losses(logits, targets, torch.tensor([[0.95, 0.95]]), LossConfig())
    assert got["tonal"].item() == 0.0


def test_without_order_tonal_is_zero():
    logits, targets, _ = make_inputs()
    cfg = LossConfig()
    got = phase_lm_losses(logits, targets, None, cfg)
    expected = reference64(logits, targets, None, cfg)
    assert got["tonal"].item() == 0.0
    assert got["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-5)


def test_custom_weights_are_used():
    logits, targets, order = make_inputs(b=2, t=4, v=7)
    cfg = LossConfig(
        uncertainty_weight=0.7,
        uncertainty_target=0.3,
        presence_weight=0.2,
        tonal_weight=2.0,
        tonal_center=0.5,
        tonal_threshold=0.9,
    )
    got = phase_lm_losses(logits, targets, order, cfg)
    expected = reference64(logits, targets, order, cfg)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name


def test_bf16_logits_give_float32_terms_and_gradients_flow():
    logits, targets, order = make_inputs(b=2, t=3, v=9)
    logits = logits.bfloat16().requires_grad_(True)
    order = order.clone().requires_grad_(True)
    got = phase_lm_losses(logits, targets, order, LossConfig())
    assert got["loss"].dtype == torch.float32
    expected = reference64(logits.detach().float(), targets, order.detach(), LossConfig())
    assert got["loss"].item() == pytest.approx(expected["loss"].item(), rel=1e-5)
    got["loss"].backward()
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0
    # dL/dR = 0.5/(B·T) where R > 0.95, 0 elsewhere.
    expected_grad = (order.detach() > 0.95).float() * 0.5 / order.numel()
    torch.testing.assert_close(order.grad, expected_grad)
