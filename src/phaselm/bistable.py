"""The bistable Kuramoto bank of K-SSM (seed 003; docs/seeds-vs-phaselm.md lists where we depart from it),
per position and guarded.

Per position, a 10-parameter projection p = (a, b, c, d, e, f, g, h, i, j) of the hidden state
gives

    Δ = b·g − c·f,      u = (d·g − c·h) / (a·g − c·e),      u ∈ [u_min, u_max] (bistable)
    K = 2·sigmoid(u)

Oscillator phases start at θ_i = ω₀_i + mean_c(hidden) (ω₀ learned, initialised evenly over
[−π, π]), take ``steps`` coupling steps θ ← θ + K·R·sin(ψ − θ) − δ·ε, and are read out through
the harmonics Z_n, n = 1..H, as [Re Z_n, Im Z_n, |Z_n|] → Linear → hidden. R = |Z_1|.

Differences from the original, on purpose: the regulariser is computed per position (not on
batch means); the denominator is kept at least ``den_eps`` away from zero with its sign (the
original added 1e-6, which still divides by ~0); the monostable u-term uses max(u, 0) so
−log never sees a negative number; the noise δ·ε is drawn only in training unless
``noise_in_eval`` (the original drew it at inference too, making greedy decoding random).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import oscillators
from .errors import PhaseLMError
from .interventions.sites import Intervenable, Site, SiteMap
from .ops.backend import resolve
from .ops.bistable_bank import BANK, bistable_bank_triton


@dataclass
class BankConfig:
    """The bank layer's own settings. K-SSM's ``KSSMConfig`` takes its bank defaults from here and
    builds this from its own fields (``KSSMConfig.bank_config``), so each default is written once."""

    n_oscillators: int = 192
    n_harmonics: int = 32
    bistable: bool = True  # False: the monostable ablation (u not clamped)
    u_min: float = 0.1
    u_max: float = 10.0
    steps: int = 1
    spread_init: float = 0.1  # δ, the phase-noise scale ("Lorentzian spread" in the seed)
    noise_in_eval: bool = False
    den_eps: float = 1e-6
    reg_delta: float = 0.1  # λ₁
    reg_u: float = 0.5  # λ₂
    reg_eps: float = 1e-5
    # False: the regulariser's gradient trains only the bank's own map (to_params), not the
    # hidden state feeding it. Through the hidden state it stalled learning: at the seed's size
    # the 6 banks' push on |Δ| and u held char-level validation loss at ~3.3 nats (unigram level)
    # for the first ~1,000 steps on H100 (docs/results.md); with it cut, learning starts at once.
    reg_through_hidden: bool = False

    def __post_init__(self) -> None:
        if self.n_oscillators < 2 or self.n_harmonics < 1:
            raise PhaseLMError("bank needs at least 2 oscillators and 1 harmonic")
        if self.bistable and not 0 < self.u_min < self.u_max:
            raise PhaseLMError(
                f"bistable clamp bounds need 0 < u_min < u_max, got u_min={self.u_min}, u_max={self.u_max}; "
                "fix u_min/u_max"
            )


@dataclass
class BankOutput:
    """What :class:`BistableBank` returns for hidden states (B, T, D): its output and per-position readings."""

    out: torch.Tensor  # (B, T, D) the bank's contribution to the residual stream
    order: torch.Tensor  # (B, T) R = |Z_1|
    u: torch.Tensor  # (B, T) after the clamp
    delta: torch.Tensor  # (B, T) Δ
    reg: torch.Tensor  # (B, T) λ₁/(|Δ|+ε) + λ₂·(−log(u+ε)) per position


def bistable_map(p: torch.Tensor, cfg: BankConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """p (..., 10) → (Δ, u) per position, with the guarded denominator and the clamp."""
    a, b, c, d, e, f, g, h = p[..., :8].unbind(-1)
    delta = b * g - c * f
    den = a * g - c * e
    sign = torch.where(den >= 0, 1.0, -1.0).to(den.dtype)
    den = torch.where(den.abs() < cfg.den_eps, sign * cfg.den_eps, den)
    u = (d * g - c * h) / den
    if cfg.bistable:
        u = u.clamp(cfg.u_min, cfg.u_max)
    return delta, u


def regulariser(delta: torch.Tensor, u: torch.Tensor, cfg: BankConfig) -> torch.Tensor:
    """Per position: λ₁/(|Δ| + ε) + λ₂·(−log(max(u, 0) + ε)); finite for every input."""
    return cfg.reg_delta / (delta.abs() + cfg.reg_eps) - cfg.reg_u * torch.log(u.clamp_min(0) + cfg.reg_eps)


class BistableBank(nn.Module, Intervenable):
    """K-SSM's bistable Kuramoto bank: hidden (B, T, D) → a residual contribution, R, u, Δ and the regulariser."""

    # Which implementation of forward's per-position work runs (phaselm.ops.backend): "auto"
    # ("reference": it measured faster in a compiled step), "triton" (the fused kernel) or
    # "reference" (the PyTorch code below).
    backend: str = "auto"

    def __init__(self, hidden_size: int, cfg: BankConfig):
        super().__init__()
        self.cfg = cfg
        self.to_params = nn.Linear(hidden_size, 10)
        # Start at a regular point: a = b = d = g = 1, the rest 0, so Δ = 1 and u = 1 (the
        # middle of [0.1, 10] in log scale). With all ten near 0 (a default init) Δ ≈ 0, the
        # 1/|Δ| regulariser's gradient is ~10⁵ and, after clipping, drowns the CE gradient.
        with torch.no_grad():
            nn.init.normal_(self.to_params.weight, std=0.02)
            self.to_params.bias.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
        self.to_params._phaselm_initialised = True  # keep this init when a model re-initialises
        n = cfg.n_oscillators
        self.omega0 = nn.Parameter(torch.linspace(-math.pi, math.pi, n + 1)[:-1].clone())
        self.spread = nn.Parameter(torch.tensor(cfg.spread_init))
        self.readout = nn.Linear(3 * cfg.n_harmonics, hidden_size)
        # Set by interventions (phaselm.interventions.intervene), never by forward(): functions
        # θ (…, N) → θ applied in order after the coupling steps, before the harmonic readout.
        # Empty (the default) leaves the computation exactly as without interventions.
        self.phase_transforms: list = []
        # Likewise: functions K (…) → K applied in order to the coupling 2·sigmoid(u) before the
        # coupling steps (an evaluation-time scale of K). Empty: the computation is unchanged.
        self.coupling_transforms: list = []

    def forward(self, hidden: torch.Tensor) -> BankOutput:
        """hidden (B, T, D) → BankOutput (out (B, T, D); order, u, Δ, reg (B, T))."""
        cfg = self.cfg
        choice = resolve(BANK, self.backend, hidden.device)
        if choice == "triton" and (self.phase_transforms or self.coupling_transforms or cfg.steps != 1):
            # The kernel fuses one coupling step and has no place for an intervention's
            # transforms: those runs take the reference (and the switch records it).
            choice = resolve(BANK, "reference", hidden.device)
        with oscillators.full_precision(hidden.device.type):
            h = hidden.float()
            if choice == "triton":
                return self._fused_forward(hidden, h)
            delta, u = bistable_map(self.to_params(h), cfg)
            reg = self._regulariser(h, delta, u)
            coupling = 2.0 * torch.sigmoid(u)
            for transform in self.coupling_transforms:
                coupling = transform(coupling)
            theta = self.omega0 + h.mean(-1, keepdim=True)
            for _ in range(cfg.steps):
                theta = theta + oscillators.velocity(theta, torch.zeros_like(self.omega0), coupling)
                if self.training or cfg.noise_in_eval:
                    theta = theta - self.spread.abs() * torch.randn_like(theta)
            for transform in self.phase_transforms:
                theta = transform(theta)
            re, im = oscillators.harmonics(theta, cfg.n_harmonics)  # (B, T, H) each
            magnitude = torch.sqrt(re**2 + im**2 + 1e-12)
            features = torch.cat([re, im, magnitude], dim=-1)
            out = self.readout(features)
        return BankOutput(out.to(hidden.dtype), magnitude[..., 0], u, delta, reg)

    def _regulariser(self, h: torch.Tensor, delta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.reg_through_hidden:
            return regulariser(delta, u, cfg)
        # The same values; the gradient reaches to_params only.
        return regulariser(*bistable_map(self.to_params(h.detach()), cfg), cfg)

    def _fused_forward(self, hidden: torch.Tensor, h: torch.Tensor) -> BankOutput:
        """forward's computation through the fused kernel (phaselm.ops.bistable_bank); the noise
        is drawn here exactly as the reference draws it, so both see the same numbers."""
        cfg = self.cfg
        batch_shape = h.shape[:-1]
        params = self.to_params(h)
        noisy = self.training or cfg.noise_in_eval
        noise = torch.randn(*batch_shape, cfg.n_oscillators, device=h.device) if noisy else None
        delta, u, features = bistable_bank_triton(
            params.reshape(-1, 10), h.mean(-1).reshape(-1), self.omega0, self.spread,
            None if noise is None else noise.reshape(-1, cfg.n_oscillators),
            cfg.n_harmonics, cfg.bistable, cfg.u_min, cfg.u_max, cfg.den_eps,
        )
        delta, u = delta.reshape(batch_shape), u.reshape(batch_shape)
        features = features.reshape(*batch_shape, 3 * cfg.n_harmonics)
        reg = self._regulariser(h, delta, u)
        out = self.readout(features)
        return BankOutput(out.to(hidden.dtype), features[..., 2 * cfg.n_harmonics], u, delta, reg)

    def intervention_sites(self) -> SiteMap:
        """A bank on its own: one oscillator site (itself), no branches."""
        return SiteMap(self, [Site(0, "bank", self, self.cfg.n_oscillators)])
