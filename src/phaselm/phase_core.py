"""The Phase Core of Phase-Mamba: hidden state → oscillator phases → Kuramoto dynamics → R → modulation.

Unlike the original code, every position gets its own phases from its own hidden state (no
averaging over batch or sequence, so position t never sees tokens after t and samples never
mix), the forward pass keeps no hidden mutable state, and modulation is the same in training
and inference.

Two dynamics modes:
- ``token``: each position starts from phases projected from its hidden state and integrates
  ``steps`` Euler updates. Fully parallel, stateless, trivially cache-friendly.
- ``recurrent``: the phases at position t start from the phases of position t−1 plus the kick
  projected from the hidden state at t. Sequential; the carried phases are the state that a
  generation cache holds. With no previous state it equals ``token`` at the first position.

Driven oscillators (issue 15's options, as K-SSM's bank has them in phaselm.bistable): the core
had most of them from the start. Per-oscillator input: the kick is W·LayerNorm(h), one value per
oscillator (``to_phase``). Natural frequencies not evenly spread: ω ~ N(0, ``omega_std``²).
Several coupling steps per position: ``steps`` Euler steps of size ``dt``. Phases carried
across positions: ``mode = "recurrent"``. A readout that sees R, the phases or both:
``modulation`` "order" h' = h·(1 + α·R), "phase" h' = h·(1 + gain·tanh(W[sin θ, cos θ])), and
"order+phase" h' = h·(1 + α·R + gain·tanh(W[sin θ, cos θ])) (the one added for issue 15; α and
W start at 0, so it too starts as the identity).

Both modes run through :mod:`phaselm.ops.kuramoto`: on CUDA one fused Triton kernel integrates
every position (token mode) or walks the whole sequence with the phases in registers (recurrent
mode); elsewhere the PyTorch loops of :mod:`phaselm.oscillators`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from . import oscillators
from .errors import PhaseLMError
from .ops.kuramoto import kuramoto_integrate, kuramoto_recurrent

MODES = ("token", "recurrent")
MODULATIONS = ("order", "phase", "order+phase")


@dataclass
class PhaseCoreConfig:
    """Phase Core settings. Defaults follow the seeds (N = 16, K = 2.0)."""

    hidden_size: int = 0  # filled from the backbone when grafting
    n_oscillators: int = 16
    coupling: float = 2.0
    dt: float = 0.1
    steps: int = 8
    mode: Literal["token", "recurrent"] = "token"
    # "order": h' = h·(1 + α·R) (the paper); "phase": h' = h·(1 + gain·tanh(W[sin θ, cos θ]))
    # (the original code).
    # "order+phase": both terms, h' = h·(1 + α·R + gain·tanh(W[sin θ, cos θ])).
    modulation: Literal["order", "phase", "order+phase"] = "order"
    # Both modulations start as the identity (α = 0, W = 0) so a fresh graft leaves the
    # backbone's outputs unchanged; gradients still reach α and W from the first step.
    alpha_init: float = 0.0
    phase_gain: float = 0.1
    omega_std: float = 1.0  # natural frequencies ω ~ N(0, omega_std²); K_c ≈ 1.6·omega_std
    learn_coupling: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PhaseLMError(f"core.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.modulation not in MODULATIONS:
            raise PhaseLMError(
                f"core.modulation must be one of {', '.join(MODULATIONS)}, got {self.modulation!r}"
            )
        if self.n_oscillators < 2:
            raise PhaseLMError(f"core.n_oscillators must be at least 2, got {self.n_oscillators}")
        if self.steps < 0 or self.dt <= 0:
            raise PhaseLMError(f"core.steps must be ≥ 0 and core.dt > 0, got steps={self.steps}, dt={self.dt}")
        if self.coupling < 0:
            raise PhaseLMError(f"core.coupling must be ≥ 0, got {self.coupling}")


@dataclass
class PhaseCoreOutput:
    """What :class:`PhaseCore` returns for hidden states (B, T, D): modulated hidden, R, phases, carried state."""

    hidden: torch.Tensor  # (B, T, D) modulated hidden state, same dtype as the input
    order: torch.Tensor  # (B, T) order parameter R per position, float32
    phases: torch.Tensor  # (B, T, N) final phases per position, float32, unwrapped
    state: torch.Tensor | None  # (B, N) phases to carry to the next position (recurrent mode)


class PhaseCore(nn.Module):
    """Hidden (B, T, D) → phases (B, T, N) → Kuramoto dynamics → R (B, T) → hidden modulated by R or the phases."""

    def __init__(self, config: PhaseCoreConfig):
        super().__init__()
        if config.hidden_size <= 0:
            raise PhaseLMError("PhaseCoreConfig.hidden_size must be set (the backbone's hidden size)")
        self.config = config
        d, n = config.hidden_size, config.n_oscillators
        # Hidden-state scale grows with depth in most LMs; normalising first keeps the phase
        # kick in a sensible range whatever layer the core sits at.
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.to_phase = nn.Linear(d, n)
        self.omega = nn.Parameter(torch.randn(n) * config.omega_std)
        log_k = torch.tensor(math.log(max(config.coupling, 1e-8)))
        if config.learn_coupling:
            self.log_coupling = nn.Parameter(log_k)
        else:
            self.register_buffer("log_coupling", log_k)
        # Set by the drift controller between training steps, never by forward().
        self.register_buffer("coupling_scale", torch.tensor(1.0))
        if config.modulation in ("order", "order+phase"):
            self.alpha = nn.Parameter(torch.tensor(float(config.alpha_init)))
        if config.modulation in ("phase", "order+phase"):
            self.from_phase = nn.Linear(2 * n, d)
            nn.init.zeros_(self.from_phase.weight)
            nn.init.zeros_(self.from_phase.bias)
        # The same two transform slots as K-SSM's bank, set by interventions
        # (phaselm.interventions.intervene), never by forward(): functions K → K applied in order
        # to the coupling before the dynamics, and θ (B, T, N) → θ applied in order after the
        # dynamics, before R and the modulation. The carried state (recurrent mode) continues
        # from the free dynamics. Empty (the default): the computation is unchanged.
        self.coupling_transforms: list = []
        self.phase_transforms: list = []

    @property
    def coupling(self) -> torch.Tensor:
        """Effective K = base coupling × drift-controller scale."""
        return torch.exp(self.log_coupling) * self.coupling_scale

    def dynamics(self, hidden: torch.Tensor, state: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """Phases per position (B, T, N) and the state to carry (recurrent mode) or None.

        ``mask`` (B, T), 1 for real tokens and 0 for padding: in recurrent mode a padded
        position leaves the carried phases untouched, so a left-padded sample evolves exactly
        as it would alone. Token mode needs no mask (positions are independent).
        """
        cfg = self.config
        with oscillators.full_precision(hidden.device.type):
            kick = self.to_phase(self.norm(hidden.float()))
            k = self.coupling.float()
            for transform in self.coupling_transforms:
                k = transform(k)
            if cfg.mode == "token":
                return kuramoto_integrate(kick, self.omega, k, cfg.dt, cfg.steps), None
            return kuramoto_recurrent(kick, self.omega, k, cfg.dt, cfg.steps, mask, state)

    def modulate(self, hidden: torch.Tensor, order: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, D) scaled by 1 + α·R (order (B, T)), by a learned gain of the phases
        (B, T, N), or by both terms ("order+phase").

        Computed in float32, returned in hidden's dtype.
        """
        modulation = self.config.modulation
        gain = 1.0
        if modulation in ("order", "order+phase"):
            gain = gain + self.alpha * order.unsqueeze(-1)
        if modulation in ("phase", "order+phase"):
            features = torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1)
            gain = gain + self.config.phase_gain * torch.tanh(self.from_phase(features))
        return (hidden.float() * gain).to(hidden.dtype)

    def forward(
        self, hidden: torch.Tensor, state: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> PhaseCoreOutput:
        """hidden (B, T, D), state None or (B, N), mask None or (B, T) → PhaseCoreOutput (hidden, R, phases, state)."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.hidden_size:
            raise PhaseLMError(
                f"Phase Core expects hidden states (batch, seq, {self.config.hidden_size}), "
                f"got {tuple(hidden.shape)}"
            )
        if mask is not None and mask.shape != hidden.shape[:2]:
            raise PhaseLMError(f"mask must be (batch, seq) = {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
        phases, new_state = self.dynamics(hidden, state, mask)
        for transform in self.phase_transforms:
            phases = transform(phases)
        order = oscillators.order_parameter(phases)
        return PhaseCoreOutput(self.modulate(hidden, order, phases), order, phases, new_state)
