"""Kuramoto core (dθ_i/dt = ω_i + K·R·sin(ψ − θ_i), R e^{iψ} = mean of e^{iθ_j}) against independent
float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm import oscillators as osc


def z64(theta: torch.Tensor, n: int = 1) -> torch.Tensor:
    """Reference Z_n = (1/N) Σ_j e^{i n θ_j} in complex128."""
    return torch.exp(1j * n * theta.double()).mean(-1)


def pairwise_velocity64(theta: torch.Tensor, omega: torch.Tensor, k) -> torch.Tensor:
    """O(N²) reference ω_i + (K/N) Σ_j sin(θ_j − θ_i) in float64."""
    th = theta.double()
    diff = th.unsqueeze(-2) - th.unsqueeze(-1)  # [..., i, j] = θ_j − θ_i
    coupling_sum = torch.sin(diff).sum(-1)
    k = k.double().unsqueeze(-1) if isinstance(k, torch.Tensor) else float(k)
    return omega.double() + k * coupling_sum / th.shape[-1]


def euler64(theta, omega, k, dt, steps, drive=None):
    th = theta.double()
    drift = omega.double() if drive is None else omega.double() + drive.double()
    for _ in range(steps):
        th = th + dt * pairwise_velocity64(th, drift, k)
    return th


# ---------------------------------------------------------------- order parameter, harmonics


def test_order_parameter_is_one_for_equal_phases():
    common = torch.rand(3, 4, 1) * 20 - 10
    theta = common.expand(3, 4, 16).clone()
    r = osc.order_parameter(theta)
    assert r.shape == (3, 4)
    torch.testing.assert_close(r, torch.ones(3, 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 5, 16, 64])
def test_order_parameter_is_zero_for_evenly_spread_phases(n):
    offsets = torch.tensor([0.0, 0.3, -1.7, 5.0], dtype=torch.float64).unsqueeze(-1)
    theta = (offsets + torch.arange(n, dtype=torch.float64) * 2 * math.pi / n).float()  # (4, n)
    assert osc.order_parameter(theta).max() < 1e-5
    assert osc.order_parameter(osc.evenly_spread(n)) < 1e-5


def test_order_parameter_matches_float64_reference():
    theta = torch.randn(2, 5, 16) * 2
    theta[0, 0] = 0.1 * torch.randn(16)  # a nearly synchronised row too
    expected = z64(theta).abs()
    torch.testing.assert_close(osc.order_parameter(theta).double(), expected, atol=1e-6, rtol=0)
    r = osc.order_parameter(torch.randn(1000, 8) * 5)
    assert (r >= 0).all() and (r <= 1).all()


def test_harmonics_of_evenly_spread_phases_vanish_unless_n_is_a_multiple_of_N():
    n_osc, n_harm = 5, 12
    theta = (0.4 + torch.arange(n_osc, dtype=torch.float64) * 2 * math.pi / n_osc).float()
    re, im = osc.harmonics(theta, n_harm)
    assert re.shape == im.shape == (n_harm,)
    modulus = torch.sqrt(re.double() ** 2 + im.double() ** 2)
    for n in range(1, n_harm + 1):
        if n % n_osc == 0:
            assert modulus[n - 1] == pytest.approx(1.0, abs=1e-5), n
        else:
            assert modulus[n - 1] < 1e-5, n


def test_harmonics_match_float64_reference():
    theta = torch.randn(2, 3, 7) * 3
    re, im = osc.harmonics(theta, 4)
    assert re.shape == (2, 3, 4)
    for n in range(1, 5):
        z = z64(theta, n)
        torch.testing.assert_close(re[..., n - 1].double(), z.real, atol=1e-5, rtol=0)
        torch.testing.assert_close(im[..., n - 1].double(), z.imag, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- velocity and integration


@pytest.mark.parametrize("k_kind", ["float", "per_sample_position", "per_position", "per_element_omega"])
def test_mean_field_velocity_equals_pairwise_sum(k_kind):
    b, t, n = 3, 4, 9
    theta = torch.randn(b, t, n) * 3
    omega = torch.randn(n)
    if k_kind == "float":
        k = 1.7
    elif k_kind == "per_sample_position":
        k = torch.rand(b, t) * 4
    elif k_kind == "per_position":
        k = torch.rand(t) * 4
    else:
        k = torch.rand(b, t) * 4
        omega = torch.randn(b, t, n)
    got = osc.velocity(theta, omega, k)
    assert got.shape == (b, t, n)
    expected = pairwise_velocity64(theta, omega, k)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_per_position_coupling_is_applied_per_position():
    """A K of 0 at one position leaves only ω there; other positions feel their own K."""
    theta = torch.randn(2, 3, 6)
    omega = torch.randn(6)
    k = torch.tensor([[0.0, 1.0, 5.0], [5.0, 0.0, 1.0]])
    got = osc.velocity(theta, omega, k)
    torch.testing.assert_close(got[0, 0], omega)
    torch.testing.assert_close(got[1, 1], omega)
    assert not torch.allclose(got[0, 2], omega)


@pytest.mark.parametrize("with_drive", [False, True])
def test_integrate_equals_hand_written_float64_euler(with_drive):
    b, t, n = 2, 3, 8
    theta = torch.randn(b, t, n) * 2
    omega = torch.randn(n)
    k = torch.rand(b, t) * 3
    drive = torch.randn(b, t, n) if with_drive else None
    got = osc.integrate(theta, omega, k, dt=0.05, steps=25, drive=drive)
    assert got.dtype == torch.float32 and got.shape == (b, t, n)
    expected = euler64(theta, omega, k, 0.05, 25, drive)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)


def test_integrate_with_zero_steps_is_identity_and_does_not_wrap():
    theta = torch.randn(2, 5) * 10
    torch.testing.assert_close(osc.integrate(theta, torch.randn(5), 2.0, 0.1, 0), theta)
    # Phases are not wrapped inside the dynamics: pure rotation keeps growing past π.
    out = osc.integrate(torch.zeros(1, 2), torch.tensor([3.0, 3.0]), 0.0, dt=0.1, steps=50)
    torch.testing.assert_close(out, torch.full((1, 2), 15.0), atol=1e-4, rtol=0)


def _phase_difference_trajectory(delta_omega: float, couplings: list[float], dt=0.01, chunks=100, per_chunk=100):
    k = torch.tensor(couplings)
    omega = torch.tensor([-delta_omega / 2, delta_omega / 2]).expand(len(couplings), 2)
    theta = torch.zeros(len(couplings), 2)
    diffs = [torch.zeros(len(couplings), dtype=torch.float64)]
    for _ in range(chunks):
        theta = osc.integrate(theta, omega, k, dt, per_chunk)
        diffs.append((theta[:, 1] - theta[:, 0]).double())
    return torch.stack(diffs, dim=1)  # (len(couplings), chunks + 1), φ = θ₂ − θ₁, unwrapped


@pytest.mark.parametrize("delta_omega", [1.0, -1.0, 2.5])
def test_two_oscillators_phase_lock_iff_coupling_reaches_frequency_difference(delta_omega):
    """dφ/dt = Δω − K sin φ: locked (bounded φ) iff K ≥ |Δω|, drifting otherwise."""
    d = abs(delta_omega)
    above, exact, below = 1.05 * d, d, 0.95 * d
    phi = _phase_difference_trajectory(delta_omega, [above, exact, below])  # t up to 100
    # Locked: φ stays within one half turn of its start and settles at arcsin(Δω/K).
    assert phi[0].abs().max() < math.pi
    assert phi[0, -1].item() == pytest.approx(math.asin(delta_omega / above), abs=1e-2)
    assert phi[1].abs().max() < math.pi
    # Slightly below: phase slips every 2π/√(Δω² − K²) ≈ 20/|Δω| time units; φ drifts by > 2π.
    assert phi[2, -1].abs() > 2 * math.pi
    assert math.copysign(1.0, phi[2, -1].item()) == math.copysign(1.0, delta_omega)


# ---------------------------------------------------------------- gradients at R = 0


def _exactly_incoherent_phases() -> torch.Tensor:
    """Four float32 phases whose mean cos and mean sin are both exactly 0 (Z = 0 exactly)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(10000):
        x = torch.rand((), generator=gen) * 1.5
        y = (math.pi - x.double()).float()
        theta = torch.stack([x, -x, y, -y])
        c, s = osc.mean_field(theta)
        if c.item() == 0.0 and s.item() == 0.0:
            return theta
    raise AssertionError("no exactly incoherent configuration found")


def test_gradients_are_finite_when_phases_are_evenly_spread():
    for theta in (_exactly_incoherent_phases(), osc.evenly_spread(16), osc.evenly_spread(2)):
        theta = theta.clone().requires_grad_(True)
        r = osc.order_parameter(theta)
        assert r.item() < 1e-5
        (grad,) = torch.autograd.grad(r, theta)
        assert torch.isfinite(grad).all(), grad

        theta2 = theta.detach().unsqueeze(0).clone().requires_grad_(True)
        omega = torch.zeros(theta2.shape[-1], requires_grad=True)
        out = osc.integrate(theta2, omega, torch.tensor([2.0]), dt=0.1, steps=4)
        re, im = osc.harmonics(out, 3)
        loss = osc.order_parameter(out).sum() + re.sum() + im.sum()
        g_theta, g_omega = torch.autograd.grad(loss, (theta2, omega))
        assert torch.isfinite(g_theta).all() and torch.isfinite(g_omega).all()


# ---------------------------------------------------------------- autocast


def test_outputs_are_float32_and_unchanged_under_bf16_autocast():
    theta = torch.randn(2, 3, 16) * 2
    omega = torch.randn(16)
    k = torch.rand(2, 3) * 3
    drive = torch.randn(2, 3, 16)
    plain = (
        osc.order_parameter(theta),
        *osc.harmonics(theta, 4),
        osc.velocity(theta, omega, k),
        osc.integrate(theta, omega, k, 0.1, 10, drive=drive),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (
            osc.order_parameter(theta),
            *osc.harmonics(theta, 4),
            osc.velocity(theta, omega, k),
            osc.integrate(theta, omega, k, 0.1, 10, drive=drive),
        )
        # bf16 inputs (as a bf16 backbone would hand over) still compute in float32.
        theta_bf = theta.bfloat16()
        r_bf = osc.order_parameter(theta_bf)
        re_bf, im_bf = osc.harmonics(theta_bf, 4)
        int_bf = osc.integrate(theta_bf, omega.bfloat16(), k, 0.1, 10, drive=drive.bfloat16())
    for a, p in zip(auto, plain):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, p, atol=1e-6, rtol=1e-6)
    for out in (r_bf, re_bf, im_bf, int_bf):
        assert out.dtype == torch.float32
    theta_q = theta.bfloat16().float()
    torch.testing.assert_close(r_bf, osc.order_parameter(theta_q), atol=1e-6, rtol=0)
    torch.testing.assert_close(re_bf, osc.harmonics(theta_q, 4)[0], atol=1e-6, rtol=0)
    expected = osc.integrate(theta_q, omega.bfloat16().float(), k, 0.1, 10, drive=drive.bfloat16().float())
    torch.testing.assert_close(int_bf, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- wrap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_maps_to_half_open_interval_minus_pi_pi(dtype):
    pi = torch.tensor(math.pi, dtype=dtype)
    special = torch.stack([-pi, pi, 3 * pi, -3 * pi, 2 * pi, -2 * pi, torch.zeros((), dtype=dtype), 5 * pi, -5 * pi])
    theta = torch.cat([special, (torch.rand(2000, dtype=torch.float64) - 0.5).to(dtype) * 200])
    out = osc.wrap(theta)
    assert out.dtype == dtype and out.shape == theta.shape
    assert (out > -pi).all(), out[out <= -pi]
    assert (out <= pi).all(), out[out > pi]
    # Same angle: wrapped − original is a multiple of 2π (checked in float64).
    turns = (out.double() - theta.double()) / (2 * math.pi)
    torch.testing.assert_close(turns, turns.round(), atol=1e-4, rtol=0)
    # −π maps to +π (the interval is open at −π).
    assert out[0] == pi and out[1] == pi
    # Already-wrapped values are left as they are.
    inside = (torch.rand(100, dtype=dtype) * 2 - 1) * 3.0
    torch.testing.assert_close(osc.wrap(inside), inside, atol=1e-6, rtol=0)
