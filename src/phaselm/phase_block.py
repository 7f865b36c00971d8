"""The PhaseBlock: the seeds' second Phase-Mamba design (the MLX runs), a phase per channel of a
Mamba mixer's inner width, acting on the selective scan's output y before the gate.

For the scan output y (B, T, d) of one mixer (d = d_inner; 5,120 on Mamba-2.8B), per position:

    θ⁰ = π·tanh(Enc·y)                                   one phase per channel
    θ ← θ + dt·k_t·c(θ) (+ σ_t·ε)     for `steps` Euler steps (2, dt 0.08)
    c_i(θ) = Σ_j (U Vᵀ)_ij sin(θ_j − θ_i) = Im(e^{−iθ_i} · (U (Vᵀ e^{iθ}))_i)
    R = |mean_j e^{iθ_j}|
    y' = LayerNorm(y ⊙ cos θ ⊙ σ(G·y) + 0.01·tanh(H·y))

then the mixer goes on as before: out_proj(y' ⊙ act(gate)). The coupling K = k·U Vᵀ has rank r
(32) and is never formed: c(θ) costs O(d·r) per position through the low rank.

Choices where the seeds are silent (docs/seeds-vs-phaselm.md, "PhaseBlock (issue 15)"):
- Enc, G and H are full ``nn.Linear(d, d)`` maps with bias and PyTorch's default init: that is
  what makes the seeds' "79M trainable parameters" at d = 5,120 (3·(d² + d) + 2·d·r + 2·d =
  78,996,480); low-rank maps would not reach it.
- U and V (d × r) start as N(0, (d·r)^(−1/2)) so that c(θ) is O(1) at any width; no natural
  frequencies (the design has none); k is not trained — it is the drift controller's scale,
  starting at ``coupling``.
- The LayerNorm is affine (its 2·d parameters count above). A fresh block is not the identity
  (unlike the Phase Core): σ(G·y) ≈ ½ and the LayerNorm rescale y from the first step, as in the seed.
- Drift controller, per position on the CURRENT forward: the free dynamics (scale k, no noise) give
  R_t; then for R_t > 0.55 (BRAKE) position t is integrated again from θ⁰ with k_t = clip(0.95·k)
  and phase noise σ_t = min(2·0.05·(R_t − 0.55), 0.2) added at every Euler step; for R_t < 0.30
  (ESCAPE) with k_t = clip(1.1·k) and no noise; otherwise (COAST) the free dynamics stand. clip =
  [0.1, 5]. Deciding per position keeps the block causal (a batch mean would let later tokens
  steer earlier ones). The stored scale k then moves once by the action of the batch's mean free
  R (clipped likewise), for the next forward. By default the controller acts in training
  forwards only (``drift_control = "train"``: training mode with gradients on): evaluation and
  generation are deterministic and change nothing.

The block has the Phase Core's two intervention slots (``coupling_transforms``: k → k after the
controller; ``phase_transforms``: θ → θ after the dynamics, before R and the modulation) and
returns a :class:`~phaselm.phase_core.PhaseCoreOutput`, so a graft records R and interventions
act on it as on a core. It is plain PyTorch (matmuls at O(d·r)); there is no fused kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from . import oscillators
from .errors import PhaseLMError
from .phase_core import PhaseCoreOutput

DRIFT_CONTROL = ("train", "always", "off")
# The block's controller's actions, in the order of :func:`drift_decision`'s action codes.
BLOCK_ACTIONS = ("BRAKE", "COAST", "ESCAPE")


@dataclass
class PhaseBlockConfig:
    """PhaseBlock settings; defaults follow the seeds' MLX design (rank 32, 2 steps, dt 0.08, band [0.30, 0.55])."""

    d_inner: int = 0  # the mixer's inner width, filled from the backbone when grafting
    rank: int = 32
    coupling: float = 1.0  # k at the start: the drift controller's scale on K = k·U Vᵀ
    dt: float = 0.08
    steps: int = 2
    residual_gain: float = 0.01  # the 0.01 of 0.01·tanh(H·y)
    drift_control: Literal["train", "always", "off"] = "train"
    band_low: float = 0.30  # ESCAPE below
    band_high: float = 0.55  # BRAKE above
    brake_noise: float = 0.05  # σ = min(2·brake_noise·(R − band_high), max_noise)
    max_noise: float = 0.2
    brake_factor: float = 0.95
    escape_factor: float = 1.1
    min_scale: float = 0.1
    max_scale: float = 5.0

    def __post_init__(self) -> None:
        if self.drift_control not in DRIFT_CONTROL:
            raise PhaseLMError(
                f"core.drift_control must be one of {', '.join(DRIFT_CONTROL)}, got {self.drift_control!r}"
            )
        if self.rank < 1 or self.steps < 0 or self.dt <= 0:
            raise PhaseLMError(
                f"core.rank must be ≥ 1, core.steps ≥ 0 and core.dt > 0, got rank={self.rank}, "
                f"steps={self.steps}, dt={self.dt}"
            )
        if not 0.0 <= self.band_low < self.band_high <= 1.0:
            raise PhaseLMError(
                f"the drift band needs 0 ≤ core.band_low < core.band_high ≤ 1, got [{self.band_low}, {self.band_high}]"
            )
        if not 0 < self.min_scale <= self.coupling <= self.max_scale:
            raise PhaseLMError(
                "core.coupling must lie in [core.min_scale, core.max_scale] with min_scale > 0, got "
                f"{self.coupling} in [{self.min_scale}, {self.max_scale}]"
            )
        if self.brake_factor <= 0 or self.escape_factor <= 0 or self.brake_noise < 0 or self.max_noise < 0:
            raise PhaseLMError("core.brake_factor and core.escape_factor must be > 0, the noise settings ≥ 0")


def trainable_parameter_count(d_inner: int, rank: int) -> int:
    """Trainable parameters at width ``d_inner``: Enc, G, H (d² + d each), U, V (d·r each), LayerNorm (2·d)."""
    return 3 * (d_inner * d_inner + d_inner) + 2 * d_inner * rank + 2 * d_inner


def low_rank_coupling(theta: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """c_i = Σ_j (U Vᵀ)_ij sin(θ_j − θ_i) for phases θ (…, d), U and V (d, r), in O(d·r): (…, d).

    With z = e^{iθ}: Σ_j K_ij e^{iθ_j} = U (Vᵀ z) =: m, and c_i = Im(e^{−iθ_i} m_i) = cos θ_i·Im m_i − sin θ_i·Re m_i.
    """
    cos, sin = torch.cos(theta), torch.sin(theta)
    m_re = (cos @ V) @ U.T
    m_im = (sin @ V) @ U.T
    return cos * m_im - sin * m_re


def dense_coupling_reference(theta: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The same coupling from an explicit K (d, d), O(d²): Σ_j K_ij sin(θ_j − θ_i) for θ (…, d)."""
    return (K * torch.sin(theta.unsqueeze(-2) - theta.unsqueeze(-1))).sum(-1)


def drift_decision(order: torch.Tensor, scale: torch.Tensor | float, config: PhaseBlockConfig):
    """The controller's decision for R ``order`` (any shape) at stored scale k.

    Returns (k per element, clipped to [min_scale, max_scale]; noise σ per element (0 outside
    BRAKE); action codes into :data:`BLOCK_ACTIONS`), all ``order``'s shape.
    """
    order = order.float()
    brake = order > config.band_high
    escape = order < config.band_low
    factor = torch.where(
        brake,
        torch.full_like(order, config.brake_factor),
        torch.where(escape, torch.full_like(order, config.escape_factor), torch.ones_like(order)),
    )
    token_scale = (scale * factor).clamp(config.min_scale, config.max_scale)
    sigma = (2.0 * config.brake_noise * (order - config.band_high)).clamp(max=config.max_noise)
    noise = torch.where(brake, sigma, torch.zeros_like(order))
    actions = torch.where(brake, 0, torch.where(escape, 2, 1))
    return token_scale, noise, actions


class PhaseBlock(nn.Module):
    """Scan output y (B, T, d_inner) → phases (B, T, d_inner) → Kuramoto (low-rank K) → R (B, T) → y'."""

    def __init__(self, config: PhaseBlockConfig):
        super().__init__()
        if config.d_inner <= 0:
            raise PhaseLMError("PhaseBlockConfig.d_inner must be set (the mixer's inner width)")
        self.config = config
        d, r = config.d_inner, config.rank
        self.encoder = nn.Linear(d, d)  # Enc
        self.gate = nn.Linear(d, d)  # G
        self.residual = nn.Linear(d, d)  # H
        std = (d * r) ** -0.25
        self.U = nn.Parameter(torch.randn(d, r) * std)
        self.V = nn.Parameter(torch.randn(d, r) * std)
        self.norm = nn.LayerNorm(d)
        # k: moved by the drift controller (training forwards), never by the optimizer.
        self.register_buffer("coupling_scale", torch.tensor(float(config.coupling)))
        self.coupling_transforms: list = []
        self.phase_transforms: list = []
        self.last_action: str | None = None  # the batch action of the last controlled forward

    @property
    def controls_drift(self) -> bool:
        """Whether this forward's R decides this forward's coupling and noise."""
        mode = self.config.drift_control
        # A training forward is one in training mode with gradients on: the block is not a submodule
        # of the model it is grafted into, so model.eval() does not reach it, but generation and
        # evaluation run without gradients.
        return mode == "always" or (mode == "train" and self.training and torch.is_grad_enabled())

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """θ⁰ = π·tanh(Enc·y): (B, T, d) float32."""
        return math.pi * torch.tanh(self.encoder(y))

    def phase_noise(self, theta: torch.Tensor) -> torch.Tensor:
        """ε ~ N(0, 1) of θ's shape (one draw per Euler step; a method so tests can fix it)."""
        return torch.randn_like(theta)

    def integrate(self, theta0: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` Euler steps from θ⁰ (B, T, d); k ``scale`` scalar or (B, T, 1); noise σ (B, T, 1) or None."""
        theta = theta0
        U, V = self.U.to(theta0.dtype), self.V.to(theta0.dtype)
        for _ in range(self.config.steps):
            theta = theta + self.config.dt * scale * low_rank_coupling(theta, U, V)
            if noise is not None:
                theta = theta + noise * self.phase_noise(theta)
        return theta

    def dynamics(self, y: torch.Tensor) -> torch.Tensor:
        """Final phases (B, T, d) of scan output y (B, T, d) in float32, the controller acting where on."""
        theta0 = self.encode(y)
        scale = self.coupling_scale.float()
        if not self.controls_drift:
            for transform in self.coupling_transforms:
                scale = transform(scale)
            return self.integrate(theta0, scale)
        with torch.no_grad():
            free_order = oscillators.order_parameter(self.integrate(theta0, scale))  # (B, T)
            token_scale, noise, actions = drift_decision(free_order, scale, self.config)
            _, _, batch_action = drift_decision(free_order.mean(), scale, self.config)
            new_scale, _, _ = drift_decision(free_order.mean(), self.coupling_scale, self.config)
            self.coupling_scale.copy_(new_scale)
            self.last_action = BLOCK_ACTIONS[int(batch_action)]
        token_scale = token_scale.unsqueeze(-1)
        for transform in self.coupling_transforms:
            token_scale = transform(token_scale)
        braking = bool((actions == 0).any())
        return self.integrate(theta0, token_scale, noise.unsqueeze(-1) if braking else None)

    def forward(self, y: torch.Tensor) -> PhaseCoreOutput:
        """y (B, T, d_inner) → PhaseCoreOutput(y' (B, T, d_inner) in y's dtype, R (B, T), θ (B, T, d_inner), None)."""
        if y.dim() != 3 or y.shape[-1] != self.config.d_inner:
            raise PhaseLMError(
                f"PhaseBlock expects scan outputs (batch, seq, {self.config.d_inner}), got {tuple(y.shape)}"
            )
        with oscillators.full_precision(y.device.type):
            y32 = y.float()
            phases = self.dynamics(y32)
            for transform in self.phase_transforms:
                phases = transform(phases)
            order = oscillators.order_parameter(phases)
            mixed = y32 * torch.cos(phases) * torch.sigmoid(self.gate(y32))
            mixed = mixed + self.config.residual_gain * torch.tanh(self.residual(y32))
            out = self.norm(mixed)
        return PhaseCoreOutput(out.to(y.dtype), order, phases, None)
