"""The token mixers in layers/: RWKV-6 time mix and the Mamba-2 mixer carry their recurrent state
exactly (prefill, then chunks, then single steps = one pass), are causal, and RWKV-6's
reference and chunked backends agree with gradients."""

from __future__ import annotations

import pytest
import torch

from phaselm.layers.mamba2 import Mamba2Mixer
from phaselm.layers.rwkv6 import RWKV6TimeMix
from phaselm.ops.backend import chosen
from phaselm.ops.causal_conv1d import causal_conv1d


def layer(kind):
    torch.manual_seed(0)
    if kind == "rwkv6":
        module = RWKV6TimeMix(32, head_dim=8, mix_rank=4, decay_rank=8, layer_id=1, n_layers=3, chunk_size=4)
        with torch.no_grad():  # make the data-dependent parts matter (the official init starts them at 0)
            module.mix_lora_a.normal_(std=0.3)
            module.decay_lora_a.normal_(std=0.3)
        return module
    return Mamba2Mixer(32, state_size=8, expand=2, head_dim=16, chunk_size=4)


@pytest.mark.parametrize("kind", ["rwkv6", "mamba2"])
def test_layer_prefill_then_steps_equals_one_pass(kind):
    mixer = layer(kind)
    x = torch.randn(2, 12, 32)
    full, final = mixer(x)
    out, state = mixer(x[:, :5])
    outs = [out]
    out, state = mixer(x[:, 5:8], state)  # a second chunk continues the first
    outs.append(out)
    for t in range(8, 12):
        out, state = mixer(x[:, t : t + 1], state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rwkv6", "mamba2"])
def test_layer_is_causal(kind):
    mixer = layer(kind)
    x = torch.randn(2, 12, 32)
    changed = x.clone()
    changed[:, 7:] += 1.0
    torch.testing.assert_close(mixer(changed)[0][:, :7], mixer(x)[0][:, :7], rtol=0, atol=0)
    assert not torch.allclose(mixer(changed)[0][:, 7:], mixer(x)[0][:, 7:])


def test_rwkv6_layer_reference_and_chunked_backends_agree_with_gradients():
    a, b = layer("rwkv6"), layer("rwkv6")
    b.backend = "reference"
    x = torch.randn(2, 10, 32, requires_grad=True)
    ya, yb = a(x)[0], b(x)[0]
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_rwkv6_layer_bad_shape():
    with pytest.raises(ValueError, match="head_dim 12 must divide hidden_size 32"):
        RWKV6TimeMix(32, head_dim=12)


def test_mamba2_layer_conv_triton_equals_reference_with_gradients_and_padding(monkeypatch):
    """The mixer's short convolution through the Triton kernel (interpreter on CPU) equals the
    reference, forward and every gradient, on a left-padded batch."""
    x = torch.randn(2, 9, 32, requires_grad=True)
    mask = torch.ones(2, 9)
    mask[1, :3] = 0  # ragged: the second row is three positions shorter
    outputs, grads = [], []
    for backend in ("reference", "triton"):
        monkeypatch.setenv("PHASELM_BACKEND_CAUSAL_CONV1D", backend)
        mixer = layer("mamba2")
        x.grad = None
        out = mixer(x, mask=mask)[0]
        out.square().sum().backward()
        assert chosen()["causal_conv1d@cpu"] == backend
        outputs.append(out.detach())
        grads.append([x.grad.clone(), *[p.grad for p in mixer.parameters()]])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_mamba2_layer_conv_equals_pytorch_depthwise_conv():
    """The layer's convolution is the depthwise Conv1d it declares, applied causally."""
    mixer = layer("mamba2")
    x = torch.randn(2, 7, 32)
    xbc = mixer.in_proj(x).split([mixer.d_inner, mixer.conv_channels, mixer.heads], dim=-1)[1]
    padded = torch.nn.functional.pad(xbc.transpose(1, 2), (mixer.kernel - 1, 0))
    want = torch.nn.functional.silu(mixer.conv(padded).transpose(1, 2))
    got = causal_conv1d(xbc, mixer.conv.weight[:, 0], mixer.conv.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
