"""The chunked SSD scan equals the sequential reference (float64), forward and gradients."""

from __future__ import annotations

import pytest
import torch

from phaselm.ops.ssd import ssd_chunked, ssd_reference


def inputs(batch=2, length=37, heads=3, p=4, n=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, p, generator=g, dtype=dtype)
    a = -torch.rand(batch, length, heads, generator=g, dtype=dtype) * 2  # log decays ≤ 0
    b = torch.randn(batch, length, heads, n, generator=g, dtype=dtype)
    c = torch.randn(batch, length, heads, n, generator=g, dtype=dtype)
    s0 = torch.randn(batch, heads, p, n, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, a, b, c, s0)]


def naive_loop(x, a, b, c, s0):
    """Element by element with Python floats' worth of clarity: s ← e^a s + x b, y = Σ_n s c."""
    batch, length, heads, p = x.shape
    y = torch.zeros_like(x)
    s = s0.clone()
    for t in range(length):
        for h in range(heads):
            s[:, h] = torch.exp(a[:, t, h])[:, None, None] * s[:, h] + x[:, t, h, :, None] * b[:, t, h, None, :]
            y[:, t, h] = (s[:, h] * c[:, t, h, None, :]).sum(-1)
    return y, s


def test_reference_matches_a_naive_loop():
    x, a, b, c, s0 = inputs(length=9)
    y_ref, s_ref = ssd_reference(x, a, b, c, s0)
    y_naive, s_naive = naive_loop(x.detach(), a.detach(), b.detach(), c.detach(), s0.detach())
    torch.testing.assert_close(y_ref, y_naive)
    torch.testing.assert_close(s_ref, s_naive)


@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_reference_forward_and_grad(chunk, with_state):
    x, a, b, c, s0 = inputs()
    s0_arg = s0 if with_state else None
    y1, f1 = ssd_reference(x, a, b, c, s0_arg)
    y2, f2 = ssd_chunked(x, a, b, c, s0_arg, chunk_size=chunk)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(f1, f2)
    weights = torch.randn_like(y1)
    leaves = [x, a, b, c] + ([s0] if with_state else [])
    g1 = torch.autograd.grad((y1 * weights).sum() + f1.sum(), leaves)
    g2 = torch.autograd.grad((y2 * weights).sum() + f2.sum(), leaves)
    for u, v in zip(g1, g2):
        torch.testing.assert_close(u, v)


def test_chunked_is_stable_with_strong_decay_float32():
    x, a, b, c, _ = inputs(length=256, dtype=torch.float32)
    a = a * 20  # exp(Σa) far below float32's range over a chunk: nothing may overflow
    y1, _ = ssd_reference(x, a, b, c)
    y2, _ = ssd_chunked(x, a, b, c, chunk_size=64)
    assert torch.isfinite(y2).all()
    torch.testing.assert_close(y1, y2, atol=1e-4, rtol=1e-4)


def test_causal():
    x, a, b, c, _ = inputs(length=20)
    y, _ = ssd_chunked(x, a, b, c, chunk_size=8)
    x2 = x.detach().clone()
    x2[:, 12:] += 1.0
    y2, _ = ssd_chunked(x2, a, b, c, chunk_size=8)
    torch.testing.assert_close(y[:, :12], y2[:, :12])
    assert not torch.allclose(y[:, 12:], y2[:, 12:])
