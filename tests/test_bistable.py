"""The bank's driven-oscillator options (issue 15; phaselm.bistable's docstring has the equations):
each changes what it should, the defaults compute today's bank bit for bit, gradients reach
the new parameters, and the fused kernel runs only where it covers the configuration.

The bank's own equations and guards are tested in tests/models/test_kssm.py, the fused kernel
against the reference in tests/ops/test_bistable_bank.py, the driven K-SSM as a whole in
tests/models/test_model_contract.py (causal, cached == full, save/load, padding).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from phaselm import bistable, oscillators
from phaselm.bistable import BankConfig, BistableBank, bistable_map
from phaselm.ops import bistable_bank as bank_ops

TINY = dict(n_oscillators=8, n_harmonics=4)
DRIVEN = dict(phase_input="projected", omega_init="random", steps=2, carry_phases=True, readout="harmonics+R")


def bank(hidden_size=6, seed=0, **options) -> BistableBank:
    torch.manual_seed(seed)
    return BistableBank(hidden_size, BankConfig(**TINY, **options)).eval()


def phases_after_coupling(b: BistableBank, hidden: torch.Tensor) -> torch.Tensor:
    """The phases (B, T, N) the readout sees, recorded through the intervention slot."""
    seen = []
    b.phase_transforms.append(lambda theta: seen.append(theta) or theta)
    b(hidden)
    b.phase_transforms.clear()
    return seen[0]


def test_defaults_compute_todays_bank_bit_for_bit():
    b = bank()
    names = {"to_params.weight", "to_params.bias", "omega0", "spread", "readout.weight", "readout.bias"}
    assert set(b.state_dict()) == names
    hidden = torch.randn(2, 5, 6)
    got = b(hidden)
    # The bank as it was before the options, written out.
    _, u = bistable_map(b.to_params(hidden), b.cfg)
    theta = torch.linspace(-math.pi, math.pi, 9)[:-1] + hidden.mean(-1, keepdim=True)
    theta = theta + oscillators.velocity(theta, torch.zeros(8), 2.0 * torch.sigmoid(u))
    re, im = oscillators.harmonics(theta, 4)
    magnitude = torch.sqrt(re**2 + im**2 + 1e-12)
    assert torch.equal(got.out, b.readout(torch.cat([re, im, magnitude], -1)))
    assert torch.equal(got.order, magnitude[..., 0]) and torch.equal(got.u, u) and got.state is None


def test_projected_input_gives_each_oscillator_its_own_shift():
    hidden = torch.randn(1, 3, 6)
    for phase_input in ("mean", "projected"):
        b = bank(phase_input=phase_input, steps=0)  # no coupling: the phases are the input itself
        shift = phases_after_coupling(b, hidden) - b.omega0
        if phase_input == "mean":
            assert torch.allclose(shift, hidden.mean(-1, keepdim=True).expand_as(shift))
        else:
            torch.testing.assert_close(shift, b.to_phases(hidden))
            assert (shift[..., 0] - shift[..., 1]).abs().min() > 1e-4  # two oscillators, two shifts


def test_random_omega_does_not_start_evenly_spread():
    even, random = bank(), bank(omega_init="random", omega_std=2.0)
    assert oscillators.order_parameter(even.omega0) < 1e-5
    assert oscillators.order_parameter(random.omega0) > 0.05
    wide = BistableBank(6, BankConfig(n_oscillators=4000, n_harmonics=2, omega_init="random", omega_std=2.0))
    assert abs(wide.omega0.std().item() - 2.0) < 0.1  # σ is the config's


def test_steps_work_with_every_option():
    hidden = torch.randn(2, 4, 6)
    one, three = bank(**{**DRIVEN, "steps": 1}), bank(**{**DRIVEN, "steps": 3})
    out_one, out_three = one(hidden), three(hidden)
    assert torch.isfinite(out_three.out).all() and not torch.allclose(out_one.out, out_three.out)
    # Coupling pulls the phases together: more steps, more synchrony (K > 0, from R ≈ 0.7).
    assert (out_three.order > out_one.order).float().mean() > 0.9


def test_phases_readout_sees_each_phase():
    b = bank(readout="phases")
    assert b.readout.in_features == 2 * 8
    hidden = torch.randn(2, 3, 6)
    theta = phases_after_coupling(b, hidden)
    out = b(hidden)
    torch.testing.assert_close(out.out, b.readout(torch.cat([torch.cos(theta), torch.sin(theta)], -1)))
    torch.testing.assert_close(out.order, oscillators.order_parameter(theta), atol=1e-6, rtol=0)


def test_order_gated_readout_starts_as_the_identity_and_scales_with_r():
    hidden = torch.randn(2, 3, 6)
    plain, gated = bank(), bank(readout="harmonics+R")
    assert torch.equal(plain(hidden).out, gated(hidden).out)  # g = 0 at the start
    with torch.no_grad():
        gated.order_gain.fill_(0.5)
    out = gated(hidden)
    torch.testing.assert_close(out.out, plain(hidden).out * (1 + 0.5 * out.order.unsqueeze(-1)))
    gated.phase_transforms.append(lambda theta: theta * 0.0)  # every phase pinned: R = 1
    pinned = gated(hidden)
    assert torch.allclose(pinned.order, torch.ones_like(pinned.order))


def test_carried_phases_continue_where_they_stopped():
    b = bank(**DRIVEN)
    hidden = torch.randn(2, 9, 6)
    full = b(hidden)
    first = b(hidden[:, :4])
    rest = b(hidden[:, 4:], first.state)
    torch.testing.assert_close(torch.cat([first.out, rest.out], 1), full.out, rtol=0, atol=1e-6)
    torch.testing.assert_close(rest.state, full.state, rtol=0, atol=1e-6)
    # θ_0 starts from 0 + ω₀ + drive: the first position is the stateless bank's.
    stateless = bank(**{**DRIVEN, "carry_phases": False})
    torch.testing.assert_close(stateless(hidden[:, :1]).out, full.out[:, :1], rtol=0, atol=1e-6)
    # Later positions see earlier ones: not the stateless bank any more.
    assert not torch.allclose(stateless(hidden).out[:, 1:], full.out[:, 1:])


def test_padding_leaves_the_carried_phases_untouched():
    b = bank(**DRIVEN)
    real = torch.randn(1, 5, 6)
    padded = torch.cat([torch.randn(1, 3, 6), real], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    batched = b(padded, mask=mask)
    alone = b(real)
    torch.testing.assert_close(batched.out[:, 3:], alone.out, rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.state, alone.state, rtol=0, atol=1e-6)


def test_gradients_reach_the_new_parameters():
    b = bank(**DRIVEN).train()
    with torch.no_grad():
        b.order_gain.fill_(0.1)  # away from 0 so every factor of the gate carries a gradient
    hidden = torch.randn(2, 5, 6, requires_grad=True)
    out = b(hidden)
    (out.out.square().mean() + out.order.mean()).backward()
    for name in ("to_phases.weight", "to_phases.bias", "order_gain", "omega0", "readout.weight", "spread"):
        grad = dict(b.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert hidden.grad.abs().sum() > 0
    phases = bank(readout="phases")
    phases(torch.randn(2, 3, 6)).out.sum().backward()
    assert phases.readout.weight.grad.abs().sum() > 0 and phases.omega0.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options,why",
    [
        ({}, None),
        ({"omega_init": "random"}, None),  # ω₀ is the kernel's input
        ({"readout": "harmonics+R"}, None),  # the gate acts on the kernel's features
        ({"phase_input": "projected"}, "phase_input = 'projected'"),
        ({"carry_phases": True}, "carry_phases is on"),
        ({"readout": "phases"}, "readout = 'phases'"),
        ({"steps": 2}, "bank steps = 2"),
    ],
)
def test_the_fused_kernel_runs_only_where_it_covers_the_bank(options, why):
    reason = bank(**options).reference_reason()
    assert reason == why if why is None else why in reason


requires_triton = pytest.mark.skipif(bank_ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@requires_triton
def test_fused_bank_with_random_omega_and_order_gate_equals_the_reference():
    reference = bank(omega_init="random", readout="harmonics+R").to(DEVICE)
    with torch.no_grad():
        reference.order_gain.normal_()
    fused = bank(omega_init="random", readout="harmonics+R").to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    reference.backend, fused.backend = "reference", "triton"
    hidden = torch.randn(2, 5, 6, device=DEVICE)
    outputs, grads = [], []
    for b in (reference, fused):
        out = b(hidden)
        (out.out.square().mean() + out.order.mean()).backward()
        outputs.append(out)
        grads.append({name: p.grad for name, p in b.named_parameters()})
    torch.testing.assert_close(outputs[1].out, outputs[0].out, rtol=1e-4, atol=1e-5)
    for name, want in grads[0].items():
        if want is None:  # δ without noise (eval): unused by the reference, a zero from the kernel
            assert grads[1][name] is None or not grads[1][name].any(), name
        else:
            torch.testing.assert_close(grads[1][name], want, rtol=1e-3, atol=1e-5, msg=name)


@requires_triton
def test_a_driven_bank_asked_for_triton_takes_the_reference_and_says_why(caplog, monkeypatch):
    b = bank(phase_input="projected").to(DEVICE)
    b.backend = "triton"
    called = []
    original = bistable.bistable_bank_triton
    monkeypatch.setattr(bistable, "bistable_bank_triton", lambda *a, **k: called.append(1) or original(*a, **k))
    monkeypatch.setattr(bistable, "_logged_fallbacks", set())  # each reason is logged once per process
    with caplog.at_level(logging.INFO, logger="phaselm.ops"):
        b(torch.randn(1, 3, 6, device=DEVICE))
    assert not called
    assert "bistable_bank: phase_input = 'projected', so the reference runs" in caplog.text
    b.cfg.phase_input = "mean"  # the same bank, now covered: the kernel runs
    b(torch.randn(1, 3, 6, device=DEVICE))
    assert called
