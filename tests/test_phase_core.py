"""The Phase Core: causality (no averaging over the batch or the sequence), statelessness (no phase
kept between calls), recurrent continuation, and modulation in inference as in training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from phaselm.phase_core import PhaseCore, PhaseCoreConfig

D, N = 24, 8
MODES = ("token", "recurrent")
MODULATIONS = ("order", "phase", "order+phase")


def make_core(mode="token", modulation="order", nontrivial=True, **kwargs) -> PhaseCore:
    cfg = PhaseCoreConfig(hidden_size=D, n_oscillators=N, mode=mode, modulation=modulation, steps=6, **kwargs)
    core = PhaseCore(cfg)
    if nontrivial:
        make_nontrivial(core)
    return core.eval()


def make_nontrivial(core: PhaseCore) -> None:
    """Turn the identity modulation into one that depends on the phases, so leaks would show."""
    with torch.no_grad():
        if hasattr(core, "alpha"):
            core.alpha.fill_(0.5)
        if hasattr(core, "from_phase"):
            core.from_phase.weight.normal_(0.0, 1.0)
            core.from_phase.bias.normal_(0.0, 0.1)


def pairwise_velocity64(theta, omega, k):
    diff = theta.unsqueeze(-2) - theta.unsqueeze(-1)
    return omega + k * torch.sin(diff).sum(-1) / theta.shape[-1]


def kick64(core: PhaseCore, hidden: torch.Tensor) -> torch.Tensor:
    h = hidden.double()
    normed = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return normed @ core.to_phase.weight.double().T + core.to_phase.bias.double()


def euler64(theta, omega, k, dt, steps):
    for _ in range(steps):
        theta = theta + dt * pairwise_velocity64(theta, omega, k)
    return theta


# ---------------------------------------------------------------- independent references


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_token_mode_matches_float64_reference(scale):
    core = make_core("token")
    core.coupling_scale.fill_(scale)
    hidden = torch.randn(2, 5, D) * 4
    out = core(hidden)
    k = 2.0 * scale
    phases = euler64(kick64(core, hidden), core.omega.double(), k, core.config.dt, core.config.steps)
    torch.testing.assert_close(out.phases.double(), phases, atol=1e-4, rtol=1e-5)
    order = torch.exp(1j * phases).mean(-1).abs()
    torch.testing.assert_close(out.order.double(), order, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.hidden.double(), hidden.double() * (1 + 0.5 * order.unsqueeze(-1)), atol=1e-5, rtol=1e-5
    )
    assert out.state is None
    assert out.order.dtype == torch.float32 and out.phases.dtype == torch.float32
    assert out.order.shape == (2, 5) and out.phases.shape == (2, 5, N) and out.hidden.shape == hidden.shape


def test_recurrent_mode_matches_float64_reference():
    core = make_core("recurrent")
    hidden = torch.randn(2, 6, D)
    out = core(hidden)
    kick = kick64(core, hidden)
    prev = torch.zeros(2, N, dtype=torch.float64)
    ref = []
    for t in range(hidden.shape[1]):
        prev = euler64(prev + kick[:, t], core.omega.double(), 2.0, core.config.dt, core.config.steps)
        ref.append(prev)
    ref = torch.stack(ref, dim=1)
    # Carried phases may be wrapped by 2π: compare angles through sin and cos.
    torch.testing.assert_close(torch.sin(out.phases.double()), torch.sin(ref), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cos(out.phases.double()), torch.cos(ref), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.order.double(), torch.exp(1j * ref).mean(-1).abs(), atol=1e-5, rtol=0)
    assert out.state.shape == (2, N)
    torch.testing.assert_close(torch.sin(out.state.double()), torch.sin(ref[:, -1]), atol=1e-4, rtol=0)


def test_phase_modulation_matches_reference():
    core = make_core("token", "phase")
    hidden = torch.randn(2, 4, D)
    out = core(hidden)
    p = out.phases.double()
    feats = torch.cat([torch.sin(p), torch.cos(p)], -1)
    gain = 1 + 0.1 * torch.tanh(feats @ core.from_phase.weight.double().T + core.from_phase.bias.double())
    torch.testing.assert_close(out.hidden.double(), hidden.double() * gain, atol=1e-5, rtol=1e-5)


def test_order_and_phase_modulation_adds_both_terms():
    core = make_core("recurrent", "order+phase")
    hidden = torch.randn(2, 4, D)
    out = core(hidden)
    p = out.phases.double()
    feats = torch.cat([torch.sin(p), torch.cos(p)], -1)
    phase_term = 0.1 * torch.tanh(feats @ core.from_phase.weight.double().T + core.from_phase.bias.double())
    gain = 1 + 0.5 * out.order.double().unsqueeze(-1) + phase_term
    torch.testing.assert_close(out.hidden.double(), hidden.double() * gain, atol=1e-5, rtol=1e-5)
    fresh = make_core("token", "order+phase", nontrivial=False)
    assert torch.equal(fresh(hidden).hidden, hidden)  # α = 0, W = 0: a fresh graft changes nothing
    fresh(hidden).hidden.sum().backward()
    assert fresh.alpha.grad.abs() > 0 and fresh.from_phase.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- causality, independence


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_future_positions_do_not_affect_the_past(mode, modulation):
    core = make_core(mode, modulation)
    hidden = torch.randn(2, 7, D)
    base = core(hidden)
    for t in (0, 3, 5):
        changed = hidden.clone()
        changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :]) * 5
        out = core(changed)
        assert torch.equal(out.hidden[:, : t + 1], base.hidden[:, : t + 1])
        assert torch.equal(out.order[:, : t + 1], base.order[:, : t + 1])
        assert torch.equal(out.phases[:, : t + 1], base.phases[:, : t + 1])
        assert not torch.allclose(out.order[:, t + 1 :], base.order[:, t + 1 :])
        assert not torch.allclose(out.hidden[:, t + 1 :], base.hidden[:, t + 1 :])


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_samples_in_a_batch_are_independent(mode, modulation):
    core = make_core(mode, modulation)
    hidden = torch.randn(3, 5, D)
    base = core(hidden)
    changed = hidden.clone()
    changed[1] = torch.randn(5, D) * 3
    out = core(changed)
    for i in (0, 2):
        assert torch.equal(out.hidden[i], base.hidden[i])
        assert torch.equal(out.order[i], base.order[i])
        assert torch.equal(out.phases[i], base.phases[i])
    assert not torch.allclose(out.order[1], base.order[1])
    # A sample alone gives the same result as inside the batch (tolerance: batch size changes BLAS paths).
    alone = core(hidden[2:3])
    torch.testing.assert_close(alone.order[0], base.order[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone.hidden[0], base.hidden[2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_forward_is_stateless(mode):
    """No hidden mutable state: the same call gives the same result whatever ran before."""
    core = make_core(mode)
    hidden = torch.randn(2, 4, D)
    first = core(hidden)
    core(torch.randn(2, 9, D) * 10)
    core.train()
    core(torch.randn(1, 3, D))
    core.eval()
    again = core(hidden)
    assert torch.equal(first.hidden, again.hidden) and torch.equal(first.phases, again.phases)
    buffers = {k: v.clone() for k, v in core.state_dict().items()}
    core(hidden)
    assert all(torch.equal(buffers[k], v) for k, v in core.state_dict().items())


# ---------------------------------------------------------------- recurrent state


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("split", [1, 3, 6])
def test_recurrent_state_continues_the_sequence(split, modulation):
    core = make_core("recurrent", modulation)
    hidden = torch.randn(2, 7, D)
    full = core(hidden)
    head = core(hidden[:, :split])
    tail = core(hidden[:, split:], state=head.state)
    for name in ("hidden", "order"):
        joined = torch.cat([getattr(head, name), getattr(tail, name)], dim=1)
        torch.testing.assert_close(joined, getattr(full, name), atol=1e-6, rtol=0)
    joined = torch.cat([head.phases, tail.phases], dim=1)
    torch.testing.assert_close(joined, full.phases, atol=1e-6, rtol=0)
    torch.testing.assert_close(tail.state, full.state, atol=1e-6, rtol=0)
    # Without the state the tail starts fresh and differs.
    fresh = core(hidden[:, split:])
    assert not torch.allclose(fresh.phases, tail.phases, atol=1e-3)


def test_recurrent_state_carries_one_token_at_a_time():
    core = make_core("recurrent")
    hidden = torch.randn(2, 6, D)
    full = core(hidden)
    state, orders = None, []
    for t in range(6):
        step = core(hidden[:, t : t + 1], state=state)
        state = step.state
        orders.append(step.order)
    torch.testing.assert_close(torch.cat(orders, 1), full.order, atol=1e-6, rtol=0)


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_token_mode_equals_recurrent_first_position(modulation):
    token = make_core("token", modulation)
    recurrent = make_core("recurrent", modulation, nontrivial=False)
    recurrent.load_state_dict(token.state_dict())
    hidden = torch.randn(2, 5, D) * 2
    out = token(hidden)
    for t in range(5):
        single = recurrent(hidden[:, t : t + 1])
        torch.testing.assert_close(single.phases[:, 0], out.phases[:, t], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.order[:, 0], out.order[:, t], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.hidden[:, 0], out.hidden[:, t], atol=1e-6, rtol=0)
    # ...but the recurrent mode over the whole sequence carries phases and so differs after t = 0.
    rec = recurrent(hidden)
    torch.testing.assert_close(rec.order[:, 0], out.order[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(rec.phases[:, 1:], out.phases[:, 1:], atol=1e-3)


# ---------------------------------------------------------------- modulation and gradients


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_modulation_starts_as_identity(mode, modulation):
    core = make_core(mode, modulation, nontrivial=False)
    for dtype in (torch.float32, torch.bfloat16):
        hidden = (torch.randn(2, 5, D) * 3).to(dtype)
        out = core(hidden)
        assert out.hidden.dtype == dtype
        assert torch.equal(out.hidden, hidden)
        assert out.order.dtype == torch.float32


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_gradients_reach_the_core_from_the_first_step(modulation):
    core = make_core("token", modulation, nontrivial=False)
    hidden = torch.randn(2, 5, D)
    target = torch.randn(2, 5, D)
    F.mse_loss(core(hidden).hidden, target).backward()
    first = core.alpha if modulation == "order" else core.from_phase.weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_all_core_parameters(mode, modulation):
    core = make_core(mode, modulation, learn_coupling=True)
    hidden = torch.randn(2, 5, D, requires_grad=True)
    F.mse_loss(core(hidden).hidden, torch.randn(2, 5, D)).backward()
    for name, p in core.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert "log_coupling" in dict(core.named_parameters())


def test_coupling_scale_buffer_changes_k_and_the_phases():
    core = make_core("token")
    assert "coupling_scale" in dict(core.named_buffers())
    assert core.coupling.item() == pytest.approx(2.0)
    hidden = torch.randn(2, 5, D)
    base = core(hidden)
    core.coupling_scale.fill_(0.25)
    assert core.coupling.item() == pytest.approx(0.5)
    weaker = core(hidden)
    assert not torch.allclose(weaker.phases, base.phases, atol=1e-3)
    core.coupling_scale.fill_(5.0)
    stronger = core(hidden)
    # Stronger coupling pulls the oscillators together: R rises on average.
    assert stronger.order.mean() > weaker.order.mean()
    core.coupling_scale.fill_(1.0)
    assert torch.equal(core(hidden).phases, base.phases)


@pytest.mark.parametrize("mode", MODES)
def test_core_runs_in_float32_under_bf16_autocast(mode):
    core = make_core(mode)
    hidden = torch.randn(2, 4, D)
    plain = core(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = core(hidden)
    assert auto.order.dtype == torch.float32 and auto.phases.dtype == torch.float32
    torch.testing.assert_close(auto.phases, plain.phases, atol=1e-5, rtol=0)
    torch.testing.assert_close(auto.order, plain.order, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "sequence"}, "mode"),
        ({"modulation": "additive"}, "modulation"),
        ({"n_oscillators": 1}, "n_oscillators"),
        ({"steps": -1}, "steps"),
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"coupling": -1.0}, "coupling"),
    ],
)
def test_bad_config_raises(kwargs, match, raises_phaselm):
    with raises_phaselm(match):
        PhaseCoreConfig(hidden_size=D, **kwargs)


def test_missing_hidden_size_and_wrong_input_shape_raise(raises_phaselm):
    with raises_phaselm("hidden_size"):
        PhaseCore(PhaseCoreConfig())
    core = make_core()
    with raises_phaselm(str(D)):
        core(torch.randn(2, 5, D + 1))
    with raises_phaselm(str(D)):
        core(torch.randn(5, D))


def test_zero_steps_uses_the_kick_directly():
    core = PhaseCore(PhaseCoreConfig(hidden_size=D, n_oscillators=N, steps=0))
    hidden = torch.randn(1, 3, D)
    out = core(hidden)
    torch.testing.assert_close(out.phases.double(), kick64(core, hidden), atol=1e-5, rtol=0)
    assert math.isfinite(out.order.sum().item())
