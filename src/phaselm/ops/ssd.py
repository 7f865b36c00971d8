"""Selective state-space scan with one decay per head (Mamba-2's "SSD" form), two ways.

Recurrence, per batch b, head h, channel p, state n:

    s_t = exp(a_t) · s_{t−1} + x_t · B_t        (a_t = Δ_t·A_h ≤ 0, x_t already scaled by Δ_t)
    y_t = s_t · C_t

- :func:`ssd_reference` runs it step by step: obviously right, O(T) sequential, and the
  single-step form generation uses (:func:`ssd_step`).
- :func:`ssd_chunked` computes the same thing in chunks with matrix products (the SSD
  algorithm of Dao & Gu 2024): quadratic inside a chunk, a short recurrence across chunks.
  Every exponent is a sum of non-positive terms, so nothing overflows.

Shapes: x (B, T, H, P), a (B, T, H), b and c (B, T, H, N), state (B, H, P, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def ssd_chunked(x, a, b, c, initial_state=None, chunk_size: int = 64):
    """Chunked parallel scan; same results as :func:`ssd_reference` (up to float rounding)."""
    batch, length, heads, p = x.shape
    pad = (-length) % chunk_size
    if pad:
        # Zero input and zero log-decay (decay 1) past the end change neither y nor the state.
        x, b, c = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, b, c))
        a = F.pad(a, (0, 0, 0, pad))
    n_chunks = x.shape[1] // chunk_size

    def chunks(t):
        return t.reshape(batch, n_chunks, chunk_size, *t.shape[2:])

    x, b, c = chunks(x), chunks(b), chunks(c)
    a = chunks(a).permute(0, 3, 1, 2)  # (B, H, C, L)
    a_cum = torch.cumsum(a, dim=-1)

    # 1. within each chunk: y_t += Σ_{s≤t} C_t·B_s · exp(a_{s+1} + … + a_t) · x_s
    decay = torch.exp(_segsum(a))  # (B, H, C, L, L)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", c, b, decay, x)

    # 2. the state each chunk leaves behind, from its own inputs only
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, C, L)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", b, to_end, x)

    # 3. carry states across chunks (a short recurrence written as one decay matrix)
    if initial_state is None:
        initial_state = x.new_zeros(batch, heads, p, b.shape[-1])
    states = torch.cat([initial_state[:, None], chunk_states], dim=1)  # (B, C+1, H, P, N)
    chunk_decay = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (B, H, C+1, C+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. what the state entering each chunk contributes inside it
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", c, entering, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(batch, n_chunks * chunk_size, heads, p)
    return y[:, :length], final_state
