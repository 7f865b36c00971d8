"""Mamba-1's selective scan: the Triton kernels equal the sequential reference, forward and every gradient.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run the compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phaselm.ops import selective_scan as scan_ops
from phaselm.ops.backend import resolve
from phaselm.ops.selective_scan import (
    SCAN,
    selective_scan,
    selective_scan_reference,
    selective_state_step,
    selective_state_step_reference,
)

requires_triton = pytest.mark.skipif(scan_ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The kernels compute in float32 against the float64 reference; each output is a sum of N
# products of a state built from decays ≤ 1, so errors land near 1e-7 relative. A wrong or
# missing term is 1e-2 or more.
TOLERANCE = 2e-5
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def inputs(
    batch=2,
    length=37,
    channels=5,
    n=4,
    dtype=torch.float64,
    seed=0,
    with_z=True,
    with_d=True,
    with_bias=True,
    with_state=True,
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    dt = torch.randn(batch, length, channels, generator=g, dtype=dtype) - 1.0
    A = -torch.rand(channels, n, generator=g, dtype=dtype) * 3 - 0.1
    B = torch.randn(batch, length, n, generator=g, dtype=dtype)
    C = torch.randn(batch, length, n, generator=g, dtype=dtype)
    D = torch.randn(channels, generator=g, dtype=dtype) if with_d else None
    z = torch.randn(batch, length, channels, generator=g, dtype=dtype) if with_z else None
    bias = torch.randn(channels, generator=g, dtype=dtype) * 0.5 if with_bias else None
    state = torch.randn(batch, channels, n, generator=g, dtype=dtype) if with_state else None
    return {
        k: (v.requires_grad_() if v is not None else None) for k, v in zip(NAMES, (x, dt, A, B, C, D, z, bias, state))
    }


def naive(x, dt, A, B, C, D, z, dt_bias, initial_state, softplus=True):
    """Element by element: h ← e^{ΔA} h + Δ x B, y = Σ_n C h + D x, out = y·silu(z)."""
    batch, length, channels = x.shape
    h = initial_state.clone() if initial_state is not None else torch.zeros(batch, channels, A.shape[1], dtype=x.dtype)
    out = torch.zeros_like(x)
    for b in range(batch):
        for t in range(length):
            for d in range(channels):
                delta = dt[b, t, d] + (dt_bias[d] if dt_bias is not None else 0)
                delta = F.softplus(delta) if softplus else delta
                h[b, d] = torch.exp(delta * A[d]) * h[b, d] + delta * x[b, t, d] * B[b, t]
                y = (h[b, d] * C[b, t]).sum() + (D[d] * x[b, t, d] if D is not None else 0)
                out[b, t, d] = y * F.silu(z[b, t, d]) if z is not None else y
    return out, h


def compare(fast, ref, tolerance=TOLERANCE):
    err = (fast.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)
    assert err < tolerance, f"relative error {err:.2e}"


def test_reference_matches_a_naive_loop():
    args = {k: (v.detach() if v is not None else None) for k, v in inputs(length=6, channels=3).items()}
    out, state = selective_scan_reference(**args)
    out_naive, state_naive = naive(**args)
    torch.testing.assert_close(out, out_naive)
    torch.testing.assert_close(state, state_naive)


def test_reference_matches_hugging_face_slow_path():
    """Our reference computes what transformers' torch fallback does (in float32, where it rounds nothing)."""
    from transformers.models.mamba import modeling_mamba

    args = inputs(length=9, channels=6, n=3, dtype=torch.float32, with_state=False)
    args = {k: (v.detach() if v is not None else None) for k, v in args.items()}
    hf_out, hf_state = modeling_mamba.mamba_selective_scan.__wrapped__(
        args["x"].transpose(1, 2),
        args["dt"].transpose(1, 2),
        args["A"],
        args["B"].transpose(1, 2),
        args["C"].transpose(1, 2),
        D=args["D"],
        z=args["z"].transpose(1, 2),
        delta_bias=args["dt_bias"],
        delta_softplus=True,
        return_last_state=True,
    )
    out, state = selective_scan_reference(**{k: v for k, v in args.items() if k != "initial_state"})
    torch.testing.assert_close(out, hf_out.transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, hf_state, rtol=1e-5, atol=1e-5)


@requires_triton
@pytest.mark.parametrize(
    "shape",
    [
        dict(batch=2, length=37, channels=5, n=4),  # ragged: 37 = 2 chunks + 5
        dict(batch=1, length=1, channels=3, n=16),
        dict(batch=3, length=16, channels=40, n=16),  # exactly one chunk; several channel blocks
        dict(batch=1, length=50, channels=7, n=3),
    ],
)
def test_triton_equals_reference_forward_and_every_gradient(shape):
    args = inputs(**shape)
    ref_out, ref_state = selective_scan_reference(**args)
    weights = torch.randn_like(ref_out), torch.randn_like(ref_state)
    ref_grads = torch.autograd.grad((ref_out * weights[0]).sum() + (ref_state * weights[1]).sum(), list(args.values()))
    out, state = selective_scan(**args, backend="triton")
    assert out.dtype == args["x"].dtype and state.dtype == torch.float32
    compare(out, ref_out)
    compare(state, ref_state)
    grads = torch.autograd.grad((out * weights[0]).sum() + (state * weights[1]).sum(), list(args.values()))
    for name, fast, ref in zip(NAMES, grads, ref_grads):
        assert fast.shape == ref.shape, name
        compare(fast, ref)


@requires_triton
@pytest.mark.parametrize("missing", ["z", "D", "dt_bias", "initial_state"])
def test_triton_without_optional_inputs(missing):
    args = inputs(
        length=21, **{f"with_{dict(initial_state='state', dt_bias='bias', D='d').get(missing, missing)}": False}
    )
    present = [k for k, v in args.items() if v is not None]
    ref_out, _ = selective_scan_reference(**args)
    out, _ = selective_scan(**args, backend="triton")
    compare(out, ref_out)
    w = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad((ref_out * w).sum(), [args[k] for k in present])
    grads = torch.autograd.grad((out * w).sum(), [args[k] for k in present])
    for fast, ref in zip(grads, ref_grads):
        compare(fast, ref)


@requires_triton
def test_triton_without_softplus():
    args = inputs(length=19)
    args["dt"] = (args["dt"].detach().abs() * 0.3).requires_grad_()  # Δ must be positive
    ref_out, _ = selective_scan_reference(**args, dt_softplus=False)
    out, _ = selective_scan(**args, dt_softplus=False, backend="triton")
    compare(out, ref_out)
    w = torch.randn_like(ref_out)
    for fast, ref in zip(
        torch.autograd.grad((out * w).sum(), args["dt"]), torch.autograd.grad((ref_out * w).sum(), args["dt"])
    ):
        compare(fast, ref)


@requires_triton
def test_strided_views_as_hugging_face_lays_them_out():
    """x and z are halves of one (B, T, 2D) projection; B and C slices of x_proj's output."""
    g = torch.Generator().manual_seed(3)
    batch, length, channels, n, rank = 2, 23, 6, 4, 3
    xz = torch.randn(batch, length, 2 * channels, generator=g, dtype=torch.float64)
    proj = torch.randn(batch, length, rank + 2 * n, generator=g, dtype=torch.float64)
    x, z = xz.split(channels, dim=-1)
    _, B, C = proj.split([rank, n, n], dim=-1)
    dt = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    A = -torch.rand(channels, n, generator=g, dtype=torch.float64)
    assert not x.is_contiguous() and not B.is_contiguous()
    out, state = selective_scan(x, dt, A, B, C, z=z, backend="triton")
    ref_out, ref_state = selective_scan_reference(
        x.contiguous(), dt, A, B.contiguous(), C.contiguous(), z=z.contiguous()
    )
    compare(out, ref_out)
    compare(state, ref_state)


@requires_triton
def test_bf16_inputs_keep_a_float32_state():
    args = {
        k: (v.detach() if v is not None else None)
        for k, v in inputs(length=33, channels=8, dtype=torch.float32).items()
    }
    bf = {k: (v.bfloat16() if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    out, state = selective_scan(**bf, backend="triton")
    ref_out, ref_state = selective_scan_reference(**{k: (v.double() if v is not None else None) for k, v in bf.items()})
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    compare(out, ref_out, 1e-2)
    compare(state, ref_state, 1e-5)  # the state sees bf16 inputs but no bf16 rounding of its own


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_triton)])
def test_state_step_continues_the_scan(backend):
    """Scanning a prefix, then stepping position by position, equals scanning the whole sequence."""
    args = {
        k: (v.detach() if v is not None else None)
        for k, v in inputs(length=12, channels=6, dtype=torch.float32).items()
    }
    full, full_state = selective_scan_reference(**args)
    prefix = 7
    head = {k: (v[:, :prefix] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    _, state = selective_scan_reference(**head)
    state = state.float().contiguous()
    for t in range(prefix, 12):
        out = selective_state_step(
            state,
            args["x"][:, t],
            args["dt"][:, t],
            args["A"],
            args["B"][:, t],
            args["C"][:, t],
            args["D"],
            args["z"][:, t],
            args["dt_bias"],
            backend=backend,
        )
        torch.testing.assert_close(out, full[:, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, full_state.float(), rtol=1e-5, atol=1e-5)


def test_step_reference_updates_in_place_and_returns_input_dtype():
    state = torch.zeros(2, 3, 4)
    out = selective_state_step_reference(
        state, torch.ones(2, 3), torch.zeros(2, 3), -torch.ones(3, 4), torch.ones(2, 4), torch.ones(2, 4)
    )
    assert out.shape == (2, 3) and state.abs().sum() > 0


def test_auto_takes_the_reference_on_cpu_and_the_kernel_on_cuda():
    assert resolve(SCAN, "auto", "cpu") == "reference"
    if scan_ops.triton is not None:
        assert resolve(SCAN, "auto", "cuda") == "triton"
    with pytest.raises(ValueError, match="selective_scan backend"):
        resolve(SCAN, "chunked", "cpu")


@requires_triton
def test_custom_ops_pass_opcheck():
    args = {
        k: (v.detach().float() if v is not None else None)
        for k, v in inputs(batch=1, length=5, channels=3, n=2).items()
    }
    ordered = [args[k] for k in NAMES] + [True]
    torch.library.opcheck(torch.ops.phaselm.selective_scan_fwd, ordered, test_utils=("test_schema", "test_faketensor"))
