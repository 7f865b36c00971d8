"""K-SSM's bistable bank, every position's pointwise work in one Triton kernel per direction.

Per position (row), from its 10 map parameters p = (a, …, j), the mean m of its hidden state,
the oscillators' ω₀ (N,) and the noise scale δ (the same math as :mod:`phaselm.bistable`):

    Δ = b·g − c·f,   u = (d·g − c·h) / den,  den = a·g − c·e kept ≥ den_eps from 0 with its sign
    u ← clamp(u, u_min, u_max)  (bistable),   K = 2·sigmoid(u)
    θ⁰ = ω₀ + m,   θ = θ⁰ + K·(S·cos θ⁰ − C·sin θ⁰) − |δ|·ε     (C, S: mean cos, sin of θ⁰)
    features = [Re Z_n, Im Z_n, |Z_n|], n = 1..H,   Z_n = mean_j e^{i n θ_j}

Written in PyTorch (:meth:`phaselm.bistable.BistableBank.forward`, the reference) that is a
dozen kernels over (positions, N) tensors, each kept for backward; here one program holds a
block of rows' phases in registers, steps through the harmonics by the angle-addition
recurrence (as :mod:`phaselm.ops.harmonics` does) and writes only Δ, u and the 3·H features.
Backward recomputes the phases from the same inputs. The noise ε comes in as a tensor (drawn
by the caller exactly as the reference draws it), so both paths see the same numbers.

The kernels are registered as the custom ops ``phaselm::bistable_bank_fwd`` / ``_bwd`` (fake
and autograd registered), so torch.compile keeps them whole. Only one coupling step is
fused; the layer takes the reference for more steps or when an intervention installs
coupling or phase transforms (see :class:`phaselm.bistable.BistableBank`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import Op, accepted

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

# "auto" is the reference: in a compiled K-SSM v3 step Inductor fuses the reference's pointwise
# work into its neighbours, and the opaque kernel lost to it (21.4 vs 27.9 ms a step on an H200,
# benchmarks/kssm_profile.py, 2026-11-26, docs/benchmarks.md). "triton" stays for eager use.
BANK = Op("bistable_bank", ("reference", "triton"), auto=lambda device: "reference")
BACKENDS = accepted(BANK)
N_PARAMS = 10


def bistable_bank_triton(
    params: Tensor, centre: Tensor, omega0: Tensor, spread: Tensor, noise: Tensor | None,
    n_harmonics: int, bistable: bool, u_min: float, u_max: float, den_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """params (M, 10), centre (M,) (each row's hidden mean), omega0 (N,), spread (), noise (M, N)
    or None → Δ (M,), u (M,) after the clamp, features (M, 3·H) = [Re Z, Im Z, |Z|]; float32."""
    if triton is None:
        raise RuntimeError("the fused bistable bank needs Triton; use backend='reference'")
    return torch.ops.phaselm.bistable_bank_fwd(
        params.float().contiguous(), centre.float().contiguous(), omega0.float().contiguous(),
        spread.float().reshape(1), None if noise is None else noise.float().contiguous(),
        n_harmonics, bistable, float(u_min), float(u_max), float(den_eps),
    )


def _blocks(n_oscillators: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(n_oscillators)
    block_m = max(1, min(64, 4096 // block_n))  # a tile of about 4K phases in registers
    return block_m, block_n


def _unused_pointer(like: Tensor) -> Tensor:
    """A kernel argument its constexpr flags never touch."""
    return like.new_empty(1)


if triton is not None:

    @torch.library.custom_op("phaselm::bistable_bank_fwd", mutates_args=())
    def _bank_fwd_op(
        params: Tensor, centre: Tensor, omega0: Tensor, spread: Tensor, noise: Tensor | None,
        n_harmonics: int, bistable: bool, u_min: float, u_max: float, den_eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows, n = params.shape[0], omega0.shape[0]
        delta = params.new_empty(rows)
        u = params.new_empty(rows)
        features = params.new_empty(rows, 3 * n_harmonics)
        block_m, block_n = _blocks(n)
        _bank_fwd[(triton.cdiv(rows, block_m),)](
            params, centre, omega0, spread, noise if noise is not None else _unused_pointer(params),
            delta, u, features, rows, n, u_min, u_max, den_eps,
            H=n_harmonics, HAS_NOISE=noise is not None, BISTABLE=bistable, BLOCK_M=block_m, BLOCK_N=block_n,
        )
        return delta, u, features

    @_bank_fwd_op.register_fake
    def _(params, centre, omega0, spread, noise, n_harmonics, bistable, u_min, u_max, den_eps):
        rows = params.shape[0]
        return params.new_empty(rows), params.new_empty(rows), params.new_empty(rows, 3 * n_harmonics)

    @torch.library.custom_op("phaselm::bistable_bank_bwd", mutates_args=())
    def _bank_bwd_op(
        params: Tensor, centre: Tensor, omega0: Tensor, spread: Tensor, noise: Tensor | None, features: Tensor,
        grad_delta: Tensor, grad_u: Tensor, grad_features: Tensor,
        n_harmonics: int, bistable: bool, u_min: float, u_max: float, den_eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """→ gradients of params (M, 10), centre (M,), omega0 (N,), spread (1,)."""
        rows, n = params.shape[0], omega0.shape[0]
        block_m, block_n = _blocks(n)
        programs = triton.cdiv(rows, block_m)
        d_params = torch.empty_like(params)
        d_centre = torch.empty_like(centre)
        # Sums over rows (ω₀, δ) come back per program and are added up below: no atomics.
        d_omega_parts = params.new_empty(programs, n)
        d_spread_parts = params.new_empty(programs)
        _bank_bwd[(programs,)](
            params, centre, omega0, spread, noise if noise is not None else _unused_pointer(params), features,
            grad_delta.contiguous(), grad_u.contiguous(), grad_features.contiguous(),
            d_params, d_centre, d_omega_parts, d_spread_parts, rows, n, u_min, u_max, den_eps,
            H=n_harmonics, HAS_NOISE=noise is not None, BISTABLE=bistable, BLOCK_M=block_m, BLOCK_N=block_n,
        )
        return d_params, d_centre, d_omega_parts.sum(0), d_spread_parts.sum(0, keepdim=True)

    @_bank_bwd_op.register_fake
    def _(params, centre, omega0, spread, noise, features, grad_delta, grad_u, grad_features,
          n_harmonics, bistable, u_min, u_max, den_eps):
        return torch.empty_like(params), torch.empty_like(centre), torch.empty_like(omega0), torch.empty_like(spread)

    def _bank_setup(ctx, inputs, output):
        params, centre, omega0, spread, noise, n_harmonics, bistable, u_min, u_max, den_eps = inputs
        ctx.save_for_backward(params, centre, omega0, spread, noise, output[2])
        ctx.settings = (n_harmonics, bistable, u_min, u_max, den_eps)

    def _bank_backward(ctx, grad_delta, grad_u, grad_features):
        params, centre, omega0, spread, noise, features = ctx.saved_tensors
        rows = params.shape[0]
        # An output the loss does not use comes back as None: its gradient is zero.
        grad_delta = params.new_zeros(rows) if grad_delta is None else grad_delta.float()
        grad_u = params.new_zeros(rows) if grad_u is None else grad_u.float()
        grad_features = torch.zeros_like(features) if grad_features is None else grad_features.float()
        d_params, d_centre, d_omega, d_spread = torch.ops.phaselm.bistable_bank_bwd(
            params, centre, omega0, spread, noise, features, grad_delta, grad_u, grad_features, *ctx.settings
        )
        return d_params, d_centre, d_omega, d_spread, None, None, None, None, None, None

    _bank_fwd_op.register_autograd(_bank_backward, setup_context=_bank_setup)

    @triton.jit
    def _map(params_ptr, rows, row_ok, u_min, u_max, den_eps, BISTABLE: tl.constexpr):
        """The 10-parameter map of a block of rows → (Δ, u clamped, u before the clamp, the guarded
        denominator, whether the guard replaced it, the numerator, the eight used parameters)."""
        base = params_ptr + rows * 10
        a = tl.load(base + 0, mask=row_ok, other=1.0)
        b = tl.load(base + 1, mask=row_ok, other=0.0)
        c = tl.load(base + 2, mask=row_ok, other=0.0)
        d = tl.load(base + 3, mask=row_ok, other=0.0)
        e = tl.load(base + 4, mask=row_ok, other=0.0)
        f = tl.load(base + 5, mask=row_ok, other=0.0)
        g = tl.load(base + 6, mask=row_ok, other=1.0)
        h = tl.load(base + 7, mask=row_ok, other=0.0)
        delta = b * g - c * f
        den = a * g - c * e
        guarded = tl.abs(den) < den_eps
        den = tl.where(guarded, tl.where(den >= 0, den_eps, -den_eps), den)
        num = d * g - c * h
        u_raw = num / den
        u = u_raw
        if BISTABLE:
            u = tl.minimum(tl.maximum(u_raw, u_min), u_max)
        return delta, u, u_raw, den, guarded, num, a, b, c, d, e, f, g, h

    @triton.jit
    def _phases(centre_ptr, omega_ptr, spread_ptr, noise_ptr, rows, row_ok, cols, mask, N, coupling, HAS_NOISE: tl.constexpr):
        """θ⁰'s cos and sin, its mean field (C, S) and the phases θ after one coupling step."""
        m = tl.load(centre_ptr + rows, mask=row_ok, other=0.0)
        omega = tl.load(omega_ptr + cols, mask=cols < N, other=0.0)
        theta0 = omega[None, :] + m[:, None]
        cos0 = tl.where(mask, tl.cos(theta0), 0.0)
        sin0 = tl.where(mask, tl.sin(theta0), 0.0)
        mean_cos = tl.sum(cos0, axis=1) / N
        mean_sin = tl.sum(sin0, axis=1) / N
        theta = theta0 + coupling[:, None] * (mean_sin[:, None] * cos0 - mean_cos[:, None] * sin0)
        if HAS_NOISE:
            spread = tl.abs(tl.load(spread_ptr))
            theta -= spread * tl.load(noise_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
        return cos0, sin0, mean_cos, mean_sin, theta

    @triton.jit
    def _bank_fwd(
        params_ptr, centre_ptr, omega_ptr, spread_ptr, noise_ptr, delta_ptr, u_ptr, features_ptr,
        M, N, u_min, u_max, den_eps,
        H: tl.constexpr, HAS_NOISE: tl.constexpr, BISTABLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < M
        mask = row_ok[:, None] & (cols[None, :] < N)
        delta, u, _u_raw, _den, _guarded, _num, _a, _b, _c, _d, _e, _f, _g, _h = _map(params_ptr, rows, row_ok, u_min, u_max, den_eps, BISTABLE)
        tl.store(delta_ptr + rows, delta, mask=row_ok)
        tl.store(u_ptr + rows, u, mask=row_ok)
        coupling = 2.0 * tl.sigmoid(u)
        _, _, _, _, theta = _phases(centre_ptr, omega_ptr, spread_ptr, noise_ptr, rows, row_ok, cols, mask, N, coupling, HAS_NOISE)
        c1 = tl.where(mask, tl.cos(theta), 0.0)  # padded columns contribute nothing to any sum
        s1 = tl.where(mask, tl.sin(theta), 0.0)
        cos_n = c1
        sin_n = s1
        out = features_ptr + rows * (3 * H)
        for k in range(H):
            re = tl.sum(cos_n, axis=1) / N
            im = tl.sum(sin_n, axis=1) / N
            tl.store(out + k, re, mask=row_ok)
            tl.store(out + H + k, im, mask=row_ok)
            tl.store(out + 2 * H + k, tl.sqrt(re * re + im * im + 1e-12), mask=row_ok)
            cos_n, sin_n = cos_n * c1 - sin_n * s1, sin_n * c1 + cos_n * s1

    @triton.jit
    def _bank_bwd(
        params_ptr, centre_ptr, omega_ptr, spread_ptr, noise_ptr, features_ptr,
        g_delta_ptr, g_u_ptr, g_features_ptr,
        d_params_ptr, d_centre_ptr, d_omega_parts_ptr, d_spread_parts_ptr,
        M, N, u_min, u_max, den_eps,
        H: tl.constexpr, HAS_NOISE: tl.constexpr, BISTABLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < M
        mask = row_ok[:, None] & (cols[None, :] < N)
        _delta, u, u_raw, den, guarded, num, a, b, c, d, e, f, g, h = _map(params_ptr, rows, row_ok, u_min, u_max, den_eps, BISTABLE)
        sig = tl.sigmoid(u)
        coupling = 2.0 * sig
        cos0, sin0, mean_cos, mean_sin, theta = _phases(
            centre_ptr, omega_ptr, spread_ptr, noise_ptr, rows, row_ok, cols, mask, N, coupling, HAS_NOISE
        )

        # Harmonics: ∂L/∂θ_j = (1/N) Σ_n n·(cos(nθ_j)·gIm_n − sin(nθ_j)·gRe_n), where |Z_n| passes
        # its gradient on through Re and Im.
        c1 = tl.cos(theta)
        s1 = tl.sin(theta)
        cos_n = c1
        sin_n = s1
        g_theta = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        feat = features_ptr + rows * (3 * H)
        g_feat = g_features_ptr + rows * (3 * H)
        for k in range(H):
            re = tl.load(feat + k, mask=row_ok, other=0.0)
            im = tl.load(feat + H + k, mask=row_ok, other=0.0)
            mag = tl.load(feat + 2 * H + k, mask=row_ok, other=1.0)
            g_mag = tl.load(g_feat + 2 * H + k, mask=row_ok, other=0.0)
            g_re = tl.load(g_feat + k, mask=row_ok, other=0.0) + g_mag * re / mag
            g_im = tl.load(g_feat + H + k, mask=row_ok, other=0.0) + g_mag * im / mag
            g_theta += (k + 1.0) * (cos_n * g_im[:, None] - sin_n * g_re[:, None])
            cos_n, sin_n = cos_n * c1 - sin_n * s1, sin_n * c1 + cos_n * s1
        g_theta = tl.where(mask, g_theta / N, 0.0)

        if HAS_NOISE:  # θ −= |δ|·ε
            spread = tl.load(spread_ptr)
            sign = tl.where(spread > 0, 1.0, tl.where(spread < 0, -1.0, 0.0))
            noise = tl.load(noise_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
            tl.store(d_spread_parts_ptr + pid, -sign * tl.sum(tl.sum(g_theta * noise, axis=1), axis=0))
        else:
            tl.store(d_spread_parts_ptr + pid, 0.0)

        # The coupling step θ = θ⁰ + K·(S·cos θ⁰ − C·sin θ⁰), S and C the means over the row.
        g_coupling = tl.sum(g_theta * (mean_sin[:, None] * cos0 - mean_cos[:, None] * sin0), axis=1)
        through_s = tl.sum(g_theta * cos0, axis=1) * coupling / N
        through_c = tl.sum(g_theta * sin0, axis=1) * coupling / N
        g_theta0 = g_theta * (1.0 - coupling[:, None] * (mean_sin[:, None] * sin0 + mean_cos[:, None] * cos0))
        g_theta0 += through_s[:, None] * cos0 + through_c[:, None] * sin0
        g_theta0 = tl.where(mask, g_theta0, 0.0)
        tl.store(d_centre_ptr + rows, tl.sum(g_theta0, axis=1), mask=row_ok)
        tl.store(d_omega_parts_ptr + pid * N + cols, tl.sum(g_theta0, axis=0), mask=cols < N)

        # K = 2·sigmoid(u), the clamp (gradient where u_min ≤ u ≤ u_max, as torch.clamp), u = num/den.
        g_u = tl.load(g_u_ptr + rows, mask=row_ok, other=0.0) + g_coupling * 2.0 * sig * (1.0 - sig)
        if BISTABLE:
            g_u = tl.where((u_raw >= u_min) & (u_raw <= u_max), g_u, 0.0)
        g_num = g_u / den
        g_den = tl.where(guarded, 0.0, -g_u * num / (den * den))
        g_delta = tl.load(g_delta_ptr + rows, mask=row_ok, other=0.0)
        out = d_params_ptr + rows * 10
        tl.store(out + 0, g_den * g, mask=row_ok)
        tl.store(out + 1, g_delta * g, mask=row_ok)
        tl.store(out + 2, -g_delta * f - g_num * h - g_den * e, mask=row_ok)
        tl.store(out + 3, g_num * g, mask=row_ok)
        tl.store(out + 4, -g_den * c, mask=row_ok)
        tl.store(out + 5, -g_delta * c, mask=row_ok)
        tl.store(out + 6, g_delta * b + g_num * d + g_den * a, mask=row_ok)
        tl.store(out + 7, -g_num * c, mask=row_ok)
        tl.store(out + 8, 0.0 * g_u, mask=row_ok)  # i and j are not used by the map
        tl.store(out + 9, 0.0 * g_u, mask=row_ok)
