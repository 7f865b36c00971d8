"""Causal depthwise convolution over time with an optional SiLU: Mamba-1's short convolution.

Per batch b, position t and channel d, with a kernel of K taps (Hugging Face's MambaMixer:
``act(conv1d(x)[..., :T])`` with ``groups=D``, ``padding=K−1``):

    out[b, t, d] = act(bias[d] + Σ_{k=0}^{K−1} weight[d, k] · x[b, t − (K−1) + k, d])

with x = 0 before position 0 (or the K−1 inputs of ``initial_state``), act = SiLU or identity.

- :func:`causal_conv1d_reference` — plain PyTorch, tap by tap: obviously right, any device,
  differentiable, and the only path that takes an ``initial_state`` (a continuation).
- :func:`causal_conv1d` — the dispatch point the layers call: "auto" is the Triton kernels for
  CUDA tensors (forward and backward, wrapped as the custom ops ``phaselm::causal_conv1d_fwd``
  and ``phaselm::causal_conv1d_bwd`` so torch.compile keeps them opaque), else the reference.
- :func:`causal_conv1d_step` — one new position for cached decoding, updating Hugging Face's
  MambaCache conv state (B, D, K) in place (``phaselm::causal_conv1d_update``); no host
  synchronisation and no allocation but the output, so it can be captured in a CUDA graph.

The kernels load bf16/fp16/fp32/fp64, compute in float32 and write x's dtype (weight and bias
gradients in their own). On a machine without a GPU, ``TRITON_INTERPRET=1`` runs them in
Triton's interpreter (how the CPU tests check them). Their loops have compile-time bounds:
Triton 3.6's interpreter cannot loop over a runtime bound with NumPy ≥ 2.4
(triton-lang/triton#9171), so the grid covers time in blocks.

Shapes: x (B, T, D), its last dimension of stride 1 but any batch and time strides (the view
``xz[..., :D]`` of the in-projection needs no copy); weight (D, K); bias (D,); initial_state
(B, D, K−1); conv_state (B, D, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phaselm.ops.backend import Op, resolve, triton_on_cuda

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None


CAUSAL_CONV1D = Op("causal_conv1d", ("reference", "triton"), auto=triton_on_cuda)
CAUSAL_CONV1D_STEP = Op("causal_conv1d_step", ("reference", "triton"), auto=triton_on_cuda)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _act(pre: torch.Tensor, silu: bool) -> torch.Tensor:
    return F.silu(pre) if silu else pre


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[-1] or weight.shape[1] < 1:
        raise ValueError(f"weight must be (D, K) with D = {x.shape[-1]}, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias must be (D,) with D = {x.shape[-1]}, got shape {tuple(bias.shape)}")


def causal_conv1d_reference(x, weight, bias=None, silu: bool = True, initial_state=None):
    """x (B, T, D), weight (D, K), bias (D,) or None, initial_state (B, D, K−1) or None → (B, T, D).

    ``initial_state`` holds the K−1 inputs before position 0, oldest first (None: zeros).
    Computes in float32 (float64 for float64 x) and returns x's dtype.
    """
    _check(x, weight, bias)
    batch, length, channels = x.shape
    taps = weight.shape[1]
    dtype = _compute_dtype(x.dtype)
    if initial_state is None:
        before = x.new_zeros(batch, taps - 1, channels, dtype=dtype)
    else:
        if tuple(initial_state.shape) != (batch, channels, taps - 1):
            want = (batch, channels, taps - 1)
            raise ValueError(f"initial_state must be (B, D, K−1) = {want}, got {tuple(initial_state.shape)}")
        before = initial_state.to(dtype).transpose(1, 2)
    padded = torch.cat([before, x.to(dtype)], dim=1)  # (B, K−1+T, D): padded[:, s] is x[:, s − (K−1)]
    w = weight.to(dtype)
    pre = torch.zeros(batch, length, channels, dtype=dtype, device=x.device)
    for k in range(taps):
        pre = pre + w[:, k] * padded[:, k : k + length]
    if bias is not None:
        pre = pre + bias.to(dtype)
    return _act(pre, silu).to(x.dtype)


def causal_conv1d(x, weight, bias=None, silu: bool = True, backend: str = "auto"):
    """x (B, T, D), weight (D, K), bias (D,) or None → (B, T, D) in x's dtype.

    ``backend``: "auto" (the Triton kernels for CUDA tensors, else the reference; refined by
    ``PHASELM_BACKEND_CAUSAL_CONV1D``), "triton" (CUDA tensors, or any device under
    ``TRITON_INTERPRET=1``) or "reference". A continuation from earlier inputs
    (``initial_state``) is rare: call :func:`causal_conv1d_reference` for it.
    """
    _check(x, weight, bias)
    if resolve(CAUSAL_CONV1D, backend, x.device) == "triton":
        return torch.ops.phaselm.causal_conv1d_fwd(x, weight, bias, silu)
    return causal_conv1d_reference(x, weight, bias, silu)


def causal_conv1d_step_reference(x, conv_state, weight, bias=None, silu: bool = True):
    """One position: x (B, D), conv_state (B, D, K) updated in place → (B, D) in x's dtype.

    Hugging Face's ``causal_conv1d_update`` with a state of K inputs: the state shifts left by
    one, x enters at index K−1, and the output is act(bias + Σ_k weight[:, k] · state[:, :, k]).
    """
    _check_step(x, conv_state, weight, bias)
    dtype = _compute_dtype(x.dtype)
    conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1))
    pre = (conv_state.to(dtype) * weight.to(dtype)).sum(-1)
    if bias is not None:
        pre = pre + bias.to(dtype)
    return _act(pre, silu).to(x.dtype)


def causal_conv1d_step(x, conv_state, weight, bias=None, silu: bool = True, backend: str = "auto"):
    """One position of cached decoding: x (B, D), conv_state (B, D, K) (the last K inputs, oldest
    first; updated in place), weight (D, K), bias (D,) or None → (B, D) in x's dtype.

    ``backend`` as for :func:`causal_conv1d` (``PHASELM_BACKEND_CAUSAL_CONV1D_STEP`` refines
    "auto"). The Triton path synchronises nothing with the host and allocates only the output,
    so it can be captured in a CUDA graph.
    """
    _check_step(x, conv_state, weight, bias)
    if resolve(CAUSAL_CONV1D_STEP, backend, x.device) == "triton":
        return torch.ops.phaselm.causal_conv1d_update(x, conv_state, weight, bias, silu)
    return causal_conv1d_step_reference(x, conv_state, weight, bias, silu)


def _check_step(x, conv_state, weight, bias) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (B, D), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must be (D, K) with D = {x.shape[1]}, got shape {tuple(weight.shape)}")
    if tuple(conv_state.shape) != (x.shape[0], x.shape[1], weight.shape[1]):
        want = (x.shape[0], x.shape[1], weight.shape[1])
        raise ValueError(f"conv_state must be (B, D, K) = {want}, got {tuple(conv_state.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"bias must be (D,) with D = {x.shape[1]}, got shape {tuple(bias.shape)}")


# ----------------------------------------------------------------------------------------------
# Triton path: custom ops around the kernels.
#
# A program owns BLOCK_D channels of one batch row and walks BLOCK_T positions in order, one row
# of BLOCK_D channels at a time (a coalesced load: the channel axis is contiguous). Each thread
# holds its channels' last K inputs (and, backward, K pre-activation gradients) in registers, so
# a tap is a register and not a shifted reload, and the weight and bias gradients are running
# sums in registers, written once per program. Rows are loaded ROWS at a time before any is
# used, so each thread has several loads in flight. Measured on an H200 (B=8, T=2048, D=1536,
# K=4, an xz view; kernel time): forward 42 µs in bf16, 61 µs in fp32 (44 and 63 for (32, 128)
# tiles whose taps are tile loads shifted by k rows); backward 63 µs in bf16, 92 µs in fp32,
# against 226–264 µs for such tiles (the shifted gradient gathered in registers or reloaded from
# a buffer), which need several tiles live and cross-warp sums; and the sum of the partials,
# 9 µs.

BLOCK_T = 128  # positions a program walks (a power of two ≥ 8); each also re-reads the K−1 before its first
MAX_BLOCK_D = 256
CHANNELS_PER_THREAD = 4  # 16-byte loads of fp32, 8-byte of bf16; 4 × (ROWS + 2K) values a thread


def _launch(length: int, channels: int, dtype: torch.dtype) -> dict:
    block_d = min(MAX_BLOCK_D, max(16, triton.next_power_of_2(channels)))
    # Rows in flight: 8 two-byte rows fit in 128 registers; 8 fp32 rows took 247 and ran slower.
    rows = 8 if dtype.itemsize <= 2 else 4
    return {
        # A short sequence walks a power of two ≥ T (a few compiled variants), not BLOCK_T masked rows.
        "BLOCK_T": max(rows, min(BLOCK_T, triton.next_power_of_2(length))),
        "BLOCK_D": block_d,
        "ROWS": rows,
        "num_warps": max(1, min(8, block_d // (32 * CHANNELS_PER_THREAD))),
    }


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself where its last dimension has stride 1 (the kernels' coalesced axis), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("phaselm::causal_conv1d_fwd", mutates_args=())
def _causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
    """x (B, T, D) → (B, T, D) contiguous in x's dtype, through :func:`_conv_fwd_kernel`."""
    if triton is None:
        raise RuntimeError("causal_conv1d: the Triton kernels need Triton; use backend='reference'")
    x = _unit_stride(x)
    weight = weight.contiguous()
    batch, length, channels = x.shape
    out = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    launch = _launch(length, channels, x.dtype)
    grid = (triton.cdiv(length, launch["BLOCK_T"]), batch, triton.cdiv(channels, launch["BLOCK_D"]))
    _conv_fwd_kernel[grid](
        x, weight, weight if bias is None else bias.contiguous(), out,
        length, channels, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu, **launch,
    )  # fmt: skip
    return out


@_causal_conv1d_fwd.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("phaselm::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd(
    dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_causal_conv1d_fwd`: dout (B, T, D) → dx (B, T, D) in x's dtype,
    dweight (D, K) in weight's dtype and dbias (D,) in bias's dtype (weight's when bias is None,
    which the autograd formula then drops)."""
    if triton is None:
        raise RuntimeError("causal_conv1d: the Triton kernels need Triton; use backend='reference'")
    x, dout = _unit_stride(x), _unit_stride(dout)
    weight = weight.contiguous()
    batch, length, channels = x.shape
    taps = weight.shape[1]
    bias_dtype = weight.dtype if bias is None else bias.dtype
    dx = torch.empty((batch, length, channels), dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros(channels, dtype=bias_dtype, device=x.device)
    launch = _launch(length, channels, x.dtype)
    grid = (triton.cdiv(length, launch["BLOCK_T"]), batch, triton.cdiv(channels, launch["BLOCK_D"]))
    # One row of float32 partial sums per (time block, batch) program row, summed below: a fixed
    # order, so the weight and bias gradients are deterministic (no atomics).
    n_parts = grid[0] * grid[1]
    dweight_parts = torch.empty((n_parts, channels, taps), dtype=torch.float32, device=x.device)
    dbias_parts = torch.empty((n_parts, channels), dtype=torch.float32, device=x.device)
    _conv_bwd_kernel[grid](
        x, weight, weight if bias is None else bias.contiguous(), dout, dx, dweight_parts, dbias_parts,
        length, channels, x.stride(0), x.stride(1), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
        K=taps, HAS_BIAS=bias is not None, SILU=silu, **launch,
    )  # fmt: skip
    return dx, dweight_parts.sum(0).to(weight.dtype), dbias_parts.sum(0).to(bias_dtype)


@_causal_conv1d_bwd.register_fake
def _(dout, x, weight, bias, silu):
    bias_like = weight if bias is None else bias
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias_like.new_empty((x.shape[-1],))


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.phaselm.causal_conv1d_bwd(grad, x, weight, bias, ctx.silu)
    return dx, dweight, (dbias if bias is not None else None), None


_causal_conv1d_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("phaselm::causal_conv1d_update", mutates_args=("conv_state",))
def _causal_conv1d_update(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
) -> torch.Tensor:
    """x (B, D), conv_state (B, D, K) updated in place → (B, D) in x's dtype, through
    :func:`_conv_step_kernel`. Every tensor is passed with its strides: nothing is copied."""
    if triton is None:
        raise RuntimeError("causal_conv1d_step: the Triton kernel needs Triton; use backend='reference'")
    batch, channels = x.shape
    taps = weight.shape[1]
    out = torch.empty((batch, channels), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_d = min(128, max(16, triton.next_power_of_2(channels)))
    bias_arg = weight if bias is None else bias  # never read without a bias; no dummy to allocate
    _conv_step_kernel[(batch, triton.cdiv(channels, block_d))](
        x, conv_state, weight, bias_arg, out, channels,
        x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        weight.stride(0), weight.stride(1), bias_arg.stride(0),
        K=taps, K_TILE=triton.next_power_of_2(taps), HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=block_d,
        num_warps=4,
    )  # fmt: skip
    return out


@_causal_conv1d_update.register_fake
def _(x, conv_state, weight, bias, silu):
    return x.new_empty(x.shape)


if triton is not None:

    @triton.jit
    def _load_row(row_ptr, t, stride_t, d_ok, T):
        """Position t of one batch row as float32 (BLOCK_D,); 0 outside [0, T): the zero padding
        before the sequence, nothing after it."""
        return tl.load(row_ptr + t.to(tl.int64) * stride_t, mask=d_ok & (t >= 0) & (t < T), other=0.0).to(tl.float32)

    @triton.jit
    def _taps(w_ptr, b_ptr, d, d_ok, K: tl.constexpr, HAS_BIAS: tl.constexpr):
        """The K weight columns (a tuple of (BLOCK_D,) float32) and the bias (zeros without one)."""
        w = ()
        for k in tl.static_range(K):
            w = w + (tl.load(w_ptr + d * K + k, mask=d_ok, other=0.0).to(tl.float32),)
        if HAS_BIAS:
            bias = tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros(d.shape, dtype=tl.float32)
        return w, bias

    @triton.jit
    def _conv_at(x_win, w, bias, K: tl.constexpr):
        """bias + Σ_k w[k] · x_win[k], with x_win the K inputs ending at the position, oldest first."""
        pre = bias
        for k in tl.static_range(K):
            pre = pre + w[k] * x_win[k]
        return pre

    @triton.jit
    def _conv_fwd_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr,
        T, D, stride_xb, stride_xt, stride_ob, stride_ot,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
        ROWS: tl.constexpr,
    ):  # fmt: skip
        """out (B, T, D): program (time block, batch, channel block) walks positions t0 … t0 +
        BLOCK_T − 1 of BLOCK_D channels, with the last K inputs in registers."""
        pid_t, pid_b, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < D
        t0 = pid_t * BLOCK_T
        x_row = x_ptr + pid_b.to(tl.int64) * stride_xb + d
        out_row = out_ptr + pid_b.to(tl.int64) * stride_ob + d
        w, bias = _taps(w_ptr, b_ptr, d, d_ok, K, HAS_BIAS)
        x_win = ()  # x at t − (K−1) … t − 1
        for j in tl.static_range(K - 1):
            x_win = x_win + (_load_row(x_row, t0 - (K - 1) + j, stride_xt, d_ok, T),)
        for blk in range(BLOCK_T // ROWS):  # a constexpr bound: see the module docstring
            base = t0 + blk * ROWS
            xs = ()
            for j in tl.static_range(ROWS):
                xs = xs + (_load_row(x_row, base + j, stride_xt, d_ok, T),)
            for j in tl.static_range(ROWS):
                x_win = x_win + (xs[j],)
                y = _conv_at(x_win, w, bias, K)
                if SILU:
                    y = y * tl.sigmoid(y)
                t = base + j
                tl.store(out_row + t.to(tl.int64) * stride_ot, y.to(out_ptr.dtype.element_ty), mask=d_ok & (t < T))
                x_win = x_win[1:]

    @triton.jit
    def _conv_bwd_kernel(
        x_ptr, w_ptr, b_ptr, dout_ptr, dx_ptr, dw_parts_ptr, db_parts_ptr,
        T, D, stride_xb, stride_xt, stride_db, stride_dt, stride_dxb, stride_dxt,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
        ROWS: tl.constexpr,
    ):  # fmt: skip
        """dx (B, T, D) and partial weight and bias gradients. With g = dout · SiLU'(pre) the
        gradient of the pre-activation (pre recomputed from x, not saved by the forward):

            dx[s] = Σ_k w[k] · g[s + (K−1) − k],   dweight[k] = Σ_s x[s] · g[s + (K−1) − k],   dbias = Σ_s g[s]

        Program (time block, batch, channel block) owns s = t0 … t0 + BLOCK_T − 1. It walks
        i = t0 … t0 + BLOCK_T + K − 2, computing g[i] (K−1 positions past its block: the next
        program computes them too) with the last K inputs and K values of g in registers, and
        emits s = i − (K−1) once g reaches K−1 positions ahead of it. Its sums over its own s are
        one row (time block, batch) of dw_parts (rows, D, K) and db_parts (rows, D), which the
        caller sums (deterministic; no atomics).
        """
        pid_t, pid_b, pid_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < D
        t0 = pid_t * BLOCK_T
        x_row = x_ptr + pid_b.to(tl.int64) * stride_xb + d
        dout_row = dout_ptr + pid_b.to(tl.int64) * stride_db + d
        dx_row = dx_ptr + pid_b.to(tl.int64) * stride_dxb + d
        w, bias = _taps(w_ptr, b_ptr, d, d_ok, K, HAS_BIAS)
        zero = tl.zeros((BLOCK_D,), dtype=tl.float32)
        x_win = ()  # x at i − (K−1) … i − 1
        g_win = ()  # g at i − (K−1) … i − 1 (before t0: never read)
        for j in tl.static_range(K - 1):
            x_win = x_win + (_load_row(x_row, t0 - (K - 1) + j, stride_xt, d_ok, T),)
            g_win = g_win + (zero,)
        # The first K−1 positions only fill the windows: no s ≥ t0 is complete yet.
        for j in tl.static_range(K - 1):
            x_win, g_win = _bwd_position(x_row, dout_row, t0 + j, stride_xt, stride_dt, d_ok, T, x_win, g_win, w, bias, K, SILU)
            x_win = x_win[1:]
            g_win = g_win[1:]
        dw = ()
        for _ in tl.static_range(K):
            dw = dw + (zero,)
        db = zero
        for blk in range(BLOCK_T // ROWS):  # a constexpr bound: see the module docstring
            base = t0 + (K - 1) + blk * ROWS
            xs = ()
            gs = ()
            for j in tl.static_range(ROWS):
                xs = xs + (_load_row(x_row, base + j, stride_xt, d_ok, T),)
                gs = gs + (_load_row(dout_row, base + j, stride_dt, d_ok, T),)
            for j in tl.static_range(ROWS):
                x_win, g_win = _push(xs[j], gs[j], x_win, g_win, w, bias, K, SILU)
                # x_win, g_win now hold positions s … s + K − 1
                s = base + j - (K - 1)
                dx = zero
                new_dw = ()
                for k in tl.static_range(K):
                    dx = dx + w[k] * g_win[K - 1 - k]
                    new_dw = new_dw + (dw[k] + x_win[0] * g_win[K - 1 - k],)
                dw = new_dw
                db = db + g_win[0]
                tl.store(dx_row + s.to(tl.int64) * stride_dxt, dx.to(dx_ptr.dtype.element_ty), mask=d_ok & (s < T))
                x_win = x_win[1:]
                g_win = g_win[1:]
        part = (pid_t * tl.num_programs(1) + pid_b).to(tl.int64)
        for k in tl.static_range(K):
            tl.store(dw_parts_ptr + (part * D + d) * K + k, dw[k], mask=d_ok)
        tl.store(db_parts_ptr + part * D + d, db, mask=d_ok)

    @triton.jit
    def _push(x, dout, x_win, g_win, w, bias, K: tl.constexpr, SILU: tl.constexpr):
        """Append position i's input and pre-activation gradient to the windows (K each after)."""
        x_win = x_win + (x,)
        g = dout
        if SILU:
            pre = _conv_at(x_win, w, bias, K)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        return x_win, g_win + (g,)

    @triton.jit
    def _bwd_position(x_row, dout_row, i, stride_xt, stride_dt, d_ok, T, x_win, g_win, w, bias,
                      K: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
        x = _load_row(x_row, i, stride_xt, d_ok, T)
        dout = _load_row(dout_row, i, stride_dt, d_ok, T)
        return _push(x, dout, x_win, g_win, w, bias, K, SILU)

    @triton.jit
    def _conv_step_kernel(
        x_ptr, state_ptr, w_ptr, b_ptr, out_ptr, D,
        stride_xb, stride_xd, stride_sb, stride_sd, stride_sk, stride_wd, stride_wk, stride_bd,
        K: tl.constexpr, K_TILE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """One (batch, channel block) per program: shift its rows of the state (B, D, K) left by
        one, write x at index K−1, and out = act(bias + Σ_k w[:, k] · state[:, k])."""
        pid_b, pid_d = tl.program_id(0), tl.program_id(1)
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        k = tl.arange(0, K_TILE)  # K padded to a power of two, masked
        d_ok = d < D
        rows = state_ptr + pid_b.to(tl.int64) * stride_sb + d[:, None] * stride_sd
        shifted = tl.load(rows + (k[None, :] + 1) * stride_sk, mask=d_ok[:, None] & (k[None, :] + 1 < K), other=0.0)
        x = tl.load(x_ptr + pid_b.to(tl.int64) * stride_xb + d * stride_xd, mask=d_ok, other=0.0)
        # Through the state's dtype, as the reference stores it before the sum reads it back.
        new = tl.where(k[None, :] == K - 1, x.to(state_ptr.dtype.element_ty)[:, None], shifted)
        # Entries (d, k) and (d, k+1) may belong to different threads: every old entry must be
        # read before any is overwritten.
        tl.debug_barrier()
        tl.store(rows + k[None, :] * stride_sk, new, mask=d_ok[:, None] & (k[None, :] < K))
        w = tl.load(w_ptr + d[:, None] * stride_wd + k[None, :] * stride_wk, mask=d_ok[:, None] & (k[None, :] < K), other=0.0)
        pre = tl.sum(new.to(tl.float32) * w.to(tl.float32), axis=1)
        if HAS_BIAS:
            pre += tl.load(b_ptr + d * stride_bd, mask=d_ok, other=0.0).to(tl.float32)
        if SILU:
            pre = pre * tl.sigmoid(pre)
        tl.store(out_ptr + pid_b.to(tl.int64) * D + d, pre.to(out_ptr.dtype.element_ty), mask=d_ok)

