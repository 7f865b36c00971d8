"""Kuramoto dynamics: order parameter, harmonics, the mean-field step, and integration.

Phases ``theta`` have shape ``(..., N)``: any leading batch dimensions (batch, position, ...)
and ``N`` oscillators last. Everything here is differentiable and runs in float32 even under
bf16 autocast, because phase differences of a few thousandths of a radian matter for R.

The model is

    dθ_i/dt = ω_i + (K/N) Σ_j sin(θ_j − θ_i) = ω_i + K·R·sin(ψ − θ_i),

where Z = R·e^{iψ} = (1/N) Σ_j e^{iθ_j}. The second form costs O(N) instead of O(N²).
Phases are never wrapped inside the dynamics (wrapping is for display only: `wrap`).
"""

from __future__ import annotations

import contextlib
import math

import torch

from .ops.harmonics import harmonics as _harmonics_op

# Keeps d|Z|/dZ finite when the oscillators are perfectly spread (Z = 0). Biases R by at most
# sqrt(1e-12) = 1e-6, far below anything we report.
_R_EPS = 1e-12


def _float32(x: torch.Tensor | float) -> torch.Tensor | float:
    return x.float() if isinstance(x, torch.Tensor) else x


def full_precision(device_type: str):
    """Context that switches autocast off so oscillator math stays in float32."""
    if device_type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def mean_field(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (C, S) = (mean cos θ, mean sin θ) over the oscillator dimension: Z = C + iS."""
    return torch.cos(theta).mean(-1), torch.sin(theta).mean(-1)


def order_parameter(theta: torch.Tensor) -> torch.Tensor:
    """R = |mean_j e^{iθ_j}| ∈ [0, 1], shape ``theta.shape[:-1]``."""
    with full_precision(theta.device.type):
        c, s = mean_field(theta.float())
        return torch.sqrt(c * c + s * s + _R_EPS).clamp(max=1.0)


def harmonics(theta: torch.Tensor, n_harmonics: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Z_n = mean_j e^{i n θ_j} for n = 1..H, returned as (Re, Im), each ``(..., H)``.

    On CUDA this runs the fused kernel of :mod:`phaselm.ops.harmonics` (no (…, N, H) tensor).
    """
    with full_precision(theta.device.type):
        return _harmonics_op(theta.float(), n_harmonics)


def velocity(theta: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor | float) -> torch.Tensor:
    """dθ/dt under the mean-field form, O(N).

    K·R·sin(ψ − θ_i) = K·(S·cos θ_i − C·sin θ_i). ``coupling`` is a float or a tensor that
    broadcasts against ``theta.shape[:-1]`` (one K per sample or per position).
    """
    c, s = mean_field(theta)
    if isinstance(coupling, torch.Tensor):
        coupling = coupling.unsqueeze(-1)
    return omega + coupling * (s.unsqueeze(-1) * torch.cos(theta) - c.unsqueeze(-1) * torch.sin(theta))


def integrate(
    theta: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor | float,
    dt: float,
    steps: int,
    drive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler-integrate ``steps`` updates of size ``dt``; ``drive`` adds a constant input term.

    Works on any leading shape, so a whole (batch, position) grid integrates in parallel.
    """
    with full_precision(theta.device.type):
        theta = theta.float()
        omega = omega.float()
        coupling = _float32(coupling)
        drift = omega if drive is None else omega + drive.float()
        for _ in range(steps):
            theta = theta + dt * velocity(theta, drift, coupling)
        return theta


def wrap(theta: torch.Tensor) -> torch.Tensor:
    """Map phases to (−π, π] for reporting."""
    wrapped = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    return torch.where(wrapped == -math.pi, torch.full_like(wrapped, math.pi), wrapped)


def evenly_spread(n: int) -> torch.Tensor:
    """N phases evenly spread over [−π, π): R = 0 exactly (in exact arithmetic)."""
    return torch.arange(n, dtype=torch.float32) * (2 * math.pi / n) - math.pi
