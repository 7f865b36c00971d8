"""Selective state-space scan with one decay per head (Mamba-2's "SSD" form), three ways.

Recurrence, per batch b, head h, channel p, state n:

    s_t = exp(a_t) · s_{t−1} + x_t · B_t        (a_t = Δ_t·A_h ≤ 0, x_t already scaled by Δ_t)
    y_t = s_t · C_t

- :func:`ssd_reference` runs it step by step: obviously right, O(T) sequential, and the
  single-step form generation uses (:func:`ssd_step`).
- :func:`ssd_chunked` computes the same thing in chunks with matrix products (the SSD
  algorithm of Dao & Gu 2024): quadratic inside a chunk, a short recurrence across chunks.
  Every exponent is a sum of non-positive terms, so nothing overflows.
- :func:`ssd_fused` is the chunked algorithm as one Triton kernel per direction (registered as
  the custom ops ``phaselm::ssd_fwd`` / ``ssd_bwd``, so torch.compile keeps them whole): one program
  per (batch, head) walks the chunks in order with the P × N state in registers, so none of
  the chunked path's (L × L) decay tensors or per-chunk states reach global memory except the
  state entering each chunk, which backward reads (it walks the chunks in reverse, carrying
  the gradient of the state).
- :func:`ssd` is the dispatch point the layers call, through :mod:`phaselm.ops.backend`. "auto"
  takes the chunked path: under ``torch.compile`` the fused kernel measured no faster
  (docs/benchmarks.md); ask for it with ``backend="triton"`` (or the older word "fused"), and
  refine "auto" with ``PHASELM_BACKEND_SSD``. On a machine without a GPU, ``TRITON_INTERPRET=1``
  runs the kernels in Triton's interpreter (how the CPU tests check them).

Shapes: x (B, T, H, P), a (B, T, H), b and c (B, T, H, N), state (B, H, P, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import Op, accepted, resolve, triton_runs_on

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

SSD = Op("ssd", ("reference", "chunked", "triton"), auto=lambda device: "chunked")
BACKENDS = accepted(SSD)


def ssd_step(state: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """One position: x (B, H, P), a (B, H), b/c (B, H, N), state (B, H, P, N) → (y, new state)."""
    state = torch.exp(a)[..., None, None] * state + x[..., :, None] * b[..., None, :]
    return torch.einsum("bhpn,bhn->bhp", state, c), state


def ssd_reference(x, a, b, c, initial_state=None):
    """Sequential scan; returns y (B, T, H, P) and the final state (B, H, P, N)."""
    batch, length, heads, p = x.shape
    state = initial_state if initial_state is not None else x.new_zeros(batch, heads, p, b.shape[-1])
    ys = []
    for t in range(length):
        y, state = ssd_step(state, x[:, t], a[:, t], b[:, t], c[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x (..., L) → (..., L, L) with out[i, j] = x[j+1] + … + x[i] for i ≥ j, −inf above the diagonal."""
    length = x.shape[-1]
    x = x[..., None].expand(*x.shape, length)  # x[..., k, j] = x_k
    below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~below, 0.0)
    out = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~keep, float("-inf"))


def ssd_chunked(x, a, b, c, initial_state=None, chunk_size: int = 64, matmul_dtype: torch.dtype | None = None):
    """Chunked parallel scan; same results as :func:`ssd_reference` (up to float rounding).

    x (B, T, H, P), a (B, T, H), b, c (B, T, H, N), initial state (B, H, P, N) or None →
    y (B, T, H, P) and the final state (B, H, P, N), both in x's dtype.

    Every product is a batched matmul over (batch, head, chunk), and nothing loops over chunks in
    Python (the recurrence across chunks is one (C+1) × (C+1) decay matrix), so torch.compile
    sees a fixed graph. The products C·Bᵀ, scores·X, Xᵀ·B and C·Sᵀ take ``matmul_dtype``
    (default: x's; bf16 reaches the tensor cores), while the decays, the states carried across
    chunks and the sums of the two parts of y stay in float32 (float64 for float64 inputs).
    """
    batch, length, heads, p = x.shape
    n = b.shape[-1]
    out_dtype = x.dtype
    exact = torch.float64 if x.dtype == torch.float64 else torch.float32
    product = matmul_dtype or x.dtype
    pad = (-length) % chunk_size
    if pad:
        # Zero input and zero log-decay (decay 1) past the end change neither y nor the state.
        x, b, c = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, b, c))
        a = F.pad(a, (0, 0, 0, pad))
    n_chunks = x.shape[1] // chunk_size

    def per_chunk(t):  # (B, T, H, K) → (B, H, C, L, K) in the product dtype
        return t.reshape(batch, n_chunks, chunk_size, heads, t.shape[-1]).permute(0, 3, 1, 2, 4).to(product)

    x, b, c = per_chunk(x), per_chunk(b), per_chunk(c)
    a = a.to(exact).reshape(batch, n_chunks, chunk_size, heads).permute(0, 3, 1, 2)  # (B, H, C, L)
    a_cum = torch.cumsum(a, dim=-1)

    # 1. within each chunk: y_t += Σ_{s≤t} C_t·B_s · exp(a_{s+1} + … + a_t) · x_s
    decay = torch.exp(_segsum(a))  # (B, H, C, L, L)
    scores = (c @ b.transpose(-1, -2)).to(exact) * decay
    y_diag = (scores.to(product) @ x).to(exact)  # (B, H, C, L, P)

    # 2. the state each chunk leaves behind, from its own inputs only: Σ_s to_end[s] x_s ⊗ B_s
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, C, L)
    chunk_states = (x.transpose(-1, -2) @ (b * to_end[..., None].to(product))).to(exact)  # (B, H, C, P, N)

    # 3. carry states across chunks (a short recurrence written as one decay matrix)
    if initial_state is None:
        initial_state = torch.zeros(batch, heads, p, n, device=x.device, dtype=exact)
    states = torch.cat([initial_state.to(exact)[:, :, None], chunk_states], dim=2)  # (B, H, C+1, P, N)
    chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (B, H, C+1, C+1)
    states = (chunk_decay @ states.reshape(batch, heads, n_chunks + 1, p * n)).reshape(states.shape)
    entering, final_state = states[:, :, :-1], states[:, :, -1]

    # 4. what the state entering each chunk contributes inside it: exp(a_cum[t]) · C_t·S
    y_off = (c @ entering.to(product).transpose(-1, -2)).to(exact) * torch.exp(a_cum)[..., None]
    y = (y_diag + y_off).permute(0, 2, 3, 1, 4).reshape(batch, n_chunks * chunk_size, heads, p)
    return y[:, :length].to(out_dtype), final_state.to(out_dtype)


def fused_supports(chunk_size: int) -> bool:
    """The kernel's chunk is one tile: a power of two, and at least 16 (tl.dot's smallest side)."""
    return chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0


def ssd(x, a, b, c, initial_state=None, backend: str = "auto", chunk_size: int = 64, matmul_dtype: torch.dtype | None = None):
    """SSD scan over a sequence → (y (B, T, H, P), final state (B, H, P, N)).

    ``backend``: "auto" ("chunked"; ``PHASELM_BACKEND_SSD`` refines it), "triton" (the fused
    kernels: CUDA tensors, or any device under ``TRITON_INTERPRET=1``; "fused" is the older
    word), "chunked" (:func:`ssd_chunked`, any device; ``chunk_size`` applies) or "reference"
    (:func:`ssd_reference`, sequential; for checks). ``matmul_dtype`` applies to the chunked path
    only (its products' dtype, e.g. bf16 under autocast); the others compute in float32 or x's dtype.
    """
    choice = resolve(SSD, backend, x.device)
    if choice == "triton":
        return ssd_fused(x, a, b, c, initial_state, chunk_size)
    if choice == "reference":
        return ssd_reference(x, a, b, c, initial_state)
    return ssd_chunked(x, a, b, c, initial_state, chunk_size, matmul_dtype)


def ssd_fused(x, a, b, c, initial_state=None, chunk_size: int = 64):
    """Same results as :func:`ssd_chunked` from the Triton kernels; computes in float32 whatever
    the inputs' dtype and returns y and the final state in x's dtype."""
    if triton is None:
        raise RuntimeError("the fused SSD kernel needs Triton; use backend='chunked'")
    if not triton_runs_on(x.device):
        raise RuntimeError("the fused SSD kernel needs CUDA tensors (or TRITON_INTERPRET=1); use backend='chunked'")
    if not fused_supports(chunk_size):
        raise ValueError(f"the fused SSD kernel needs chunk_size a power of two ≥ 16, got {chunk_size}")
    state = None if initial_state is None else initial_state.float()
    y, final_state, _ = torch.ops.phaselm.ssd_fwd(x.float(), a.float(), b.float(), c.float(), state, chunk_size)
    return y.to(x.dtype), final_state.to(x.dtype)


def _tile(size: int) -> int:
    """Tile side for a dimension of ``size``: a power of two (tl.arange), ≥ 16 (tl.dot); masked past ``size``."""
    return max(16, triton.next_power_of_2(size))


def _launch_options(tile_p: int, tile_n: int, chunk_size: int) -> dict:
    # Untuned: a program holds a dozen (L × P), (L × N), (P × N) and (L × L) float32 tiles in
    # registers; more warps spread the 64-wide ones over more threads.
    return {"num_warps": 8 if max(tile_p, tile_n, chunk_size) >= 64 else 4}


def _unused_pointer(like: torch.Tensor) -> torch.Tensor:
    """A kernel argument its constexpr flags never touch; a fresh tensor rather than one of the
    others, so torch.compile's analysis of what the kernel writes cannot mistake an alias."""
    return like.new_empty(1)


def _ssd_fwd_impl(x: Tensor, a: Tensor, b: Tensor, c: Tensor, initial_state: Tensor | None, chunk_size: int):
    x, a, b, c = (t.contiguous() for t in (x, a, b, c))
    batch, length, heads, p = x.shape
    n = b.shape[-1]
    n_chunks = triton.cdiv(length, chunk_size)
    has_initial = initial_state is not None
    initial = initial_state.contiguous() if has_initial else _unused_pointer(x)
    y = torch.empty_like(x)
    final_state = torch.empty(batch, heads, p, n, device=x.device, dtype=torch.float32)
    entering = torch.empty(batch, heads, n_chunks, p, n, device=x.device, dtype=torch.float32)
    tile_p, tile_n = _tile(p), _tile(n)
    # The chunk count is a compile-time constant because Triton 3.6's interpreter cannot
    # loop over a runtime bound with NumPy ≥ 2.4 (triton-lang/triton#9171); on a GPU that
    # costs one compilation per chunk count.
    _ssd_fwd[(batch * heads,)](
        x, a, b, c, initial, y, entering, final_state, length, heads, p, n,
        N_CHUNKS=n_chunks, HAS_INITIAL=has_initial, L=chunk_size, TILE_P=tile_p, TILE_N=tile_n,
        **_launch_options(tile_p, tile_n, chunk_size),
    )
    return y, final_state, entering


def _ssd_bwd_impl(x, a, b, c, entering, grad_y, grad_final, chunk_size: int, want_initial: bool):
    x, a, b, c = (t.contiguous() for t in (x, a, b, c))
    batch, length, heads, p = x.shape
    n = b.shape[-1]
    grad_y, grad_final = grad_y.float().contiguous(), grad_final.float().contiguous()
    dx, db, dc = torch.empty_like(x), torch.empty_like(b), torch.empty_like(c)
    da = torch.empty_like(a)
    d_initial = torch.empty_like(grad_final) if want_initial else _unused_pointer(x)
    tile_p, tile_n = _tile(p), _tile(n)
    _ssd_bwd[(batch * heads,)](
        x, a, b, c, entering, grad_y, grad_final, dx, da, db, dc, d_initial,
        length, heads, p, n,
        N_CHUNKS=entering.shape[2], STORE_D_INITIAL=want_initial, L=chunk_size, TILE_P=tile_p, TILE_N=tile_n,
        **_launch_options(tile_p, tile_n, chunk_size),
    )
    return dx, da, db, dc, (d_initial if want_initial else x.new_empty(0))


if triton is not None:
    # Registered as custom ops (as ops/selective_scan.py does) so torch.compile treats the
    # kernels as opaque calls with known output shapes: no graph break at the mixer.

    @torch.library.custom_op("phaselm::ssd_fwd", mutates_args=())
    def _ssd_fwd_op(
        x: Tensor, a: Tensor, b: Tensor, c: Tensor, initial_state: Tensor | None, chunk_size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """float32 x (B, T, H, P), a (B, T, H), b, c (B, T, H, N), initial state (B, H, P, N) or None
        → y (B, T, H, P), final state (B, H, P, N), state entering each chunk (B, H, chunks, P, N)."""
        return _ssd_fwd_impl(x, a, b, c, initial_state, chunk_size)

    @_ssd_fwd_op.register_fake
    def _(x, a, b, c, initial_state, chunk_size):
        batch, length, heads, p = x.shape
        n = b.shape[-1]
        n_chunks = (length + chunk_size - 1) // chunk_size
        f32 = dict(dtype=torch.float32)
        # The kernels make their inputs contiguous, so their outputs are contiguous whatever x's strides.
        return x.new_empty(x.shape), x.new_empty(batch, heads, p, n, **f32), x.new_empty(batch, heads, n_chunks, p, n, **f32)

    @torch.library.custom_op("phaselm::ssd_bwd", mutates_args=())
    def _ssd_bwd_op(
        x: Tensor, a: Tensor, b: Tensor, c: Tensor, entering: Tensor, grad_y: Tensor, grad_final: Tensor,
        chunk_size: int, want_initial: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """→ gradients of x, a, b, c and the initial state ((0,) when ``want_initial`` is False)."""
        return _ssd_bwd_impl(x, a, b, c, entering, grad_y, grad_final, chunk_size, want_initial)

    @_ssd_bwd_op.register_fake
    def _(x, a, b, c, entering, grad_y, grad_final, chunk_size, want_initial):
        d_initial = torch.empty_like(grad_final, dtype=torch.float32) if want_initial else x.new_empty(0)
        return x.new_empty(x.shape), a.new_empty(a.shape), b.new_empty(b.shape), c.new_empty(c.shape), d_initial

    def _ssd_setup(ctx, inputs, output):
        x, a, b, c, initial_state, chunk_size = inputs
        ctx.save_for_backward(x, a, b, c, output[2])
        ctx.chunk_size, ctx.has_initial = chunk_size, initial_state is not None

    def _ssd_backward(ctx, grad_y, grad_final, grad_entering):
        x, a, b, c, entering = ctx.saved_tensors
        batch, _, heads, p = x.shape
        if grad_y is None:  # an unused output
            grad_y = torch.zeros_like(x)
        if grad_final is None:
            grad_final = x.new_zeros(batch, heads, p, b.shape[-1], dtype=torch.float32)
        want_initial = ctx.has_initial and ctx.needs_input_grad[4]
        dx, da, db, dc, d_initial = torch.ops.phaselm.ssd_bwd(
            x, a, b, c, entering, grad_y, grad_final, ctx.chunk_size, want_initial
        )
        return dx, da, db, dc, (d_initial if want_initial else None), None

    _ssd_fwd_op.register_autograd(_ssd_backward, setup_context=_ssd_setup)


if triton is not None:

    @triton.jit
    def _load_rows(ptr, rows, row_ok, width, TILE: tl.constexpr):
        """(L, TILE) tile of a (…, width) tensor at the given flat row indices; zero where masked."""
        cols = tl.arange(0, TILE)
        mask = row_ok[:, None] & (cols[None, :] < width)
        return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0)

    @triton.jit
    def _store_rows(ptr, value, rows, row_ok, width, TILE: tl.constexpr):
        cols = tl.arange(0, TILE)
        mask = row_ok[:, None] & (cols[None, :] < width)
        tl.store(ptr + rows[:, None] * width + cols[None, :], value, mask=mask)

    @triton.jit
    def _state_tile(P, N, TILE_P: tl.constexpr, TILE_N: tl.constexpr):
        """Offsets and mask of a (P, N) state inside its (TILE_P, TILE_N) tile."""
        p = tl.arange(0, TILE_P)
        n = tl.arange(0, TILE_N)
        return p[:, None] * N + n[None, :], (p[:, None] < P) & (n[None, :] < N)

    @triton.jit
    def _chunk_rows(pid, chunk, T, H, L: tl.constexpr):
        """Flat (batch·T + t)·H + head row index of each position of ``chunk``, and which exist."""
        batch = pid // H
        head = pid % H
        t = chunk * L + tl.arange(0, L)
        return (batch * T + t) * H + head, t < T

    @triton.jit
    def _decays(a, L: tl.constexpr):
        """The decays of one chunk from its log decays ``a`` (L,), every exponent ≤ 0:

            decay[t, s] = exp(a_cum[t] − a_cum[s]) for s ≤ t, else 0   (a_cum[t] = a_0 + … + a_t)
            from_start[t] = exp(a_cum[t]),  to_end[s] = exp(a_last − a_cum[s]),  whole = exp(a_last)

        with a_last = a_cum[L − 1] (padding has a = 0: the last real position's). The cumulative
        sums are kept in float64: a_cum reaches hundreds under strong decay, and a float32
        difference of two of them would lose that many ulps of the (small) exponent.
        """
        idx = tl.arange(0, L)
        a_cum = tl.cumsum(a.to(tl.float64), axis=0)
        a_last = tl.sum(tl.where(idx == L - 1, a_cum, 0.0), axis=0)
        causal = idx[:, None] >= idx[None, :]
        decay = tl.exp(tl.where(causal, a_cum[:, None] - a_cum[None, :], float("-inf")).to(tl.float32))
        from_start = tl.exp(a_cum.to(tl.float32))
        to_end = tl.exp((a_last - a_cum).to(tl.float32))
        return decay, from_start, to_end, tl.exp(a_last.to(tl.float32))

    @triton.jit
    def _ssd_fwd(
        x_ptr, a_ptr, b_ptr, c_ptr, initial_ptr, y_ptr, entering_ptr, final_ptr,
        T, H, P, N,
        N_CHUNKS: tl.constexpr, HAS_INITIAL: tl.constexpr, L: tl.constexpr, TILE_P: tl.constexpr, TILE_N: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one (batch, head)
        state_offsets, state_mask = _state_tile(P, N, TILE_P, TILE_N)
        if HAS_INITIAL:
            state = tl.load(initial_ptr + pid * P * N + state_offsets, mask=state_mask, other=0.0)
        else:
            state = tl.zeros((TILE_P, TILE_N), dtype=tl.float32)
        for chunk in range(N_CHUNKS):
            rows, row_ok = _chunk_rows(pid, chunk, T, H, L)
            x = _load_rows(x_ptr, rows, row_ok, P, TILE_P)
            b = _load_rows(b_ptr, rows, row_ok, N, TILE_N)
            c = _load_rows(c_ptr, rows, row_ok, N, TILE_N)
            a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)  # zero log decay past T: state unchanged
            tl.store(entering_ptr + (pid * N_CHUNKS + chunk) * P * N + state_offsets, state, mask=state_mask)
            decay, from_start, to_end, whole = _decays(a, L)
            # y_t = Σ_{s≤t} (C_t·B_s) decay[t, s] x_s  +  from_start[t] S C_t
            scores = tl.dot(c, tl.trans(b), input_precision="ieee") * decay
            y = tl.dot(scores, x, input_precision="ieee")
            y += tl.dot(c, tl.trans(state), input_precision="ieee") * from_start[:, None]
            _store_rows(y_ptr, y, rows, row_ok, P, TILE_P)
            # S ← whole·S + Σ_s to_end[s] x_s ⊗ B_s
            state = state * whole + tl.dot(tl.trans(x), b * to_end[:, None], input_precision="ieee")
        tl.store(final_ptr + pid * P * N + state_offsets, state, mask=state_mask)

    @triton.jit
    def _ssd_bwd(
        x_ptr, a_ptr, b_ptr, c_ptr, entering_ptr, dy_ptr, d_final_ptr,
        dx_ptr, da_ptr, db_ptr, dc_ptr, d_initial_ptr,
        T, H, P, N,
        N_CHUNKS: tl.constexpr, STORE_D_INITIAL: tl.constexpr, L: tl.constexpr, TILE_P: tl.constexpr, TILE_N: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one (batch, head)
        state_offsets, state_mask = _state_tile(P, N, TILE_P, TILE_N)
        idx = tl.arange(0, L)
        # Gradient of the state leaving the current chunk; walking backwards, it starts as the
        # final state's and each chunk turns it into the gradient of the state entering it.
        d_state = tl.load(d_final_ptr + pid * P * N + state_offsets, mask=state_mask, other=0.0)
        for step in range(N_CHUNKS):
            chunk = N_CHUNKS - 1 - step
            rows, row_ok = _chunk_rows(pid, chunk, T, H, L)
            x = _load_rows(x_ptr, rows, row_ok, P, TILE_P)
            b = _load_rows(b_ptr, rows, row_ok, N, TILE_N)
            c = _load_rows(c_ptr, rows, row_ok, N, TILE_N)
            dy = _load_rows(dy_ptr, rows, row_ok, P, TILE_P)
            a = tl.load(a_ptr + rows, mask=row_ok, other=0.0)
            state = tl.load(entering_ptr + (pid * N_CHUNKS + chunk) * P * N + state_offsets, mask=state_mask, other=0.0)
            decay, from_start, to_end, whole = _decays(a, L)
            gram = tl.dot(c, tl.trans(b), input_precision="ieee")  # C_t·B_s
            scores = gram * decay

            # Through y = scores·X + from_start ∘ (C Sᵀ) and S_out = whole·S + Xᵀ (to_end ∘ B):
            d_out_b = tl.dot(b, tl.trans(d_state), input_precision="ieee")  # (dS_out B_s)_p
            dx = tl.dot(tl.trans(scores), dy, input_precision="ieee") + to_end[:, None] * d_out_b
            d_gram = tl.dot(dy, tl.trans(x), input_precision="ieee") * decay
            dc = tl.dot(d_gram, b, input_precision="ieee")
            dc += tl.dot(dy, state, input_precision="ieee") * from_start[:, None]
            db = tl.dot(tl.trans(d_gram), c, input_precision="ieee")
            db += tl.dot(x, d_state, input_precision="ieee") * to_end[:, None]

            # Gradient of a_cum: every exponent is a difference of a_cum entries.
            pair = d_gram * gram  # ∂L/∂(a_cum[t] − a_cum[s]) for the pair (t, s)
            y_from_state = tl.dot(c, tl.trans(state), input_precision="ieee") * from_start[:, None]
            to_end_grad = to_end * tl.sum(x * d_out_b, axis=1)  # ∂L/∂(a_last − a_cum[s])
            d_a_cum = tl.sum(pair, axis=1) - tl.sum(pair, axis=0) + tl.sum(dy * y_from_state, axis=1) - to_end_grad
            d_last = whole * tl.sum(tl.sum(d_state * state, axis=1), axis=0) + tl.sum(to_end_grad, axis=0)
            d_a_cum += tl.where(idx == L - 1, d_last, 0.0)
            da = tl.cumsum(d_a_cum, axis=0, reverse=True)  # a_cum[t] = Σ_{j≤t} a_j

            _store_rows(dx_ptr, dx, rows, row_ok, P, TILE_P)
            _store_rows(db_ptr, db, rows, row_ok, N, TILE_N)
            _store_rows(dc_ptr, dc, rows, row_ok, N, TILE_N)
            tl.store(da_ptr + rows, da, mask=row_ok)
            d_state = d_state * whole + tl.dot(tl.trans(dy * from_start[:, None]), c, input_precision="ieee")
        if STORE_D_INITIAL:
            tl.store(d_initial_ptr + pid * P * N + state_offsets, d_state, mask=state_mask)
