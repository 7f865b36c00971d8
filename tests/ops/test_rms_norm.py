"""The one-kernel RMSNorm equals transformers' MambaBlock norm, roundings included."""

from __future__ import annotations

import pytest
import torch

from phaselm.ops import rms_norm as norm_ops
from phaselm.ops.rms_norm import rms_norm, rms_norm_reference

requires_triton = pytest.mark.skipif(norm_ops.triton is None, reason="Triton is not installed")


@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)],
)
def test_reference_is_transformers_mamba_norm(x_dtype, w_dtype):
    from transformers.models.mamba.modeling_mamba import MambaRMSNorm

    norm = MambaRMSNorm(24, eps=1e-5).to(w_dtype)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 24).to(x_dtype)
    with torch.no_grad():
        assert torch.equal(rms_norm_reference(x, norm.weight, 1e-5), norm(x.to(w_dtype)))


# Triton 3.6's interpreter rounds float32 → bf16 toward zero (the GPU rounds to nearest), so the
# bf16 cases run where the kernels compile (benchmarks/check_fast_paths.py on the GPU).
bf16_on_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="the interpreter truncates bf16 conversions")


@requires_triton
@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [
        (torch.float32, torch.float32),
        pytest.param(torch.float32, torch.bfloat16, marks=bf16_on_gpu),
        pytest.param(torch.bfloat16, torch.bfloat16, marks=bf16_on_gpu),
    ],
)
def test_triton_equals_reference(x_dtype, w_dtype):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = (torch.randn(7, 37, device=device) * 3).to(x_dtype)  # a width that is not a power of two
    w = torch.randn(37, device=device).to(w_dtype)
    fast = rms_norm(x, w, 1e-5, backend="triton")
    assert fast.dtype == w_dtype and fast.shape == x.shape
    torch.testing.assert_close(
        fast, rms_norm_reference(x, w, 1e-5), rtol=1e-5 if w_dtype == torch.float32 else 1e-2, atol=1e-5
    )


@requires_triton
def test_triton_refuses_a_gradient():
    with pytest.raises(RuntimeError, match="no backward"):
        rms_norm(torch.randn(2, 4, requires_grad=True), torch.ones(4), 1e-5, backend="triton")
