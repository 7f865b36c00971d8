"""Mamba-1's causal depthwise conv1d: the reference against a naive loop and F.conv1d, the Triton
kernels (forward, every gradient, the decoding step) against the float64 reference, the custom
ops' registrations, and the backend choice.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phaselm.ops import causal_conv1d as conv_ops
from phaselm.ops.backend import resolve
from phaselm.ops.causal_conv1d import (
    CAUSAL_CONV1D,
    causal_conv1d,
    causal_conv1d_reference,
    causal_conv1d_step,
    causal_conv1d_step_reference,
)

requires_triton = pytest.mark.skipif(conv_ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The kernels compute in float32 and are compared with the float64 reference, as max |error| over
# max |reference|. An output sums K products; a weight or bias gradient sums B·T of them: the
# interpreter lands at ≤ 3e-7 here. 1e-5 leaves room for the GPU's summation orders, and a wrong
# tap, shift or mask is ~1e-1.
TOLERANCE = 1e-5


def inputs(batch=2, length=9, channels=5, taps=4, bias=True, strided=False, dtype=torch.float64, seed=0):
    """x (B, T, D) — with ``strided``, the view ``xz[..., :D]`` of a (B, T, 2D) tensor, as Mamba's
    in-projection gives it — weight (D, K) and bias (D,) or None, all leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        xz = torch.randn(batch, length, 2 * channels, generator=g, dtype=dtype).to(DEVICE)
        x = xz[..., :channels].detach().requires_grad_()  # detach keeps the view's strides
        assert x.stride() == (length * 2 * channels, 2 * channels, 1)
    else:
        x = torch.randn(batch, length, channels, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    weight = (torch.randn(channels, taps, generator=g, dtype=dtype) / taps**0.5).to(DEVICE).requires_grad_()
    b = torch.randn(channels, generator=g, dtype=dtype).to(DEVICE).requires_grad_() if bias else None
    return x, weight, b


def naive_loop(x, weight, bias, silu):
    """Element by element, straight from the definition."""
    batch, length, channels = x.shape
    taps = weight.shape[1]
    out = torch.zeros(batch, length, channels, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            for d in range(channels):
                acc = float(bias[d]) if bias is not None else 0.0
                for k in range(taps):
                    s = t - (taps - 1) + k
                    if s >= 0:
                        acc += float(weight[d, k]) * float(x[b, s, d])
                out[b, t, d] = acc / (1 + torch.exp(torch.tensor(-acc, dtype=torch.float64))) if silu else acc
    return out


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| (float64, on the CPU)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_reference_matches_a_naive_loop_and_f_conv1d(silu, bias):
    x, weight, b = (
        t.detach().cpu() if t is not None else None for t in inputs(length=6, channels=3, taps=3, bias=bias)
    )
    out = causal_conv1d_reference(x, weight, b, silu)
    torch.testing.assert_close(out, naive_loop(x, weight, b, silu))
    # Hugging Face's MambaMixer: conv1d with groups=D and padding K−1, truncated to T positions.
    conv = F.conv1d(x.transpose(1, 2), weight[:, None, :], b, padding=weight.shape[1] - 1, groups=x.shape[-1])
    torch.testing.assert_close(out, (F.silu(conv) if silu else conv)[..., : x.shape[1]].transpose(1, 2))


def test_reference_initial_state_equals_prepending_those_inputs():
    x, weight, b = (t.detach().cpu() for t in inputs(length=7, channels=5, taps=4))
    before = torch.randn(2, 3, 5, dtype=torch.float64)  # (B, K−1, D): the inputs before position 0
    whole = causal_conv1d_reference(torch.cat([before, x], dim=1), weight, b)
    continued = causal_conv1d_reference(x, weight, b, initial_state=before.transpose(1, 2))
    torch.testing.assert_close(continued, whole[:, 3:])


def test_reference_keeps_dtype_and_computes_in_float32():
    x, weight, b = (t.detach().cpu().to(torch.bfloat16) for t in inputs())
    out = causal_conv1d_reference(x, weight, b)
    assert out.dtype == torch.bfloat16
    want = causal_conv1d_reference(x.float(), weight.float(), b.float())
    assert torch.equal(out, want.to(torch.bfloat16))


@pytest.fixture(params=[8, None], ids=["block8", "block_default"])
def block_t(request, monkeypatch):
    """The kernels' time block: 8 positions (many blocks, each walked in one or two batches of
    rows, the halo crossing block edges) or the default (one block for these lengths)."""
    if request.param is not None:
        monkeypatch.setattr(conv_ops, "BLOCK_T", request.param)
    return conv_ops.BLOCK_T


@requires_triton
@pytest.mark.parametrize(
    "batch,length,channels,taps,bias,silu,strided",
    [
        (2, 21, 37, 4, True, True, True),  # Mamba's K, D not a power of two, T ragged, xz view
        (2, 21, 37, 4, False, False, False),  # no bias, no SiLU
        (1, 1, 37, 4, True, True, True),  # one position: every earlier tap is padding
        (2, 19, 300, 3, False, True, True),  # two channel blocks, the second ragged
        (3, 17, 20, 2, True, False, False),  # K = 2
        (2, 5, 16, 3, True, True, False),  # T < K + 2
        (1, 9, 8, 1, True, True, False),  # K = 1: no window
    ],
)
def test_triton_matches_reference_forward_and_gradients(block_t, batch, length, channels, taps, bias, silu, strided):
    x, weight, b = inputs(batch, length, channels, taps, bias, strided)
    leaves = [x, weight] + ([b] if bias else [])
    g = torch.Generator().manual_seed(1)
    weights_out = torch.randn(batch, length, channels, generator=g, dtype=torch.float64).to(DEVICE)

    want = causal_conv1d_reference(x, weight, b, silu)
    grads_want = torch.autograd.grad((want * weights_out).sum(), leaves)
    got = causal_conv1d(x, weight, b, silu, backend="triton")
    grads_got = torch.autograd.grad((got * weights_out).sum(), leaves)

    assert got.shape == want.shape and got.dtype == x.dtype
    for name, u, v in zip(["out", "dx", "dweight", "dbias"], [got, *grads_got], [want, *grads_want]):
        assert u.dtype == v.dtype, name
        assert relative_error(u, v) <= TOLERANCE, name


@requires_triton
def test_triton_runs_bfloat16_and_returns_bfloat16():
    x, weight, b = (t.detach().to(torch.bfloat16).requires_grad_() for t in inputs(2, 21, 37, 4, strided=True))
    out = causal_conv1d(x, weight, b, backend="triton")
    out.float().square().sum().backward()
    exact = [t.detach().double().requires_grad_() for t in (x, weight, b)]
    want = causal_conv1d_reference(*exact)
    want.square().sum().backward()
    assert out.dtype == x.grad.dtype == weight.grad.dtype == b.grad.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: storing the output costs up to 2^-8 relative (2^-7 in the
    # interpreter, which truncates), and the gradients start from that output; the interpreter
    # lands at ≤ 6.5e-3 (output) and ≤ 8.5e-3 (gradients) over four seeds.
    assert relative_error(out, want) <= 1e-2
    for got, leaf in zip([x.grad, weight.grad, b.grad], exact):
        assert relative_error(got, leaf.grad) <= 2e-2


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("length", [2, 9])  # fewer positions than taps, and more
def test_step_token_by_token_reproduces_the_convolution(backend, length):
    x, weight, b = (t.detach() for t in inputs(2, length, 37, 4, dtype=torch.float32))
    state = torch.zeros(2, 37, 4, device=DEVICE)
    outs = [causal_conv1d_step(x[:, t], state, weight, b, backend=backend) for t in range(length)]
    want = causal_conv1d_reference(x.double(), weight.double(), b.double())
    assert relative_error(torch.stack(outs, dim=1), want) <= TOLERANCE
    last = F.pad(x, (0, 0, 4, 0))[:, -4:]  # the last K inputs, zeros before position 0
    assert torch.equal(state, last.transpose(1, 2))


@requires_triton
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_triton_step_equals_the_reference_step(silu, bias):
    x, weight, b = (t.detach() if t is not None else None for t in inputs(3, 1, 37, 3, bias, dtype=torch.float32))
    # The state's K axis strided (a (B, K, D) buffer seen as (B, D, K)): the kernel takes strides.
    state = torch.randn(3, 3, 37, device=DEVICE).transpose(1, 2)
    state_ref = state.clone()
    got = causal_conv1d_step(x[:, 0], state, weight, b, silu, backend="triton")
    want = causal_conv1d_step_reference(x[:, 0], state_ref, weight, b, silu)
    assert torch.equal(state, state_ref)
    torch.testing.assert_close(got, want)


@requires_triton
def test_triton_step_with_a_bfloat16_state_and_a_float32_input():
    x, weight, b = (t.detach() for t in inputs(2, 1, 37, 4, dtype=torch.float32))
    # x exactly representable in bf16: the interpreter truncates float32 → bf16 where a GPU rounds
    # to nearest, and this test is about the mixed dtypes, not the rounding.
    x = x.to(torch.bfloat16).float()
    state = torch.randn(2, 37, 4, device=DEVICE).to(torch.bfloat16)
    state_ref = state.clone()
    got = causal_conv1d_step(x[:, 0], state, weight, b, backend="triton")
    want = causal_conv1d_step_reference(x[:, 0], state_ref, weight, b)
    assert got.dtype == torch.float32 and torch.equal(state, state_ref)
    torch.testing.assert_close(got, want)


@requires_triton
def test_custom_ops_pass_opcheck():
    x, weight, b = inputs(1, 5, 3, 3)
    torch.library.opcheck(torch.ops.phaselm.causal_conv1d_fwd.default, (x, weight, b, True))
    torch.library.opcheck(torch.ops.phaselm.causal_conv1d_fwd.default, (x, weight, None, False))
    dout = torch.randn_like(x)
    torch.library.opcheck(torch.ops.phaselm.causal_conv1d_bwd.default, (dout, x.detach(), weight.detach(), None, True))
    state = torch.randn(2, 3, 3, device=DEVICE)
    x_step = torch.randn(2, 3, device=DEVICE)
    torch.library.opcheck(
        torch.ops.phaselm.causal_conv1d_update.default, (x_step, state, weight.detach(), b.detach(), True)
    )


@requires_triton
def test_torch_compile_keeps_the_kernels_opaque():
    x, weight, b = inputs(2, 9, 5, 4, strided=True)

    def block(x, weight, b):
        return causal_conv1d(x, weight, b, backend="triton") * x

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = compiled(x, weight, b)
    grads_got = torch.autograd.grad(got.sum(), [x, weight, b])
    want = block(x, weight, b)
    grads_want = torch.autograd.grad(want.sum(), [x, weight, b])
    assert torch.equal(got, want)
    for u, v in zip(grads_got, grads_want):
        assert torch.equal(u, v)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice for CPU tensors")
def test_auto_is_the_reference_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(CAUSAL_CONV1D.env_var, raising=False)
    assert resolve(CAUSAL_CONV1D, "auto", "cpu") == "reference"
    x, weight, b = (t.detach() for t in inputs())
    assert torch.equal(causal_conv1d(x, weight, b), causal_conv1d_reference(x, weight, b))


@requires_triton
def test_triton_is_used_when_asked():
    assert resolve(CAUSAL_CONV1D, "triton", DEVICE) == "triton"
    x, weight, b = (t.detach() for t in inputs())
    assert torch.equal(
        causal_conv1d(x, weight, b, backend="triton"), torch.ops.phaselm.causal_conv1d_fwd(x, weight, b, True)
    )


def test_unknown_backend_and_bad_shapes_are_refused():
    x, weight, b = (t.detach() for t in inputs())
    with pytest.raises(ValueError, match="backend"):
        causal_conv1d(x, weight, b, backend="magic")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, weight.t(), b)
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_step(x[:, 0], torch.zeros(2, 5, 3, dtype=x.dtype, device=DEVICE), weight, b)
