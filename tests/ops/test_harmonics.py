"""The fused harmonics kernel equals the direct reference, forward and gradients.

On CPU the kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU
the same tests run the compiled kernel.
"""

from __future__ import annotations

import pytest
import torch

from phaselm.ops import harmonics as ops

pytestmark = pytest.mark.skipif(ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,n_harmonics", [((3, 5, 37), 7), ((2, 192), 32), ((1, 1, 2), 1)])
def test_fused_matches_reference_forward_and_gradients(shape, n_harmonics):
    g = torch.Generator().manual_seed(0)
    theta = ((torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 8).to(DEVICE)
    grad_re = torch.randn(*shape[:-1], n_harmonics, generator=g, dtype=torch.float64).to(DEVICE)
    grad_im = torch.randn(*shape[:-1], n_harmonics, generator=g, dtype=torch.float64).to(DEVICE)

    exact = theta.clone().requires_grad_()
    n = torch.arange(1, n_harmonics + 1, device=DEVICE, dtype=torch.float64)
    angles = exact.unsqueeze(-1) * n
    re_ref, im_ref = torch.cos(angles).mean(-2), torch.sin(angles).mean(-2)
    (re_ref * grad_re + im_ref * grad_im).sum().backward()

    fused = theta.float().requires_grad_()
    re, im = ops.harmonics_fused(fused, n_harmonics)
    (re * grad_re.float() + im * grad_im.float()).sum().backward()

    # The float32 direct form is the yardstick: the kernel must be about as close to the
    # float64 truth as it is (its angle recurrence trades cos/sin calls for multiply-adds).
    direct = theta.float().requires_grad_()
    re32, im32 = ops.harmonics_reference(direct, n_harmonics)
    (re32 * grad_re.float() + im32 * grad_im.float()).sum().backward()

    def error(got, want):
        return (got.double() - want).abs().max().item()

    assert re.shape == im.shape == (*shape[:-1], n_harmonics)
    for got, yardstick, want in ((re, re32, re_ref), (im, im32, im_ref), (fused.grad, direct.grad, exact.grad)):
        assert error(got, want.detach()) <= 2 * error(yardstick, want.detach()) + 1e-6


def test_reference_is_what_the_dispatcher_uses_on_cpu_tensors():
    theta = torch.randn(4, 10)
    re, im = ops.harmonics(theta, 3)
    re_ref, im_ref = ops.harmonics_reference(theta, 3)
    assert torch.equal(re, re_ref) and torch.equal(im, im_ref)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        ops.harmonics(torch.zeros(2, 3), 2, backend="magic")


def test_synchronised_phases_give_unit_harmonics():
    theta = torch.full((2, 16), 0.7, device=DEVICE)
    re, im = ops.harmonics_fused(theta, 4)
    n = torch.arange(1, 5, device=DEVICE, dtype=torch.float32)
    torch.testing.assert_close(re, torch.cos(0.7 * n).expand(2, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(im, torch.sin(0.7 * n).expand(2, 4), atol=1e-6, rtol=0)
