"""RWKV-6 recurrence: reference against a naive float64 loop, chunked and Triton (in Triton's
interpreter on a CPU) against reference (forward and gradients), single-step decoding against the
parallel form. (The layers built on it: tests/layers/test_token_mixers.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from phaselm.ops import backend as backend_ops
from phaselm.ops.rwkv6 import (
    RWKV6,
    fla_available,
    rwkv6,
    rwkv6_chunked,
    rwkv6_reference,
    rwkv6_step,
)
from phaselm.ops.rwkv6_triton import CHUNK, rwkv6_triton

needs_triton = pytest.mark.skipif(
    not backend_ops.triton_runs_on("cpu") and not torch.cuda.is_available(), reason="needs Triton (interpreter on CPU)"
)


def inputs(batch=2, length=13, heads=3, key_dim=4, value_dim=5, dtype=torch.float64, decay_scale=1.0, state=True):
    r = torch.randn(batch, length, heads, key_dim, dtype=dtype)
    k = torch.randn(batch, length, heads, key_dim, dtype=dtype)
    v = torch.randn(batch, length, heads, value_dim, dtype=dtype)
    w = -torch.exp(torch.randn(batch, length, heads, key_dim, dtype=dtype) * decay_scale)  # log decay < 0
    u = torch.randn(heads, key_dim, dtype=dtype)
    s0 = torch.randn(batch, heads, key_dim, value_dim, dtype=dtype) if state else None
    return r, k, v, w, u, s0


def naive(r, k, v, w, u, s0):
    """Element by element: y_t[j] = Σ_i r_t[i]·(S[i, j] + u[i]·k_t[i]·v_t[j]);
    S[i, j] ← e^{w_t[i]}·S[i, j] + k_t[i]·v_t[j]."""
    batch, length, heads, key_dim = r.shape
    value_dim = v.shape[-1]
    y = torch.zeros(batch, length, heads, value_dim, dtype=torch.float64)
    final = torch.zeros(batch, heads, key_dim, value_dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            S = [[float(s0[b, h, i, j]) if s0 is not None else 0.0 for j in range(value_dim)] for i in range(key_dim)]
            for t in range(length):
                rt, kt, vt, wt = r[b, t, h].tolist(), k[b, t, h].tolist(), v[b, t, h].tolist(), w[b, t, h].tolist()
                for j in range(value_dim):
                    y[b, t, h, j] = sum(rt[i] * (S[i][j] + float(u[h, i]) * kt[i] * vt[j]) for i in range(key_dim))
                S = [[math.exp(wt[i]) * S[i][j] + kt[i] * vt[j] for j in range(value_dim)] for i in range(key_dim)]
            final[b, h] = torch.tensor(S, dtype=torch.float64)
    return y, final


@pytest.mark.parametrize("with_state", [True, False])
def test_reference_matches_a_naive_float64_loop(with_state):
    args = inputs(length=7, state=with_state)
    y, s = rwkv6_reference(*args)
    y_naive, s_naive = naive(*args)
    torch.testing.assert_close(y, y_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, s_naive, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "length,chunk,per_block", [(13, 4, 64), (16, 16, 64), (5, 8, 64), (1, 4, 64), (37, 4, 2), (37, 4, 3)]
)
def test_chunked_equals_reference_forward_and_gradients(length, chunk, per_block):
    """per_block < chunks: the state also crosses blocks of chunks (long sequences)."""
    args = [t.requires_grad_() for t in inputs(length=length)]
    y_ref, s_ref = rwkv6_reference(*args)
    y_chk, s_chk = rwkv6_chunked(*args, chunk_size=chunk, chunks_per_block=per_block)
    torch.testing.assert_close(y_chk, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_chk, s_ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(y_ref), torch.randn_like(s_ref)
    g_ref = torch.autograd.grad((y_ref * weights[0]).sum() + (s_ref * weights[1]).sum(), args)
    g_chk = torch.autograd.grad((y_chk * weights[0]).sum() + (s_chk * weights[1]).sum(), args)
    for name, a, b in zip(["r", "k", "v", "w", "u", "s0"], g_chk, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_chunked_is_finite_and_exact_with_very_fast_decay_in_float32():
    """Decays down to exp(−e⁴) per step: the chunked path never divides by a cumulative decay."""
    args = [t.float() for t in inputs(length=40, decay_scale=2.0)]
    assert args[3].min() < -50
    y_ref, s_ref = rwkv6_reference(*args)
    y_chk, s_chk = rwkv6_chunked(*args, chunk_size=16)
    assert torch.isfinite(y_chk).all() and torch.isfinite(s_chk).all()
    torch.testing.assert_close(y_chk, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_chk, s_ref, rtol=1e-4, atol=1e-4)


def test_step_decoding_equals_the_parallel_form():
    r, k, v, w, u, s0 = inputs(length=11)
    y_all, s_all = rwkv6_chunked(r, k, v, w, u, s0, chunk_size=4)
    y_pre, state = rwkv6_chunked(r[:, :6], k[:, :6], v[:, :6], w[:, :6], u, s0, chunk_size=4)
    ys = [y_pre]
    for t in range(6, 11):
        y, state = rwkv6_step(state, r[:, t], k[:, t], v[:, t], w[:, t], u)
        ys.append(y[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y_all, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, s_all, rtol=1e-10, atol=1e-10)


def test_dispatch():
    args = inputs(length=9)
    y_ref, _ = rwkv6_reference(*args)
    for backend in ("auto", "chunked", "reference"):
        torch.testing.assert_close(rwkv6(*args, backend=backend, chunk_size=4)[0], y_ref)
    with pytest.raises(ValueError, match="rwkv6 backend must be 'auto' or one of"):
        rwkv6(*args, backend="cuda")
    if not fla_available():
        with pytest.raises(RuntimeError, match="fla"):
            rwkv6(*args, backend="fla")


# ---------------------------------------------------------------- the Triton kernels


GRAD_NAMES = ("r", "k", "v", "w", "u", "initial_state")


def _grads(y, s, args, weights):
    return torch.autograd.grad((y * weights[0]).sum() + (s * weights[1]).sum(), [a for a in args if a is not None])


@needs_triton
@pytest.mark.parametrize(
    "length,key_dim,value_dim,with_state",
    [(21, 8, 4, True), (21, 8, 4, False), (CHUNK, 16, 16, True), (3, 5, 7, True)],
    ids=["ragged-state", "ragged-no-state", "one-chunk", "short-odd-dims"],
)
def test_triton_equals_reference_forward_and_every_gradient(one_thread, length, key_dim, value_dim, with_state):
    """Ragged lengths (not a multiple of the chunk) and head sizes below one tile exercise the masks."""
    args = [
        t.float().requires_grad_() if t is not None else None
        for t in inputs(2, length, 2, key_dim, value_dim, state=with_state)
    ]
    y, s = rwkv6_triton(*args)
    y_ref, s_ref = rwkv6_reference(*args)
    assert s.dtype == torch.float32 and y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(y_ref), torch.randn_like(s_ref)
    names = [n for n, a in zip(GRAD_NAMES, args) if a is not None]
    for name, a, b in zip(names, _grads(y, s, args, weights), _grads(y_ref, s_ref, args, weights)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


@needs_triton
def test_triton_gradient_of_y_alone_and_of_the_state_alone(one_thread):
    """An unused output reaches backward as None: the kernel must treat it as zeros."""
    args = [t.float().requires_grad_() for t in inputs(1, 18, 1, 4, 4)]
    for pick in (0, 1):
        out, out_ref = rwkv6_triton(*args)[pick], rwkv6_reference(*args)[pick]
        grads_ref = torch.autograd.grad(out_ref.sum(), args, allow_unused=True, materialize_grads=True)  # S ignores r
        for name, a, b in zip(GRAD_NAMES, torch.autograd.grad(out.sum(), args), grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{name} (output {pick})")


@needs_triton
def test_triton_is_finite_and_exact_with_very_fast_decay(one_thread):
    """Decays down to exp(−e⁴) per step, far past e^−88 over a chunk: no exponent is ever positive."""
    args = [t.float() for t in inputs(1, 20, 1, 4, 4, decay_scale=2.0)]
    assert args[3].min() < -50
    args = [t.requires_grad_() for t in args]
    y, s = rwkv6_triton(*args)
    y_ref, s_ref = rwkv6_reference(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(y.sum() + s.sum(), args)
    assert all(torch.isfinite(g).all() for g in grads)
    for name, a, b in zip(GRAD_NAMES, grads, torch.autograd.grad(y_ref.sum() + s_ref.sum(), args)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


@needs_triton
def test_triton_takes_bf16_inputs_with_a_float32_state(one_thread):
    r, k, v, w, u, s0 = (t.float() for t in inputs(1, 17, 1, 16, 16))
    low = [t.bfloat16() for t in (r, k, v, w)]
    y, s = rwkv6_triton(*low, u, s0)
    # The same rounded inputs. Triton's interpreter truncates float32 → bf16 on store (a GPU
    # rounds to nearest), so y's error here is up to twice a GPU's: hence 1e-2.
    y_ref, s_ref = rwkv6_reference(*(t.float() for t in low), u, s0)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert (s - s_ref).abs().max() / s_ref.abs().max() < 1e-2
    assert (y.float() - y_ref).abs().max() / y_ref.abs().max() < 1e-2


@needs_triton
def test_triton_backend_through_the_dispatch_and_auto_rule(one_thread):
    args = [t.float() for t in inputs(1, 5, 1, 4, 4)]
    torch.testing.assert_close(rwkv6(*args, backend="triton")[0], rwkv6_reference(*args)[0], rtol=1e-5, atol=1e-5)
    assert backend_ops.chosen()["rwkv6@cpu"] == "triton"
    assert RWKV6.auto(torch.device("cpu")) == "chunked"  # the interpreter is for tests; auto wants CUDA
    if backend_ops.triton is not None:
        assert RWKV6.auto(torch.device("cuda")) == "triton"


@needs_triton
def test_triton_op_has_a_fake_kernel_for_compile():
    """torch.compile traces the custom op through its registered fake: shapes without running it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        r = torch.empty(2, 37, 3, 8)
        v = torch.empty(2, 37, 3, 4)
        y, final, entering = torch.ops.phaselm.rwkv6_fwd(r, r, v, r, torch.empty(3, 8), None)
    assert y.shape == (2, 37, 3, 4) and final.shape == (2, 3, 8, 4) and entering.shape == (2, 3, -(-37 // CHUNK), 8, 4)
    assert final.dtype == torch.float32


def test_chunked_under_bf16_autocast_keeps_a_float32_state_close_to_the_reference():
    """Generation continues from the carried state: autocast must not round it to bf16."""
    r, k, v, w, u, _ = (t.float() for t in inputs(length=70))
    y_ref, s_ref = rwkv6_reference(r, k, v, w, u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = rwkv6_chunked(r, k, v, w, u, chunk_size=8, chunks_per_block=4)
    assert s.dtype == torch.float32
    assert (s - s_ref).abs().max() / s_ref.abs().max() < 2e-2
    assert (y.float() - y_ref).abs().max() / y_ref.abs().max() < 2e-2
