"""RMSNorm of a Mamba block's input, as Hugging Face computes it, in one kernel (inference only).

transformers' ``MambaBlock`` normalises its input with

    x̂ = x.to(w.dtype) → float32;   y = w · (x̂ / sqrt(mean(x̂²) + ε)).to(w.dtype)

which is eight small kernels (casts, square, mean, rsqrt, products). Where no gradient is
needed — prefill, cached decoding, and the frozen layers below a grafted core — they are a
large share of a decoding step's launches; :func:`rms_norm_triton` does the same arithmetic,
with the same roundings, in one pass over each row. There is no backward: where a gradient
flows, the block keeps transformers' own norm.

Shapes: x (..., H) of any float dtype; weight (H,); the result has weight's dtype.
"""

from __future__ import annotations

import torch

from .backend import Op, resolve, triton_on_cuda

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

RMS_NORM = Op("rms_norm", ("reference", "triton"), auto=triton_on_cuda)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``MambaRMSNorm(x.to(weight.dtype))``, step by step."""
    xf = x.to(weight.dtype).float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(weight.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """RMSNorm of x (..., H) with weight (H,); no gradient through the Triton path."""
    if resolve(RMS_NORM, backend, x.device) == "triton":
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., H) with weight (H,) by the Triton kernel, in weight's dtype; inference only."""
    if triton is None:
        raise RuntimeError("the Triton RMSNorm needs Triton; use backend='reference'")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        raise RuntimeError("the Triton RMSNorm has no backward; use the reference where a gradient flows")
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, device=x.device, dtype=weight.dtype)
    hidden = rows.shape[1]
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, weight, out, hidden, rows.stride(0), eps, BLOCK=block, num_warps=4 if block <= 2048 else 8
    )
    return out.reshape(x.shape)


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, H, stride, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < H
        w = tl.load(w_ptr + cols, mask=ok, other=0.0)
        # The input first takes the weight's dtype (the block casts before the norm), then float32.
        x = tl.load(x_ptr + row * stride + cols, mask=ok, other=0.0).to(w.dtype).to(tl.float32)
        y = (x * tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)).to(w.dtype)
        # w·y in float32, rounded once: what torch does for a product of two bf16 tensors.
        tl.store(out_ptr + row * H + cols, (w.to(tl.float32) * y.to(tl.float32)).to(w.dtype), mask=ok)
