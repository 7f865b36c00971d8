"""Kuramoto harmonics Z_n = mean_j e^{i n θ_j}, n = 1..H — a plain reference and a fused kernel.

The K-SSM bank reads every position's phases out through H = 32 harmonics of N = 192
oscillators. Written directly (:func:`harmonics_reference`) that materialises an
(positions, N, H) angle tensor and its cos and sin — at the seed's training shape 64 × 256
positions that is three 400 MB tensors per layer, kept for backward — which made the bank
the largest cost of a K-SSM step.

:func:`harmonics_fused` computes the same sums in one Triton kernel per direction, holding
one row of phases in registers and stepping through the harmonics by the angle-addition
recurrence e^{i(n+1)θ} = e^{inθ}·e^{iθ} (four multiply-adds per harmonic instead of a cos and
a sin). Nothing of size N·H is stored; backward recomputes the same recurrence:

    ∂L/∂θ_j = (1/N) Σ_n n·(cos(nθ_j)·∂L/∂Im Z_n − sin(nθ_j)·∂L/∂Re Z_n).

The recurrence loses about one float32 ulp per harmonic; at H = 32 the results differ from
the direct form by ~1e-6 (tests/ops/test_harmonics.py bounds it).

:func:`harmonics` picks the kernel for CUDA tensors when Triton is importable, the reference
otherwise (through :mod:`phaselm.ops.backend`; ``PHASELM_BACKEND_HARMONICS`` refines "auto"). On a machine without a GPU, ``TRITON_INTERPRET=1`` runs the kernel in
Triton's interpreter, which is how the CPU tests compare the two.
"""

from __future__ import annotations

import torch

from .backend import Op, accepted, resolve, triton_on_cuda

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

HARMONICS = Op("harmonics", ("reference", "triton"), auto=triton_on_cuda)
BACKENDS = accepted(HARMONICS)


def harmonics_reference(theta: torch.Tensor, n_harmonics: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Re Z_n, Im Z_n), each ``(..., H)``, by evaluating cos(nθ) and sin(nθ) directly."""
    n = torch.arange(1, n_harmonics + 1, device=theta.device, dtype=torch.float32)
    angles = theta.float().unsqueeze(-1) * n  # (..., N, H)
    return torch.cos(angles).mean(-2), torch.sin(angles).mean(-2)


def harmonics(theta: torch.Tensor, n_harmonics: int, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Z_n for n = 1..H as (Re, Im), each ``(..., H)``; ``backend`` is "auto", "triton" ("fused",
    the older word) or "reference"."""
    if resolve(HARMONICS, backend, theta.device) == "triton":
        return harmonics_fused(theta, n_harmonics)
    return harmonics_reference(theta, n_harmonics)


def harmonics_fused(theta: torch.Tensor, n_harmonics: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Re Z_n, Im Z_n), each ``(..., H)``, from phases θ ``(..., N)`` by the Triton kernel (differentiable)."""
    if triton is None:
        raise RuntimeError("the fused harmonics kernel needs Triton; use backend='reference'")
    return _FusedHarmonics.apply(theta.float(), n_harmonics)


def _blocks(n_oscillators: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(n_oscillators)
    block_m = max(1, min(64, 4096 // block_n))  # keep a tile around 4K values (registers)
    return block_m, block_n


class _FusedHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta: torch.Tensor, n_harmonics: int):
        shape = theta.shape
        rows = theta.reshape(-1, shape[-1]).contiguous()
        m, n = rows.shape
        re = torch.empty(m, n_harmonics, device=theta.device, dtype=torch.float32)
        im = torch.empty_like(re)
        block_m, block_n = _blocks(n)
        _harmonics_fwd[(triton.cdiv(m, block_m),)](rows, re, im, m, n, H=n_harmonics, BLOCK_M=block_m, BLOCK_N=block_n)
        ctx.save_for_backward(rows)
        ctx.shape, ctx.n_harmonics = shape, n_harmonics
        out_shape = (*shape[:-1], n_harmonics)
        return re.reshape(out_shape), im.reshape(out_shape)

    @staticmethod
    def backward(ctx, grad_re: torch.Tensor, grad_im: torch.Tensor):
        (rows,) = ctx.saved_tensors
        m, n = rows.shape
        h = ctx.n_harmonics
        grad_re = torch.zeros(m, h, device=rows.device) if grad_re is None else grad_re.reshape(m, h).float().contiguous()
        grad_im = torch.zeros(m, h, device=rows.device) if grad_im is None else grad_im.reshape(m, h).float().contiguous()
        grad = torch.empty_like(rows)
        block_m, block_n = _blocks(n)
        _harmonics_bwd[(triton.cdiv(m, block_m),)](rows, grad_re, grad_im, grad, m, n, H=h, BLOCK_M=block_m, BLOCK_N=block_n)
        return grad.reshape(ctx.shape), None


if triton is not None:

    @triton.jit
    def _harmonics_fwd(theta_ptr, re_ptr, im_ptr, M, N, H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < M
        mask = row_ok[:, None] & (cols[None, :] < N)
        theta = tl.load(theta_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
        c1 = tl.where(mask, tl.cos(theta), 0.0)  # padded columns contribute nothing to any sum
        s1 = tl.where(mask, tl.sin(theta), 0.0)
        c = c1
        s = s1
        inv_n = 1.0 / N
        for k in range(H):
            tl.store(re_ptr + rows * H + k, tl.sum(c, axis=1) * inv_n, mask=row_ok)
            tl.store(im_ptr + rows * H + k, tl.sum(s, axis=1) * inv_n, mask=row_ok)
            c, s = c * c1 - s * s1, s * c1 + c * s1

    @triton.jit
    def _harmonics_bwd(theta_ptr, gre_ptr, gim_ptr, grad_ptr, M, N, H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < M
        mask = row_ok[:, None] & (cols[None, :] < N)
        offsets = rows[:, None] * N + cols[None, :]
        theta = tl.load(theta_ptr + offsets, mask=mask, other=0.0)
        c1 = tl.cos(theta)
        s1 = tl.sin(theta)
        c = c1
        s = s1
        grad = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(H):
            g_re = tl.load(gre_ptr + rows * H + k, mask=row_ok, other=0.0)
            g_im = tl.load(gim_ptr + rows * H + k, mask=row_ok, other=0.0)
            grad += (k + 1.0) * (c * g_im[:, None] - s * g_re[:, None])
            c, s = c * c1 - s * s1, s * c1 + c * s1
        tl.store(grad_ptr + offsets, grad / N, mask=mask)
