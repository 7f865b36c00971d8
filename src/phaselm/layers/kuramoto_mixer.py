"""Causal Kuramoto token mixing (issue 15, point 2): the phases are the token states, and learned,
content-dependent weights over earlier tokens are the coupling kernel.

Per head h (H heads, D oscillators per head), from the hidden state x_t (B, T, C):

    θ_t⁽⁰⁾  = π·tanh(W_θ x_t)                       initial phases, one per oscillator
    ω_t     = W_ω x_t                               natural frequencies, per token and oscillator
    q_t, k_t = Rot_t W_q x_t, Rot_t W_k x_t         D_k wide per head, rotary positions (``rotary``)
    A_ts    = softmax_{s ≤ t}(q_t·k_s / √D_k)       the coupling kernel (causal, one per head)

where Rot_t turns pair i = (x_i, x_{i+D_k/2}) by t·10000^(−2i/D_k), so q_t·k_s depends on t − s
(with ``rotary = false``, Rot_t = 1).

then ``steps`` Euler steps of size ``dt``, oscillator d of token t coupled to oscillator d of
every token s ≤ t, with z_s = e^{iθ_s} = [cos θ_s, sin θ_s]:

    M_t = Σ_{s≤t} A_ts z_s                          the mean field token t sees
    θ_t ← θ_t + dt·(ω_t + K_h·Im(conj(z_t)·M_t))
        = θ_t + dt·(ω_t + K_h·(cos θ_t·Im M_t − sin θ_t·Re M_t))
        = θ_t + dt·(ω_t + K_h·Σ_{s≤t} A_ts·sin(θ_s − θ_t))     (Kuramoto, with weights A)

K_h = softplus(κ_h) > 0, learned per head. Readout, per head: [cos θ_t⁽ˢ⁾, sin θ_t⁽ˢ⁾, R_t] →
Linear → C, where R_t = mean_d |M_{t,d}| of the last step is the synchrony token t sees (in
[0, 1]: M is a convex combination of unit vectors). R (B, T, H) is the layer's observable.
``readout = "field"`` adds, per oscillator, the last step's field as the token's own phase sees
it, conj(z_t)·M_t = Σ_s A_ts·e^{i(θ_s − θ_t)}: its real part (alignment) and imaginary part (the
pull of the update above), so what was read from earlier tokens also reaches the output linearly.

Choices, and why:
- Rotary positions (default on): without them (the first version) A_ts can select tokens only by
  content, so it can find token t itself but not t − 1. Trained so (issue 15), K-SSM with this
  mixer stayed at bigram CE (2.45 on Tiny Shakespeare, 3 seeds, vs 1.50 with the SSD mixer) with
  R ≈ 0.95 — each token coupled to itself, |M_t| ≈ 1. On CPU the mixer without positions cannot
  learn to name the previous token (held-out CE 1.59, chance 2.08) and learns it with them (0.50;
  tests/layers/test_kuramoto_mixer.py). Rotary is what the Kuramoto attention paper (arXiv 2606.11585) uses: position
  enters as a phase drift in the score, keeps the scores relative, so left padding and the cache
  (positions continue at the past length) still leave outputs unchanged.
- θ⁽⁰⁾ = π·tanh(·) rather than atan2 of two projections: atan2's gradient is singular where both
  projections are near zero — exactly where a small initialisation puts them — while π·tanh is
  smooth and bounded (the seeds' PhaseBlock uses it). W_θ starts at std 1/√C, not GPT-2's 0.02,
  so that on normalised inputs the initial phases spread over most of the circle: with 0.02 they
  would all start near 0, already synchronised, and the coupling would have nothing to do.
- Each step's mean field is one attention call with values [cos θ, sin θ] (2·D wide per head),
  so the fast path ("sdpa") is ``F.scaled_dot_product_attention`` (flash / memory-efficient
  kernels and tensor cores on a GPU); the reference builds the (T × T) masked softmax matrix and
  sums explicitly (:func:`mean_field_loop` is a plainer per-position loop for tiny tests). Both
  are chosen through :mod:`phaselm.ops.backend` (op ``kuramoto_mixer``).
- Phases and their updates stay in float32 (float64 when the input is); under autocast only the
  attention call and the projections take autocast's dtype.

Interventions (an oscillator site of kind ``"mixer"``, :mod:`phaselm.interventions`): the mixer has
the two transform slots of every oscillator site. ``coupling_transforms`` act on K_h (H, 1, 1)
before the steps. ``phase_transforms`` act on the synchrony a token couples to — the mean field
M_t (B, H, T, D) of every step, given as (Re M, Im M) and returned the same way — right after the
attention read and before the update, the readout's R_t and the field readout use it:

    θ_t ← θ_t + dt·(ω_t + K_h·Im(conj(z_t)·f(M_t)))          f: the installed transforms, in order

Why the field and not the token phases: the mixer's R is an order parameter across tokens,
|Σ_{s≤t} A_ts e^{iθ_s}|, with weights that differ per query t, so no causal assignment of token
phases can set it (token 0 sees only itself: its |M| is 1 whatever its phase). Forcing
|M_t| = r with arg M_t kept (``pin r``; sync r = 1, disorder r = 0) is the bank's rule ("ψ kept,
only the spread forced") for the neighbourhood a token couples to, and it holds exactly at every
position and step. Disorder removes the pull (K·0); sync makes every token see a fully
synchronised past at its mean phase. Each step's forced field is a function of tokens ≤ t, so
causality, padding and the cache are unchanged. The slots act outside the attention call, so the
reference and SDPA paths honour them alike; with no transform installed nothing runs (the output
is bit-identical to a mixer without slots).

Causality holds by construction: θ_t⁽ᵏ⁾ depends only on tokens ≤ t. A padded position
(``mask`` 0) is excluded as a key from every softmax (it sees only itself), so padding leaves the
real tokens' outputs unchanged. The decoding state keeps the keys (rotated) and, per step k, the values
z_s⁽ᵏ⁾ of every earlier token (they never change once computed) and which of them are real; a new
token runs ``steps`` attention reads against it, and equals the full forward. The state grows by
one token per token (a KV cache, O(T) per new token), unlike the SSM mixers' fixed-size state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PhaseLMError
from ..ops.backend import Op, accepted, resolve

KURAMOTO_MIXER = Op("kuramoto_mixer", ("reference", "sdpa"), auto=lambda device: "sdpa")

READOUTS = ("phases", "field")

# (keys (B, H, P, D_k), values (B, steps, H, P, 2·D), real (B, P) bool): batch first throughout,
# so a cache reorders every entry with one index_select along dim 0.
MixerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class KuramotoMixerConfig:
    """The Kuramoto mixer's settings. K-SSM's ``KSSMConfig`` takes its ``kuramoto_*`` defaults
    from here and builds this from its fields, so each default is written once."""

    heads: int = 6
    oscillators: int = 32  # D, per head
    key_dim: int = 64  # D_k, per head
    steps: int = 2
    # 0.5: one step moves a phase by up to K/2 rad, so two steps can matter; Euler on the
    # linearised dynamics stays stable while K·dt < 2. (The PhaseBlock's 0.08 moves it by ~0.1.)
    dt: float = 0.5
    coupling_init: float = 1.0  # K_h at initialisation (= softplus(κ_h))
    # "phases": [cos θ_t, sin θ_t, R_t]; "field": also the field relative to the token's own
    # phase, conj(z_t)·M_t (module docstring)
    readout: str = "phases"
    # Rotary positions on q and k (base 10,000): without them the kernel cannot tell the previous
    # token from any other, and the mixer learns to couple each token to itself (module docstring).
    rotary: bool = True
    backend: str = "auto"  # "auto" (= "sdpa" on every device), "sdpa" or "reference"

    def __post_init__(self) -> None:
        if min(self.heads, self.oscillators, self.key_dim, self.steps) < 1:
            raise PhaseLMError(
                f"kuramoto mixer needs heads, oscillators, key_dim and steps ≥ 1, got {self.heads}, "
                f"{self.oscillators}, {self.key_dim}, {self.steps}; raise the ones below 1"
            )
        if not self.dt > 0 or not self.coupling_init > 0:
            raise PhaseLMError(
                f"kuramoto mixer needs dt > 0 and coupling_init > 0, got {self.dt} and {self.coupling_init}; "
                "give positive values"
            )
        if self.rotary and self.key_dim % 2:
            raise PhaseLMError(
                f"kuramoto mixer with rotary positions needs an even key_dim, got {self.key_dim}; "
                "use an even key_dim or rotary = false"
            )
        if self.readout not in READOUTS:
            raise PhaseLMError(
                f"kuramoto mixer readout must be one of {', '.join(READOUTS)}, got {self.readout!r}"
            )
        if self.backend not in accepted(KURAMOTO_MIXER):
            raise PhaseLMError(
                f"kuramoto mixer backend must be one of {', '.join(accepted(KURAMOTO_MIXER))}, got {self.backend!r}"
            )

    @classmethod
    def from_model_config(cls, config) -> KuramotoMixerConfig:
        """Built from a model config's ``kuramoto_<field>`` attributes (K-SSM's, fusion's)."""
        return cls(**{f.name: getattr(config, f"kuramoto_{f.name}") for f in fields(cls)})


def allowed_keys(past_real: torch.Tensor | None, new_real: torch.Tensor) -> torch.Tensor:
    """Which keys each new query may couple to: (B, 1, T, P + T) bool.

    past_real (B, P) bool or None (no past), new_real (B, T) bool. Query t (position P + t)
    sees key s when s ≤ P + t and s is a real token or s = P + t (a padded query sees only
    itself, so no softmax is empty and no real token sees a padded one).
    """
    real = new_real if past_real is None else torch.cat([past_real, new_real], dim=1)
    past, length = real.shape[1] - new_real.shape[1], new_real.shape[1]
    query_pos = torch.arange(past, past + length, device=real.device)[:, None]
    key_pos = torch.arange(past + length, device=real.device)[None, :]
    causal = key_pos <= query_pos
    return (causal & (real[:, None, :] | (key_pos == query_pos)))[:, None]


def rotate_by_position(x: torch.Tensor, first_position: int, base: float = 10_000.0) -> torch.Tensor:
    """Rotary position embedding: x (B, H, T, D_k), D_k even, at positions first_position … +T−1.
    Pair i = (x_i, x_{i+D_k/2}) turns by position·base^(−2i/D_k), so q_t·k_s depends on t − s only."""
    half, dtype = x.shape[-1] // 2, torch.promote_types(x.dtype, torch.float32)  # angles never in bf16
    frequencies = base ** (-torch.arange(half, device=x.device, dtype=dtype) / half)
    positions = torch.arange(first_position, first_position + x.shape[2], device=x.device, dtype=dtype)
    angle = positions[:, None] * frequencies  # (T, D_k/2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x.to(dtype).split(half, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def mean_field_reference(
    q: torch.Tensor, k: torch.Tensor, z: torch.Tensor, allowed: torch.Tensor | None
) -> torch.Tensor:
    """M = A·z with the coupling matrix A written out: q (B, H, T, D_k), k (B, H, S, D_k),
    z (B, H, S, 2D), allowed (B, 1, T, S) bool or None (plain causal, T = S) → M (B, H, T, 2D)."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.shape[-1])
    if allowed is None:
        allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    coupling = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)  # A (B, H, T, S)
    return torch.einsum("bhts,bhsd->bhtd", coupling, z.to(coupling.dtype))


def mean_field_loop(q: torch.Tensor, k: torch.Tensor, z: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """:func:`mean_field_reference` one query position at a time (same shapes): the plainest
    statement of M_t = Σ_{s allowed} softmax_s(q_t·k_s/√D_k)·z_s, for tiny tests."""
    rows = []
    for t in range(q.shape[2]):
        scores = (q[:, :, t, None, :] * k).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, S)
        ok = allowed[:, :, t] if allowed is not None else torch.arange(k.shape[2], device=q.device) <= t
        weights = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1)
        rows.append((weights[..., None] * z).sum(-2))
    return torch.stack(rows, dim=2)


def mean_field(
    q: torch.Tensor, k: torch.Tensor, z: torch.Tensor, allowed: torch.Tensor | None, backend: str = "auto"
) -> torch.Tensor:
    """The mean field each query sees, M = softmax(q·kᵀ/√D_k, masked)·z: q (B, H, T, D_k),
    k (B, H, S, D_k), z (B, H, S, 2D), allowed (B, 1, T, S) bool or None (plain causal, T = S)
    → (B, H, T, 2D), on the path ``backend`` resolves to (logged)."""
    if resolve(KURAMOTO_MIXER, backend, q.device) == "reference":
        return mean_field_reference(q, k, z, allowed)
    return F.scaled_dot_product_attention(q, k, z.to(q.dtype), attn_mask=allowed, is_causal=allowed is None)


class KuramotoMixer(nn.Module):
    """Causal Kuramoto token mixer (see the module docstring for the equations).

    ``forward(hidden (B, T, C), attention_mask=None, cache=None)`` → (out (B, T, C),
    R (B, T, H), new cache or None). ``phase_transforms`` and ``coupling_transforms``: the
    intervention slots (module docstring).
    """

    def __init__(self, hidden_size: int, cfg: KuramotoMixerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else KuramotoMixerConfig()
        h, d, dk = cfg.heads, cfg.oscillators, cfg.key_dim
        self.widths = [h * d, h * d, h * dk, h * dk]  # θ, ω, q, k
        self.in_proj = nn.Linear(hidden_size, sum(self.widths), bias=False)
        per_head_features = (4 if cfg.readout == "field" else 2) * d + 1
        self.out_proj = nn.Linear(h * per_head_features, hidden_size, bias=False)
        self.coupling_logit = nn.Parameter(torch.full((h,), math.log(math.expm1(cfg.coupling_init))))
        with torch.no_grad():
            phase_rows, rest = self.in_proj.weight.split([h * d, sum(self.widths) - h * d])
            phase_rows.normal_(std=hidden_size**-0.5)  # phases spread at init (docstring)
            rest.normal_(std=0.02)
        # The recurrent models' GPT-2 init must not overwrite the phase rows' scale.
        self.in_proj._phaselm_initialised = True
        # Intervention slots (module docstring): (Re M, Im M) (B, H, T, D) → the same, every step;
        # K (H, 1, 1) → K. Plain lists, not state: installed and removed by phaselm.interventions.
        self.phase_transforms: list = []
        self.coupling_transforms: list = []

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: MixerState | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, MixerState | None]:
        """hidden (B, T, C), attention_mask None or (B, T) with 0 at padding (this call's tokens),
        cache None or the state a previous call returned → (out (B, T, C), R (B, T, H), the state
        continuing after these tokens, or None when ``use_cache`` is False)."""
        cfg = self.cfg
        batch, length, _ = hidden.shape
        heads, d = cfg.heads, cfg.oscillators
        backend = resolve(KURAMOTO_MIXER, cfg.backend, hidden.device)
        phase_dtype = torch.promote_types(hidden.dtype, torch.float32)

        def per_head(x: torch.Tensor) -> torch.Tensor:  # (B, T, H·W) → (B, H, T, W)
            return x.reshape(batch, length, heads, -1).transpose(1, 2)

        phase_in, omega, q, k = (per_head(x) for x in self.in_proj(hidden).split(self.widths, dim=-1))
        theta = math.pi * torch.tanh(phase_in.to(phase_dtype))
        omega = omega.to(phase_dtype)
        coupling = F.softplus(self.coupling_logit.to(phase_dtype))[:, None, None]  # K (H, 1, 1)
        for transform in self.coupling_transforms:
            coupling = transform(coupling)

        new_real = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
        )
        past_keys, past_values, past_real = cache if cache is not None else (None, None, None)
        if cfg.rotary:
            past_length = 0 if cache is None else past_keys.shape[2]
            q, k = rotate_by_position(q, past_length), rotate_by_position(k, past_length)
        keys = k if cache is None else torch.cat([past_keys, k.to(past_keys.dtype)], dim=2)
        # Plain causal attention (no mask tensor: the fastest kernels) unless a past or padding needs one.
        plain = cache is None and attention_mask is None
        allowed = None if plain else allowed_keys(past_real, new_real)

        values = []
        for step in range(cfg.steps):
            z = torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1)  # (B, H, T, 2D)
            values.append(z)
            z_all = z if cache is None else torch.cat([past_values[:, step], z.to(past_values.dtype)], dim=2)
            field = mean_field(q, keys, z_all, allowed, backend).to(phase_dtype)
            re, im = field.split(d, dim=-1)
            for transform in self.phase_transforms:  # forced synchrony of the field (docstring)
                re, im = transform(re, im)
            cos, sin = torch.cos(theta), torch.sin(theta)
            # conj(z_t)·M_t = Σ_s A_ts·e^{i(θ_s − θ_t)}: the field as the token's own phase sees it
            aligned, pull = cos * re + sin * im, cos * im - sin * re
            theta = theta + cfg.dt * (omega + coupling * pull)
        # Local synchrony of the last step; the 1e-12 keeps sqrt's gradient finite at |M| = 0.
        order = torch.sqrt(re.square() + im.square() + 1e-12).mean(-1)  # (B, H, T)
        parts = [torch.cos(theta), torch.sin(theta)]
        if cfg.readout == "field":
            parts += [aligned, pull]
        features = torch.cat([*parts, order[..., None]], dim=-1)
        features = features.transpose(1, 2).reshape(batch, length, -1).to(hidden.dtype)
        out = self.out_proj(features)

        new_cache = None
        if use_cache:
            stacked = torch.stack(values, dim=1)  # (B, steps, H, T, 2D)
            if cache is None:
                new_cache = (k, stacked, new_real)
            else:
                new_cache = (
                    keys,
                    torch.cat([past_values, stacked.to(past_values.dtype)], dim=3),
                    torch.cat([past_real, new_real], dim=1),
                )
        return out, order.transpose(1, 2), new_cache
