"""RWKV-6 recurrence as our own Triton kernels: chunked forward and backward.

The math is :mod:`phaselm.ops.rwkv6`'s (per batch b, head h, state S of K × V):

    y_t = r_t · (S_{t−1} + diag(u) · k_tᵀ v_t),      S_t = diag(exp(w_t)) · S_{t−1} + k_tᵀ v_t    (w_t ≤ 0)

One program per (batch, head) walks the sequence in chunks of ``L`` = 16 positions with the
state in float32 registers (the design of ops/ssd.py's fused kernel; fla's ``chunk_rwkv6`` splits
the same work over several kernels). Inside a chunk, with c_t = w_1 + … + w_t (inclusive) and
e_t = c_t − w_t (exclusive) per key channel:

    y_t  = (r_t ∘ exp(e_t)) S                                 tl.dot (L × K)(K × V)
         + Σ_{s<t} A_ts v_s,  A_ts = Σ_k r_tk k_sk exp(e_tk − c_sk)     tl.dot (L × L)(L × V)
         + (r_t · (u ∘ k_t)) v_t
    S   ← exp(c_L) ∘ S + (k ∘ exp(c_L − c))ᵀ V                 tl.dot (K × L)(L × V)

Every exponent is a difference of running sums of non-positive log decays taken in the right
order, so it is ≤ 0 however fast the decay: nothing is divided by a cumulative decay. The pair
scores A are formed one column s at a time with their own exact exponents (fla does the same on
its diagonal sub-blocks); splitting exp(e_t − c_s) into exp(e_t − c_ref)·exp(c_ref − c_s) for
one tensor-core product would overflow float32 once the decay inside a chunk passes e^88.

Backward walks the chunks in reverse from the saved entering states, carrying the gradient of
the state, and gets the decays' gradient from the identity that each exponent is a difference
of cumulative sums: dw_j = Σ_{t>j} ∂/∂e_t + Σ_{t≥j} ∂/∂c_t + ∂/∂c_L (reverse cumulative sums).

The tiles depend on the head size only (no autotuning, nothing keyed on the sequence length);
the chunk count is a runtime argument on the GPU, so a new length does not compile anything.
Layout: r, k, w (B, T, H, K); v (B, T, H, V); u (H, K); states (B, H, K, V) float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import interpreting

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

CHUNK = 16  # positions per chunk: the smallest tl.dot side; the exact pair loop costs L·K exps per position


def rwkv6_triton(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: Tensor | None = None):
    """RWKV-6 over a sequence from the Triton kernels → (y (B, T, H, V) in v's dtype, final state (B, H, K, V) float32).

    r, k, w (B, T, H, K), v (B, T, H, V), u (H, K), initial_state (B, H, K, V) or None. Inputs may
    be float32 or bf16/fp16 (loaded as float32; products in TF32 for half inputs, IEEE float32
    otherwise); the state and every accumulation are float32. Gradients flow to all six inputs.
    """
    if triton is None:
        raise RuntimeError("rwkv6 backend 'triton' needs Triton; use backend='chunked'")
    r, k, v, w = (t.contiguous() for t in (r, k, v, w))
    initial = None if initial_state is None else initial_state.float().contiguous()
    y, final, _ = torch.ops.phaselm.rwkv6_fwd(r, k, v, w, u.float().contiguous(), initial)
    return y, final


def _tile(size: int) -> int:
    """Tile side for a head dimension: a power of two (tl.arange), ≥ 16 (tl.dot); masked past ``size``."""
    return max(16, triton.next_power_of_2(size))


def _launch(key_dim: int, value_dim: int, dtype: torch.dtype, length: int) -> dict:
    """Compile-time options from the head size and dtype only (the fixed table the issue asks for)."""
    tile_k, tile_v = _tile(key_dim), _tile(value_dim)
    n_chunks = triton.cdiv(length, CHUNK)
    return {
        # Triton 3.6's interpreter cannot loop to a runtime bound with NumPy ≥ 2.4
        # (triton-lang/triton#9171): there, and only there, the chunk count is a constant.
        "STATIC_CHUNKS": n_chunks if interpreting() else 0,
        "L": CHUNK, "TK": tile_k, "TV": tile_v,
        "PRECISION": "tf32" if dtype in (torch.bfloat16, torch.float16) else "ieee",
        "num_warps": 8 if max(tile_k, tile_v) >= 64 else 4,
    }


def _unused_pointer(like: Tensor) -> Tensor:
    """A kernel argument its constexpr flags never touch (a fresh tensor: no alias for torch.compile to see)."""
    return like.new_empty(1, dtype=torch.float32)


if triton is not None:

    @torch.library.custom_op("phaselm::rwkv6_fwd", mutates_args=())
    def _rwkv6_fwd_op(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """→ y (B, T, H, V), final state (B, H, K, V) float32, state entering each chunk (B, H, chunks, K, V) float32."""
        batch, length, heads, key_dim = r.shape
        value_dim = v.shape[-1]
        n_chunks = triton.cdiv(length, CHUNK)
        f32 = {"device": r.device, "dtype": torch.float32}
        y = torch.empty(batch, length, heads, value_dim, device=r.device, dtype=v.dtype)
        final = torch.empty(batch, heads, key_dim, value_dim, **f32)
        entering = torch.empty(batch, heads, n_chunks, key_dim, value_dim, **f32)
        has_initial = initial_state is not None
        _rwkv6_fwd_kernel[(batch * heads,)](
            r, k, v, w, u, initial_state if has_initial else _unused_pointer(r), y, entering, final,
            length, heads, key_dim, value_dim, n_chunks,
            HAS_INITIAL=has_initial, **_launch(key_dim, value_dim, r.dtype, length),
        )
        return y, final, entering

    @_rwkv6_fwd_op.register_fake
    def _(r, k, v, w, u, initial_state):
        batch, length, heads, key_dim = r.shape
        value_dim = v.shape[-1]
        n_chunks = (length + CHUNK - 1) // CHUNK
        return (
            v.new_empty(batch, length, heads, value_dim),
            r.new_empty(batch, heads, key_dim, value_dim, dtype=torch.float32),
            r.new_empty(batch, heads, n_chunks, key_dim, value_dim, dtype=torch.float32),
        )

    @torch.library.custom_op("phaselm::rwkv6_bwd", mutates_args=())
    def _rwkv6_bwd_op(
        r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, entering: Tensor, d_y: Tensor, d_final: Tensor, want_initial: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """→ gradients of r, k, v, w, u (float32) and the initial state (float32; empty unless ``want_initial``)."""
        batch, length, heads, key_dim = r.shape
        value_dim = v.shape[-1]
        dr, dk, dv, dw = (torch.empty_like(t) for t in (r, k, v, w))
        # u's gradient comes back per (batch, head) program and is added up here: no atomics.
        du_parts = torch.empty(batch, heads, key_dim, device=r.device, dtype=torch.float32)
        d_initial = torch.empty(batch, heads, key_dim, value_dim, device=r.device, dtype=torch.float32) if want_initial else _unused_pointer(r)
        _rwkv6_bwd_kernel[(batch * heads,)](
            r, k, v, w, u, entering, d_y.contiguous(), d_final.contiguous(), dr, dk, dv, dw, du_parts, d_initial,
            length, heads, key_dim, value_dim, entering.shape[2],
            STORE_D_INITIAL=want_initial, **_launch(key_dim, value_dim, r.dtype, length),
        )
        return dr, dk, dv, dw, du_parts.sum(0), d_initial if want_initial else r.new_empty(0, dtype=torch.float32)

    @_rwkv6_bwd_op.register_fake
    def _(r, k, v, w, u, entering, d_y, d_final, want_initial):
        batch, _, heads, key_dim = r.shape
        value_dim = v.shape[-1]
        d_initial = r.new_empty(batch, heads, key_dim, value_dim, dtype=torch.float32) if want_initial else r.new_empty(0, dtype=torch.float32)
        return torch.empty_like(r), torch.empty_like(k), torch.empty_like(v), torch.empty_like(w), u.new_empty(u.shape), d_initial

    def _rwkv6_setup(ctx, inputs, output):
        r, k, v, w, u, initial_state = inputs
        ctx.save_for_backward(r, k, v, w, u, output[2])
        ctx.has_initial = initial_state is not None

    def _rwkv6_backward(ctx, d_y, d_final, d_entering):
        r, k, v, w, u, entering = ctx.saved_tensors
        batch, _, heads, key_dim = r.shape
        if d_final is None:  # an unused output
            d_final = r.new_zeros(batch, heads, key_dim, v.shape[-1], dtype=torch.float32)
        if d_y is None:
            d_y = torch.zeros_like(v)
        want_initial = ctx.has_initial and ctx.needs_input_grad[5]
        dr, dk, dv, dw, du, d_initial = torch.ops.phaselm.rwkv6_bwd(r, k, v, w, u, entering, d_y, d_final.float(), want_initial)
        return dr, dk, dv, dw, du, d_initial if want_initial else None

    _rwkv6_fwd_op.register_autograd(_rwkv6_backward, setup_context=_rwkv6_setup)

    @triton.jit
    def _load_rows(ptr, rows, row_ok, width, TILE: tl.constexpr):
        """(L, TILE) float32 tile of a (…, width) tensor at the given flat row indices; zero where masked."""
        cols = tl.arange(0, TILE)
        mask = row_ok[:, None] & (cols[None, :] < width)
        return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _store_rows(ptr, value, rows, row_ok, width, TILE: tl.constexpr):
        cols = tl.arange(0, TILE)
        mask = row_ok[:, None] & (cols[None, :] < width)
        tl.store(ptr + rows[:, None] * width + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _state_tile(K, V, TK: tl.constexpr, TV: tl.constexpr):
        """Offsets and mask of a (K, V) state inside its (TK, TV) tile."""
        i = tl.arange(0, TK)
        j = tl.arange(0, TV)
        return i[:, None] * V + j[None, :], (i[:, None] < K) & (j[None, :] < V)

    @triton.jit
    def _chunk_rows(pid, chunk, T, H, L: tl.constexpr):
        """Flat (batch·T + t)·H + head row index of each position of ``chunk``, and which exist."""
        t = chunk * L + tl.arange(0, L)
        return ((pid // H) * T + t) * H + pid % H, t < T

    @triton.jit
    def _row(tile, idx, s):
        """Row ``s`` of an (L, ·) register tile, as a vector."""
        return tl.sum(tl.where(idx[:, None] == s, tile, 0.0), axis=0)

    @triton.jit
    def _cumulative_decays(w, idx, L: tl.constexpr):
        """Inclusive c, exclusive e = c − w (L, TK) and the chunk's total c_L (TK,), in float32.
        Padding past T has w = 0, so c_L is the last real position's."""
        inclusive = tl.cumsum(w, axis=0)
        return inclusive, inclusive - w, _row(inclusive, idx, L - 1)

    @triton.jit
    def _rwkv6_fwd_kernel(
        r_ptr, k_ptr, v_ptr, w_ptr, u_ptr, initial_ptr, y_ptr, entering_ptr, final_ptr,
        T, H, K, V, n_chunks,
        STATIC_CHUNKS: tl.constexpr, HAS_INITIAL: tl.constexpr, L: tl.constexpr, TK: tl.constexpr, TV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one (batch, head)
        idx = tl.arange(0, L)
        key = tl.arange(0, TK)
        u = tl.load(u_ptr + (pid % H) * K + key, mask=key < K, other=0.0)
        state_offsets, state_mask = _state_tile(K, V, TK, TV)
        if HAS_INITIAL:
            state = tl.load(initial_ptr + pid * K * V + state_offsets, mask=state_mask, other=0.0)
        else:
            state = tl.zeros((TK, TV), dtype=tl.float32)
        for chunk in range(STATIC_CHUNKS if STATIC_CHUNKS > 0 else n_chunks):  # see _launch
            rows, row_ok = _chunk_rows(pid, chunk, T, H, L)
            r = _load_rows(r_ptr, rows, row_ok, K, TK)
            k = _load_rows(k_ptr, rows, row_ok, K, TK)
            v = _load_rows(v_ptr, rows, row_ok, V, TV)
            w = _load_rows(w_ptr, rows, row_ok, K, TK)  # zero log decay past T: state unchanged
            tl.store(entering_ptr + (pid * n_chunks + chunk) * K * V + state_offsets, state, mask=state_mask)
            inclusive, exclusive, total = _cumulative_decays(w, idx, L)

            scores = tl.zeros((L, L), dtype=tl.float32)  # A_ts for s < t
            for s in range(L):
                decay = tl.exp(tl.where(idx[:, None] > s, exclusive - _row(inclusive, idx, s)[None, :], float("-inf")))
                column = tl.sum(r * _row(k, idx, s)[None, :] * decay, axis=1)
                scores += tl.where(idx[None, :] == s, column[:, None], 0.0)

            y = tl.dot(scores, v, input_precision=PRECISION)
            y += tl.sum(r * u[None, :] * k, axis=1)[:, None] * v
            y += tl.dot(r * tl.exp(exclusive), state, input_precision=PRECISION)
            _store_rows(y_ptr, y, rows, row_ok, V, TV)
            to_end = k * tl.exp(total[None, :] - inclusive)
            state = tl.exp(total)[:, None] * state + tl.dot(tl.trans(to_end), v, input_precision=PRECISION)
        tl.store(final_ptr + pid * K * V + state_offsets, state, mask=state_mask)

    @triton.jit
    def _rwkv6_bwd_kernel(
        r_ptr, k_ptr, v_ptr, w_ptr, u_ptr, entering_ptr, dy_ptr, d_final_ptr,
        dr_ptr, dk_ptr, dv_ptr, dw_ptr, du_ptr, d_initial_ptr,
        T, H, K, V, n_chunks,
        STATIC_CHUNKS: tl.constexpr, STORE_D_INITIAL: tl.constexpr, L: tl.constexpr, TK: tl.constexpr, TV: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)  # one (batch, head)
        idx = tl.arange(0, L)
        key = tl.arange(0, TK)
        u = tl.load(u_ptr + (pid % H) * K + key, mask=key < K, other=0.0)
        state_offsets, state_mask = _state_tile(K, V, TK, TV)
        # Gradient of the state leaving the current chunk: the final state's, then, chunk by
        # chunk backwards, the state's entering each.
        d_state = tl.load(d_final_ptr + pid * K * V + state_offsets, mask=state_mask, other=0.0)
        du = tl.zeros((TK,), dtype=tl.float32)
        for step in range(STATIC_CHUNKS if STATIC_CHUNKS > 0 else n_chunks):  # see _launch
            chunk = n_chunks - 1 - step
            rows, row_ok = _chunk_rows(pid, chunk, T, H, L)
            r = _load_rows(r_ptr, rows, row_ok, K, TK)
            k = _load_rows(k_ptr, rows, row_ok, K, TK)
            v = _load_rows(v_ptr, rows, row_ok, V, TV)
            w = _load_rows(w_ptr, rows, row_ok, K, TK)
            dy = _load_rows(dy_ptr, rows, row_ok, V, TV)
            state = tl.load(entering_ptr + (pid * n_chunks + chunk) * K * V + state_offsets, mask=state_mask, other=0.0)
            inclusive, exclusive, total = _cumulative_decays(w, idx, L)

            d_scores = tl.where(idx[:, None] > idx[None, :], tl.dot(dy, tl.trans(v), input_precision=PRECISION), 0.0)
            d_bonus = tl.sum(dy * v, axis=1)  # ∂/∂(r_t · (u ∘ k_t))
            # The pair scores again, and the gradients that flow through them to r and k.
            scores = tl.zeros((L, L), dtype=tl.float32)
            dr_pairs = tl.zeros((L, TK), dtype=tl.float32)
            dk_pairs = tl.zeros((L, TK), dtype=tl.float32)
            for s in range(L):
                decay = tl.exp(tl.where(idx[:, None] > s, exclusive - _row(inclusive, idx, s)[None, :], float("-inf")))
                k_s = _row(k, idx, s)
                column = tl.sum(r * k_s[None, :] * decay, axis=1)
                scores += tl.where(idx[None, :] == s, column[:, None], 0.0)
                d_column = tl.sum(tl.where(idx[None, :] == s, d_scores, 0.0), axis=1)  # ∂/∂A_ts, every t
                dr_pairs += d_column[:, None] * k_s[None, :] * decay
                dk_s = tl.sum(d_column[:, None] * r * decay, axis=0)
                dk_pairs += tl.where(idx[:, None] == s, dk_s[None, :], 0.0)

            from_start = tl.exp(exclusive)
            to_end = tl.exp(total[None, :] - inclusive)
            dr_state = from_start * tl.dot(dy, tl.trans(state), input_precision=PRECISION)  # through (r ∘ exp(e)) S
            dk_state = to_end * tl.dot(v, tl.trans(d_state), input_precision=PRECISION)  # through the state left behind
            bonus = tl.sum(r * u[None, :] * k, axis=1)
            dv = tl.dot(tl.trans(scores), dy, input_precision=PRECISION) + bonus[:, None] * dy
            dv += tl.dot(k * to_end, d_state, input_precision=PRECISION)
            dr = dr_state + dr_pairs + d_bonus[:, None] * u[None, :] * k
            dk = dk_state + dk_pairs + d_bonus[:, None] * u[None, :] * r
            du += tl.sum(d_bonus[:, None] * r * k, axis=0)

            # Log decays: ∂/∂e_t, ∂/∂c_t and ∂/∂c_L, then w_j's share of each running sum.
            d_exclusive = r * (dr_state + dr_pairs)
            d_inclusive = -k * (dk_state + dk_pairs)
            d_total = tl.exp(total) * tl.sum(state * d_state, axis=1) + tl.sum(k * dk_state, axis=0)
            dw = tl.cumsum(d_inclusive + d_exclusive, axis=0, reverse=True) - d_exclusive + d_total[None, :]

            _store_rows(dr_ptr, dr, rows, row_ok, K, TK)
            _store_rows(dk_ptr, dk, rows, row_ok, K, TK)
            _store_rows(dv_ptr, dv, rows, row_ok, V, TV)
            _store_rows(dw_ptr, dw, rows, row_ok, K, TK)
            d_state = tl.exp(total)[:, None] * d_state + tl.dot(tl.trans(r * from_start), dy, input_precision=PRECISION)
        tl.store(du_ptr + pid * K + key, du, mask=key < K)
        if STORE_D_INITIAL:
            tl.store(d_initial_ptr + pid * K * V + state_offsets, d_state, mask=state_mask)
