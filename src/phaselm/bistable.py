"""The bistable Kuramoto bank of K-SSM (seed 003; docs/seeds-vs-phaselm.md lists where we depart from it),
per position and guarded.

Per position, a 10-parameter projection p = (a, b, c, d, e, f, g, h, i, j) of the hidden state
gives

    Δ = b·g − c·f,      u = (d·g − c·h) / (a·g − c·e),      u ∈ [u_min, u_max] (bistable)
    K = 2·sigmoid(u)

Oscillator phases start at θ_i = ω₀_i + mean_c(hidden) (ω₀ learned, initialised evenly over
[−π, π]), take ``steps`` coupling steps θ ← θ + K·R·sin(ψ − θ) − δ·ε, and are read out through
the harmonics Z_n, n = 1..H, as [Re Z_n, Im Z_n, |Z_n|] → Linear → hidden. R = |Z_1|.

Driven oscillators (issue 15; every option defaults to the behaviour above). As shipped, the
phases start evenly spread and every position shifts all of them by the same amount, so R ≈ 0
and the coupling has nothing to act on. These options give the coupling something to do:

- ``phase_input = "projected"``: each oscillator gets its own input, θ_i⁽⁰⁾ = ω₀_i + (W_φ h)_i
  with W_φ a learned Linear C → N ("mean": θ_i⁽⁰⁾ = ω₀_i + mean_c h, one shift for all).
- ``omega_init = "random"``: ω₀_i ~ N(0, ``omega_std``²) instead of evenly over [−π, π), so
  the phases do not start with R ≈ 0 by construction (R ≈ exp(−σ²/2) for large N).
- ``steps`` > 1: several coupling steps per position, θ⁽ᵏ⁺¹⁾ = θ⁽ᵏ⁾ + K·R⁽ᵏ⁾·sin(ψ⁽ᵏ⁾ − θ⁽ᵏ⁾)
  − δ·ε; works with every option below.
- ``carry_phases``: the phases are carried along the sequence, θ_t⁽⁰⁾ = θ_{t−1}⁽ˢ⁾ + drive_t
  with drive_t = ω₀ + mean_c h_t (or ω₀ + W_φ h_t) and θ_{−1}⁽ˢ⁾ = 0, so the first position is
  the stateless bank's. ω₀ is then each oscillator's natural frequency (a rotation per
  position) that the coupling K must overcome to synchronise, as in Kuramoto's model; without
  it the carried phases lock (R → 1) within a few positions. The bank is then recurrent:
  forward takes and returns the carried phases (B, N), a generation cache holds them, and a
  padded position (mask 0) leaves them untouched. The carry continues from the free dynamics
  (an intervention's phase transforms act on the readout only).
- ``readout = "harmonics+R"``: R also gates the readout, out = (1 + g·R) ⊙ Linear(harmonics)
  (g ∈ R^C learned, starting at 0). R already enters the harmonics linearly as |Z_1|; the gate
  makes it scale what the bank writes. ``readout = "phases"``: the readout sees every phase,
  out = Linear([cos θ_1..N, sin θ_1..N]) (2N features, no harmonics).

The fused kernel (phaselm.ops.bistable_bank) covers ``omega_init`` (ω₀ is its input) and the
"harmonics+R" gate (applied to its features); ``phase_input = "projected"``, ``carry_phases``,
``readout = "phases"``, ``steps`` ≠ 1 and an intervention's transforms take the reference path,
and the switch logs why.

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
from .ops.backend import logger as backend_logger
from .ops.backend import resolve
from .ops.bistable_bank import BANK, bistable_bank_triton

PHASE_INPUTS = ("mean", "projected")
OMEGA_INITS = ("even", "random")
READOUTS = ("harmonics", "harmonics+R", "phases")
TWO_PI = 2 * math.pi
_logged_fallbacks: set[str] = set()


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
    # Driven oscillators (issue 15; the module docstring gives each equation). The defaults are
    # the bank as shipped.
    phase_input: str = "mean"  # "mean": one shift mean_c(h) for all; "projected": θ_i += (W_φ h)_i
    omega_init: str = "even"  # "even": ω₀ evenly over [−π, π); "random": ω₀ ~ N(0, omega_std²)
    # σ of omega_init = "random". 2: the phases start at R ≈ 0.15 and, at the init's K = 2·sigmoid(1),
    # two coupling steps bring them to R ≈ 0.4, which K over its range [1.05, 2] moves from 0.33
    # to 0.51 (N = 192); at σ = 1 two steps lock them (R ≈ 0.98 for every K).
    omega_std: float = 2.0
    carry_phases: bool = False  # True: θ_t starts from θ_{t−1} (a recurrent bank)
    readout: str = "harmonics"  # "harmonics", "harmonics+R" (R gates the readout) or "phases" (cos/sin θ_i)

    def __post_init__(self) -> None:
        if self.n_oscillators < 2 or self.n_harmonics < 1:
            raise PhaseLMError("bank needs at least 2 oscillators and 1 harmonic")
        for name, value, allowed in (
            ("phase_input", self.phase_input, PHASE_INPUTS),
            ("omega_init", self.omega_init, OMEGA_INITS),
            ("readout", self.readout, READOUTS),
        ):
            if value not in allowed:
                raise PhaseLMError(f"bank {name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.omega_std <= 0:
            raise PhaseLMError(f"bank omega_std must be > 0, got {self.omega_std}")
        if self.steps < 0:
            raise PhaseLMError(f"bank steps must be ≥ 0, got {self.steps}")
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
    state: torch.Tensor | None = None  # (B, N) the phases to carry on (carry_phases), else None


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
        if cfg.omega_init == "random":
            self.omega0 = nn.Parameter(torch.randn(n) * cfg.omega_std)
        else:
            self.omega0 = nn.Parameter(torch.linspace(-math.pi, math.pi, n + 1)[:-1].clone())
        self.spread = nn.Parameter(torch.tensor(cfg.spread_init))
        # W_φ: each oscillator's own phase input (phase_input = "projected"); None otherwise.
        self.to_phases = nn.Linear(hidden_size, n) if cfg.phase_input == "projected" else None
        features = 2 * n if cfg.readout == "phases" else 3 * cfg.n_harmonics
        self.readout = nn.Linear(features, hidden_size)
        # g of readout = "harmonics+R": starts at 0, so the gate starts as the identity.
        self.order_gain = nn.Parameter(torch.zeros(hidden_size)) if cfg.readout == "harmonics+R" else None
        # Set by interventions (phaselm.interventions.intervene), never by forward(): functions
        # θ (…, N) → θ applied in order after the coupling steps, before the harmonic readout.
        # Empty (the default) leaves the computation exactly as without interventions.
        self.phase_transforms: list = []
        # Likewise: functions K (…) → K applied in order to the coupling 2·sigmoid(u) before the
        # coupling steps (an evaluation-time scale of K). Empty: the computation is unchanged.
        self.coupling_transforms: list = []

    def forward(
        self, hidden: torch.Tensor, state: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> BankOutput:
        """hidden (B, T, D) → BankOutput (out (B, T, D); order, u, Δ, reg (B, T); state (B, N) or None).

        ``state`` (B, N) and ``mask`` (B, T) (1 real, 0 padding) matter only with
        ``carry_phases``: the phases carried in from earlier positions (None: start from 0),
        and which positions move them. Without it every position is independent.
        """
        cfg = self.cfg
        choice = resolve(BANK, self.backend, hidden.device)
        if choice == "triton":
            why = self.reference_reason()
            if why is not None:
                # The kernel fuses one coupling step of today's bank; these runs take the
                # reference (the switch records it, and the first time each reason is logged).
                if why not in _logged_fallbacks:
                    _logged_fallbacks.add(why)
                    backend_logger.info("%s: %s, so the reference runs", BANK.name, why)
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
            drive = self.omega0 + (self.to_phases(h) if self.to_phases is not None else h.mean(-1, keepdim=True))
            new_state = None
            if cfg.carry_phases:
                theta, new_state = self._carried(drive, coupling, state, mask)
            else:
                theta = self._couple(drive, coupling)
            for transform in self.phase_transforms:
                theta = transform(theta)
            out, order = self._read_out(theta)
        return BankOutput(out.to(hidden.dtype), order, u, delta, reg, new_state)

    def reference_reason(self) -> str | None:
        """Why the fused kernel cannot run this bank as configured (and with what is installed), or None."""
        cfg = self.cfg
        if self.phase_transforms or self.coupling_transforms:
            return "an intervention's transforms are installed"
        if cfg.steps != 1:
            return f"bank steps = {cfg.steps} (the kernel fuses one coupling step)"
        if cfg.phase_input != "mean":
            return f"phase_input = {cfg.phase_input!r}"
        if cfg.carry_phases:
            return "carry_phases is on"
        if cfg.readout == "phases":
            return "readout = 'phases'"
        return None

    def _couple(self, theta: torch.Tensor, coupling: torch.Tensor) -> torch.Tensor:
        """``steps`` coupling steps (with the phase noise in training) on θ (…, N), K (…)."""
        for _ in range(self.cfg.steps):
            theta = theta + oscillators.velocity(theta, torch.zeros_like(self.omega0), coupling)
            if self.training or self.cfg.noise_in_eval:
                theta = theta - self.spread.abs() * torch.randn_like(theta)
        return theta

    def _carried(
        self, drive: torch.Tensor, coupling: torch.Tensor, state: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """carry_phases: drive (B, T, N), K (B, T), state (B, N) or None (start from 0), mask (B, T)
        or None → (phases (B, T, N), the phases to carry on (B, N)), position by position."""
        batch, length, n = drive.shape
        prev = drive.new_zeros(batch, n) if state is None else state.float()
        phases = []
        for t in range(length):
            new = self._couple(prev + drive[:, t], coupling[:, t])
            if mask is not None:
                new = torch.where(mask[:, t, None].bool(), new, prev)  # padding keeps the carried phases
            phases.append(new)
            # Carried wrapped, so float32 stays precise over long sequences (remainder's gradient is 1).
            prev = torch.remainder(new, TWO_PI)
        if not phases:
            return drive.new_zeros(batch, 0, n), prev
        return torch.stack(phases, dim=1), prev

    def _read_out(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Phases (B, T, N) → (out (B, T, D), R (B, T)) through the configured readout."""
        if self.cfg.readout == "phases":
            cos, sin = torch.cos(theta), torch.sin(theta)
            order = torch.sqrt(cos.mean(-1) ** 2 + sin.mean(-1) ** 2 + 1e-12)
            return self.readout(torch.cat([cos, sin], dim=-1)), order
        re, im = oscillators.harmonics(theta, self.cfg.n_harmonics)  # (B, T, H) each
        magnitude = torch.sqrt(re**2 + im**2 + 1e-12)
        return self._gate(self.readout(torch.cat([re, im, magnitude], dim=-1)), magnitude[..., 0]), magnitude[..., 0]

    def _gate(self, out: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """readout = "harmonics+R": out (…, D) ⊙ (1 + g·R) with R (…); the identity otherwise."""
        if self.order_gain is None:
            return out
        return out * (1.0 + self.order_gain * order.unsqueeze(-1))

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
        order = features[..., 2 * cfg.n_harmonics]
        out = self._gate(self.readout(features), order)
        return BankOutput(out.to(hidden.dtype), order, u, delta, reg)

    def intervention_sites(self) -> SiteMap:
        """A bank on its own: one oscillator site (itself), no branches."""
        return SiteMap(self, [Site(0, "bank", self, self.cfg.n_oscillators)])
