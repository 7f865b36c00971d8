"""The chunked SSD scan and the fused Triton kernels equal the sequential reference, forward and gradients.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch

from phaselm.layers.mamba2 import Mamba2Mixer
from phaselm.ops import ssd as ssd_ops
from phaselm.ops.ssd import ssd, ssd_chunked, ssd_reference

requires_triton = pytest.mark.skipif(ssd_ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The kernels compute in float32 and are compared with the float64 reference, as max |error| over
# max |reference|. Each entry is a sum of at most chunk·max(P, N) + P·N float32 products with
# decays ≤ 1: the interpreter's kernels land at ≤ 8e-7 here and over other seeds, as the float32
# chunked path does (1e-7..6e-7). 5e-6 leaves room for the GPU's summation orders; it caught a
# float32 cumulative decay (1e-5 under strong decay), and a wrong or missing term is ~1e-2 or more.
FUSED_TOLERANCE = 5e-6


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
    _batch, length, heads, _p = x.shape
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


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| (float64, on the CPU)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max()).item()


def float32_copies(tensors):
    return [t.detach().float().to(DEVICE).requires_grad_() for t in tensors]


@requires_triton
@pytest.mark.parametrize(
    "batch,length,heads,p,n,chunk",
    [
        (2, 37, 2, 16, 16, 16),  # length not a multiple of the chunk
        (2, 130, 2, 16, 16, 32),  # five chunks, the last one ragged
        (1, 5, 2, 16, 16, 16),  # shorter than one chunk
        (2, 100, 2, 16, 64, 32),  # the recipe's state size with a ragged end
        (1, 64, 1, 64, 64, 64),  # the recipe's head and state sizes and chunk
        (2, 40, 2, 8, 5, 16),  # P and N neither powers of two nor 16: masked tiles
    ],
)
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_matches_reference_forward_and_gradients(batch, length, heads, p, n, chunk, with_state):
    x, a, b, c, s0 = inputs(batch, length, heads, p, n)
    exact = [x, a, b, c] + ([s0] if with_state else [])
    g = torch.Generator().manual_seed(1)
    weights_y = torch.randn(batch, length, heads, p, generator=g, dtype=torch.float64)
    weights_s = torch.randn(batch, heads, p, n, generator=g, dtype=torch.float64)

    y_ref, s_ref = ssd_reference(*exact[:4], exact[4] if with_state else None)
    grads_ref = torch.autograd.grad((y_ref * weights_y).sum() + (s_ref * weights_s).sum(), exact)

    fused = float32_copies(exact)
    y, s = ssd_ops.ssd_fused(*fused[:4], fused[4] if with_state else None, chunk_size=chunk)
    loss = (y * weights_y.float().to(DEVICE)).sum() + (s * weights_s.float().to(DEVICE)).sum()
    grads = torch.autograd.grad(loss, fused)

    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    for name, got, want in zip(
        ["y", "final state", "dx", "da", "db", "dc", "d initial state"], [y, s, *grads], [y_ref, s_ref, *grads_ref]
    ):
        assert relative_error(got, want) <= FUSED_TOLERANCE, name


@requires_triton
def test_fused_is_stable_with_strong_decay():
    x, a, b, c, _ = inputs(length=100, p=16, n=16)
    a = (a * 20).detach().requires_grad_()  # exp(Σa) far below float32's range within a chunk
    y_ref, _ = ssd_reference(x, a, b, c)
    grads_ref = torch.autograd.grad(y_ref.sum(), [x, a, b, c])
    fused = float32_copies([x, a, b, c])
    y, _ = ssd_ops.ssd_fused(*fused, chunk_size=32)
    grads = torch.autograd.grad(y.sum(), fused)
    for got, want in zip([y, *grads], [y_ref, *grads_ref]):
        assert torch.isfinite(got).all()
        assert relative_error(got, want) <= FUSED_TOLERANCE


@requires_triton
def test_fused_computes_low_precision_inputs_in_float32():
    x, a, b, c, s0 = (t.detach().to(torch.bfloat16).to(DEVICE) for t in inputs(length=20, p=16, n=16))
    y, s = ssd_ops.ssd_fused(x, a, b, c, s0, chunk_size=16)
    y32, s32 = ssd_ops.ssd_fused(x.float(), a.float(), b.float(), c.float(), s0.float(), chunk_size=16)
    assert y.dtype == s.dtype == torch.bfloat16
    assert torch.equal(y, y32.to(torch.bfloat16)) and torch.equal(s, s32.to(torch.bfloat16))
    leaf = x.clone().requires_grad_()
    ssd_ops.ssd_fused(leaf, a, b, c, s0, chunk_size=16)[0].float().sum().backward()
    assert leaf.grad.dtype == torch.bfloat16 and torch.isfinite(leaf.grad).all()


@requires_triton
def test_fused_refuses_a_chunk_size_the_kernel_cannot_tile():
    x, a, b, c, _ = (t.detach().to(DEVICE) for t in inputs(length=20, p=16, n=16))
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_ops.ssd_fused(x, a, b, c, chunk_size=24)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice for CPU tensors")
def test_dispatch_uses_the_chunked_scan_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("PHASELM_BACKEND_SSD", raising=False)
    x, a, b, c, s0 = (t.detach() for t in inputs())
    y, s = ssd(x, a, b, c, s0, chunk_size=8)
    y_chunked, s_chunked = ssd_chunked(x, a, b, c, s0, chunk_size=8)
    assert torch.equal(y, y_chunked) and torch.equal(s, s_chunked)


@pytest.mark.parametrize(
    "forced", ["reference", pytest.param("triton", marks=requires_triton), pytest.param("fused", marks=requires_triton)]
)
def test_environment_variable_refines_auto_only(monkeypatch, forced):
    monkeypatch.setenv("PHASELM_BACKEND_SSD", forced)
    x, a, b, c, s0 = (t.detach().float().to(DEVICE) for t in inputs(length=20, p=16, n=16))
    y_explicit, _ = ssd(x, a, b, c, s0, backend="chunked", chunk_size=16)  # asked for in code: wins
    assert torch.equal(y_explicit, ssd_chunked(x, a, b, c, s0, chunk_size=16)[0])
    y, s = ssd(x, a, b, c, s0, chunk_size=16)
    if forced == "reference":
        y_want, s_want = ssd_reference(x, a, b, c, s0)
    else:
        y_want, s_want = ssd_ops.ssd_fused(x, a, b, c, s0, chunk_size=16)
    assert torch.equal(y, y_want) and torch.equal(s, s_want)


def test_unknown_backend_is_refused():
    x, a, b, c, _ = (t.detach() for t in inputs())
    with pytest.raises(ValueError, match="backend"):
        ssd(x, a, b, c, backend="magic")


@requires_triton
def test_mamba2_mixer_with_the_fused_scan_equals_the_reference_scan():
    torch.manual_seed(0)
    fused = Mamba2Mixer(32, state_size=16, head_dim=16, chunk_size=16, scan="fused").to(DEVICE)
    reference = Mamba2Mixer(32, state_size=16, head_dim=16, chunk_size=16, scan="reference").to(DEVICE)
    reference.load_state_dict(fused.state_dict())
    hidden = torch.randn(2, 21, 32, device=DEVICE)
    outputs, states, grads = [], [], []
    for mixer in (fused, reference):
        # Prefill 21 positions, then 19 more from the carried state: both paths of the scan.
        first, state = mixer(hidden)
        second, (_, ssm) = mixer(hidden.flip(1)[:, :19], state)
        (first.sum() + (second**2).sum()).backward()
        outputs.append(torch.cat([first, second], dim=1))
        states.append(ssm)
        grads.append([p.grad for p in mixer.parameters()])
    assert relative_error(outputs[0], outputs[1]) <= FUSED_TOLERANCE
    assert relative_error(states[0], states[1]) <= FUSED_TOLERANCE
    for got, want in zip(*grads):
        assert relative_error(got, want) <= FUSED_TOLERANCE


@requires_triton
def test_triton_scan_compiles_without_a_graph_break():
    # fullgraph=True fails on any graph break: the kernels must be opaque custom ops to Dynamo.
    x, a, b, c, s0 = float32_copies(inputs(1, 20, 2, 16, 16))

    def step(x, a, b, c, s0):
        y, s = ssd(x * 2, a, b, c, s0, backend="triton", chunk_size=16)
        return (y**2).sum() + s.sum()

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    loss = compiled(x, a, b, c, s0)
    grads = torch.autograd.grad(loss, [x, a, b, c, s0])
    want = step(x, a, b, c, s0)
    want_grads = torch.autograd.grad(want, [x, a, b, c, s0])
    assert torch.equal(loss, want)
    for got, expected in zip(grads, want_grads):
        assert torch.equal(got, expected)


def _strided(t):
    """The same values with the heads axis outermost in memory (as a reshaped projection hands them over)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2).detach().requires_grad_(t.requires_grad)


@requires_triton
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_ssd_custom_ops_pass_opcheck(with_state, layout):
    """Also with non-contiguous inputs: the fake kernels must promise the real outputs' strides
    (a mismatch broke the compiled K-SSM step on the GPU, 2026-11-26)."""
    x, a, b, c, s0 = float32_copies(inputs(2, 20, 3, 8, 5))
    if layout == "strided":
        x, a, b, c = (_strided(t) for t in (x, a, b, c))
        assert not x.is_contiguous()
    torch.library.opcheck(torch.ops.phaselm.ssd_fwd.default, (x, a, b, c, s0 if with_state else None, 16))
    y, s, entering = torch.ops.phaselm.ssd_fwd(x, a, b, c, s0 if with_state else None, 16)
    args = tuple(t.detach() for t in (x, a, b, c, entering, torch.randn_like(y), torch.randn_like(s)))
    torch.library.opcheck(torch.ops.phaselm.ssd_bwd.default, (*args, 16, with_state))


@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_with_bf16_matmuls_stays_near_the_reference(with_state):
    # bf16 products (what autocast gives the tensor cores) with float32 decays and states: the
    # error is bf16's rounding of the factors (~4e-3 relative), not growth along the sequence.
    x, a, b, c, s0 = inputs(length=150)
    s0_arg = s0 if with_state else None
    y_ref, s_ref = ssd_reference(x, a, b, c, s0_arg)
    leaves = [x, a, b, c] + ([s0] if with_state else [])
    weights = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + s_ref.sum(), leaves)
    low = [t.detach().float().requires_grad_() for t in leaves]
    y, s = ssd_chunked(*low[:4], low[4] if with_state else None, chunk_size=32, matmul_dtype=torch.bfloat16)
    assert y.dtype == s.dtype == torch.float32
    grads = torch.autograd.grad((y * weights.float()).sum() + s.sum(), low)
    for got, want in zip([y, s, *grads], [y_ref, s_ref, *grads_ref]):
        assert relative_error(got, want) <= 2e-2
    y32, _ = ssd_chunked(*[t.detach() for t in low[:4]], low[4].detach() if with_state else None, chunk_size=32)
    assert relative_error(y32, y_ref) <= 1e-6 < relative_error(y, y_ref)  # the bf16 products did run


def test_chunked_scan_compiles_as_one_graph():
    x, a, b, c, s0 = (t.detach().float() for t in inputs(length=40))
    compiled = torch.compile(ssd_chunked, backend="eager", fullgraph=True)
    y, s = compiled(x, a, b, c, s0, chunk_size=16, matmul_dtype=torch.bfloat16)
    y_want, s_want = ssd_chunked(x, a, b, c, s0, chunk_size=16, matmul_dtype=torch.bfloat16)
    assert torch.equal(y, y_want) and torch.equal(s, s_want)


def test_mixer_under_autocast_gives_the_chunked_scan_bf16_matmuls(monkeypatch):
    seen = []
    original = ssd_ops.ssd_chunked

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("matmul_dtype"))
        return original(*args, **kwargs)

    monkeypatch.setattr(ssd_ops, "ssd_chunked", spy)
    mixer = Mamba2Mixer(32, state_size=16, head_dim=16, chunk_size=16, scan="chunked")
    hidden = torch.randn(2, 21, 32)
    plain, _ = mixer(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, (_, ssm) = mixer(hidden)
    assert seen == [None, torch.bfloat16] and ssm.dtype == torch.float32
    assert relative_error(mixed, plain) <= 3e-2
