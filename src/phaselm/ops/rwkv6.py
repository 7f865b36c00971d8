"""RWKV-6 ("Finch") time-mix recurrence with data-dependent per-channel decay, three ways.

Per batch b and head h, with a matrix state S (K × V):

    y_t = r_t · (S_{t−1} + diag(u) · k_tᵀ v_t)          (bonus u: the current token's own weight)
    S_t = diag(exp(w_t)) · S_{t−1} + k_tᵀ v_t            (w_t ≤ 0: log decay per key channel)

The RWKV-6 layer produces ``w_t = −exp(·)`` from the input, so the decay ``exp(w_t) = exp(−exp(·))``
lies in (0, 1) and depends on the data.

- :func:`rwkv6_step` — one position (generation).
- :func:`rwkv6_reference` — the recurrence step by step: obviously right, O(T) sequential.
- :func:`rwkv6_chunked` — the same in chunks with tensor products: inside a chunk every pair
  (t, s ≤ t) is formed directly with its own decay exp(w_{s+1} + … + w_{t−1}) per channel, and
  the state is carried across chunks the same way, one chunk standing for one position. Every
  exponent is a sum of non-positive log decays, so nothing overflows however fast the decay (no
  division by cumulative decays, the trick that makes naive "linear attention with decay" blow
  up in float32).
- :func:`phaselm.ops.rwkv6_triton.rwkv6_triton` — our Triton kernels, forward and backward (that
  module says how they keep the exponents non-positive).
- :func:`rwkv6` — the dispatch point the layers call (see its docstring for the fla backend).

Layout (the same as fla ≥ 0.3, time before heads): r, k, w (B, T, H, K); v (B, T, H, V); u (H, K);
state (B, H, K, V). No scaling of r·k (RWKV uses scale 1).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .backend import Op, accepted, resolve, triton_on_cuda
from .rwkv6_triton import rwkv6_triton


def _auto(device: torch.device) -> str:
    """Our Triton kernels on CUDA tensors (where Triton is), the chunked PyTorch path elsewhere."""
    return "triton" if triton_on_cuda(device) == "triton" else "chunked"


RWKV6 = Op("rwkv6", ("reference", "chunked", "triton", "external"), auto=_auto)
BACKENDS = accepted(RWKV6)


def rwkv6_step(state: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor):
    """One position: r, k, w (B, H, K), v (B, H, V), u (H, K), state (B, H, K, V) → (y (B, H, V), new state)."""
    kv = k[..., :, None] * v[..., None, :]
    y = torch.einsum("bhk,bhkv->bhv", r, state + u[None, :, :, None] * kv)
    return y, torch.exp(w)[..., None] * state + kv


def rwkv6_reference(r, k, v, w, u, initial_state=None):
    """Sequential recurrence; returns y (B, T, H, V) and the final state (B, H, K, V)."""
    batch, length, heads, key_dim = r.shape
    state = initial_state if initial_state is not None else r.new_zeros(batch, heads, key_dim, v.shape[-1])
    ys = []
    for t in range(length):
        y, state = rwkv6_step(state, r[:, t], k[:, t], v[:, t], w[:, t], u)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def rwkv6_chunked(r, k, v, w, u, initial_state=None, chunk_size: int = 16, chunks_per_block: int = 64):
    """Chunked parallel form; same results as :func:`rwkv6_reference` (up to float rounding).

    Memory inside a chunk is (B, C, L, L, H, K): keep ``chunk_size`` small (16 by default). The
    state is carried across chunks in blocks of ``chunks_per_block`` chunks, each block in one
    product of (B, n, n, H, K) decays — a Python loop over every chunk would unroll into hundreds
    of small ops under ``torch.compile`` (GF-MH did not finish compiling in the ~190 s a device call
    had left for it on the H100).
    """
    batch, length, heads, key_dim = r.shape
    value_dim = v.shape[-1]
    pad = (-length) % chunk_size
    if pad:
        # Zero r, k, v and zero log decay (decay 1) past the end change neither y nor the state.
        r, k, v, w = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (r, k, v, w))
    n_chunks = r.shape[1] // chunk_size

    def chunks(t):
        return t.reshape(batch, n_chunks, chunk_size, heads, t.shape[-1])

    r, k, v, w = chunks(r), chunks(k), chunks(v), chunks(w)
    inclusive = torch.cumsum(w, dim=2)  # c_t = w_1 + … + w_t inside the chunk, (B, C, L, H, K)
    exclusive = inclusive - w  # c_{t−1}: the decay between the chunk start and just before t

    # 1. inside each chunk, s < t: y_t += Σ_s (Σ_k r_tk k_sk exp(c_{t−1,k} − c_{s,k})) v_s
    scores = torch.einsum("bctshk,bcshk->bctsh", r[:, :, :, None] * _pairwise_decay(inclusive, exclusive, dim=2), k)
    y = torch.einsum("bctsh,bcshv->bcthv", scores, v)
    # ... and s = t, with the bonus u instead of a decay
    y = y + (r * u * k).sum(-1, keepdim=True) * v

    # 2. the state each chunk leaves behind from its own inputs: Σ_s diag(exp(c_L − c_s)) k_sᵀ v_s
    to_end = torch.exp(inclusive[:, :, -1:] - inclusive)  # (B, C, L, H, K)
    chunk_states = torch.einsum("bcshk,bcshv->bchkv", k * to_end, v)

    # 3. the state entering each chunk, and 4. what it gives inside the chunk
    state = initial_state if initial_state is not None else r.new_zeros(batch, heads, key_dim, value_dim)
    entering, state = _carry_across_chunks(inclusive[:, :, -1], chunk_states, state, chunks_per_block)
    y = y + torch.einsum("bcthk,bchkv->bcthv", r * torch.exp(exclusive), entering)
    return y.reshape(batch, n_chunks * chunk_size, heads, value_dim)[:, :length], state


def _pairwise_decay(inclusive: torch.Tensor, exclusive: torch.Tensor, dim: int) -> torch.Tensor:
    """exp(exclusive_t − inclusive_s) for s < t along ``dim`` (0 elsewhere), with t before s.

    Both inputs are running sums of log decays ≤ 0 along ``dim``, so every kept exponent is ≤ 0.
    The result has ``dim`` split into (t, s); the dimensions before it lead, those after follow.
    """
    n = inclusive.shape[dim]
    earlier = torch.tril(torch.ones(n, n, dtype=torch.bool, device=inclusive.device), diagonal=-1)
    log_decay = exclusive.unsqueeze(dim + 1) - inclusive.unsqueeze(dim)
    mask = earlier.reshape(*([1] * dim), n, n, *([1] * (inclusive.dim() - dim - 1)))
    return torch.exp(log_decay.masked_fill(~mask, float("-inf")))


def _carry_across_chunks(log_chunk_decay, chunk_states, state, chunks_per_block: int):
    """S entering chunk c = exp(a_{c0} + … + a_{c−1}) S_{c0} + Σ_{c0≤j<c} exp(a_{j+1} + … + a_{c−1}) s_j.

    log_chunk_decay a (B, C, H, K), chunk_states s (B, C, H, K, V), state S_{c0} (B, H, K, V).
    Returns the entering states (B, C, H, K, V) and the state after the last chunk. Computed in
    at least float32 even under autocast: the carried state is what generation continues from.
    """
    dtype = torch.promote_types(chunk_states.dtype, torch.float32)
    log_chunk_decay, chunk_states, state = (t.to(dtype) for t in (log_chunk_decay, chunk_states, state))
    entering = []
    with torch.autocast(chunk_states.device.type, enabled=False):
        for start in range(0, log_chunk_decay.shape[1], chunks_per_block):
            a = log_chunk_decay[:, start:start + chunks_per_block]
            s = chunk_states[:, start:start + chunks_per_block]
            inclusive = torch.cumsum(a, dim=1)
            # Shifted, not inclusive − a: a_c is chunk c's own decay, which depends on tokens after
            # the chunk's first ones; subtracting it would leak them into earlier outputs by rounding.
            exclusive = F.pad(inclusive, (0, 0, 0, 0, 1, 0))[:, :-1]
            block = torch.einsum("bcjhk,bjhkv->bchkv", _pairwise_decay(inclusive, exclusive, dim=1), s)
            block = block + torch.exp(exclusive)[..., None] * state[:, None]
            entering.append(block)
            state = torch.exp(a[:, -1])[..., None] * block[:, -1] + s[:, -1]
    return torch.cat(entering, dim=1), state


@functools.cache
def _fla_chunk_rwkv6():
    """fla's Triton kernel, or None where fla is not installed (or cannot be imported)."""
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except Exception:  # ImportError, or Triton failing to initialise without a GPU
        return None
    return chunk_rwkv6


def fla_available() -> bool:
    """Is fla's ``chunk_rwkv6`` importable here (the "external" backend)?"""
    return _fla_chunk_rwkv6() is not None


# torch.compile of a training step steps around fla's kernel (a graph break) rather than
# tracing into its autotuned Triton launches.
@torch.compiler.disable
def _rwkv6_fla(r, k, v, w, u, initial_state):
    chunk_rwkv6 = _fla_chunk_rwkv6()
    if chunk_rwkv6 is None:
        raise RuntimeError("backend 'fla' needs flash-linear-attention (pip install fla-core) and a CUDA device")
    return chunk_rwkv6(r=r, k=k, v=v, w=w, u=u, scale=1.0, initial_state=initial_state, output_final_state=True)


def rwkv6(r, k, v, w, u, initial_state=None, backend: str = "auto", chunk_size: int = 16):
    """RWKV-6 recurrence over a sequence → (y (B, T, H, V), final state (B, H, K, V)).

    ``backend`` (through :mod:`phaselm.ops.backend`; ``PHASELM_BACKEND_RWKV6`` refines "auto"):
      - "auto": "triton" on CUDA tensors, "chunked" elsewhere. Not fla: on the H100 device image
        (2026-11-23) fla's first call in a process spent minutes autotuning, and under
        torch.compile it splits the graph at every layer;
      - "triton": :func:`~phaselm.ops.rwkv6_triton.rwkv6_triton`, our kernels (custom ops that
        torch.compile keeps in one graph; a fixed tile per head size, so no autotuning and no
        recompilation for a new length; CUDA tensors, or any device under ``TRITON_INTERPRET=1``;
        the final state comes back in float32);
      - "external" (the older word: "fla"): fla's kernel (fails where it is not installed or the
        tensors are not on CUDA);
      - "chunked": :func:`rwkv6_chunked` (plain PyTorch, any device; ``chunk_size`` applies);
      - "reference": :func:`rwkv6_reference` (sequential; for checks).

    fla's conventions (``fla.ops.rwkv6.chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None,
    output_final_state=False, cu_seqlens=None, ...)``, fla 0.3 … 0.6) and how this call meets them:
      - ``w`` is the *log* decay (≤ 0), applied to the key channels: S_t = diag(exp(w_t))·S_{t−1}
        + k_tᵀv_t — the same ``w`` as here (fla's own RWKV-6 layer passes ``w = −exp(·)``);
      - ``scale`` defaults to K^−1/2 (attention style); RWKV uses no scale, so we pass 1.0;
      - tensors are (B, T, H, ·), time before heads: the ``head_first`` argument was removed
        (passing it raises), so nothing is transposed; ``u`` is (H, K); states are (N, H, K, V)
        and come back in float32;
      - the kernel keeps its cumulative decays in float32 and computes in the input dtype
        (bf16 under autocast); chunk size 64 internally (its own sub-chunking keeps exponents
        non-positive, as ours does).
    The device script compares this path with :func:`rwkv6_reference` (forward and gradients).
    """
    choice = resolve(RWKV6, backend, r.device)
    if choice == "external":
        return _rwkv6_fla(r, k, v, w, u, initial_state)
    if choice == "reference":
        return rwkv6_reference(r, k, v, w, u, initial_state)
    if choice == "triton":
        return rwkv6_triton(r, k, v, w, u, initial_state)
    return rwkv6_chunked(r, k, v, w, u, initial_state, chunk_size)
