"""Hugging Face Mamba and Mamba-2 routed to PhaseLM's ops equal transformers' own path.

Logits, every parameter's gradient, padding masks, cached generation (with and without a
grafted core), and exact removal. On CPU the Triton kernels run in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from phaselm import PhaseCoreConfig, graft
from phaselm.decoding import StepDecoder, greedy_decode
from phaselm.fast_mamba import fast_mamba, routing, scan_path
from phaselm.ops import selective_scan as scan_ops

requires_triton = pytest.mark.skipif(scan_ops.triton is None, reason="Triton is not installed")
BACKENDS = ["reference", pytest.param("triton", marks=requires_triton)]


def build_mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=64, hidden_size=32, state_size=8, num_heads=4, head_dim=16, n_groups=2, expand=2,
        num_hidden_layers=2, conv_kernel=4, chunk_size=8, bos_token_id=1, eos_token_id=None, pad_token_id=0,
    )
    return Mamba2ForCausalLM(config).eval()


@pytest.fixture
def ids():
    return torch.randint(2, 64, (2, 13))


def test_auto_on_cpu_keeps_transformers_path(tiny_model):
    model = tiny_model("mamba")
    handle = fast_mamba(model)
    assert handle.path == "transformers" and not handle.modules
    assert scan_path(model) == "transformers"
    assert fast_mamba(tiny_model("gpt2")).path == "none"


def test_auto_routes_a_model_bound_for_the_gpu_before_it_moves(tiny_model, monkeypatch):
    """`phaselm pretrain` builds its Mamba on the CPU and training moves it to the GPU: routed by
    where it will run, it trains on our kernels rather than transformers' Python-loop scan."""
    monkeypatch.setattr("phaselm.fast_mamba.mamba_ssm_installed", lambda: False)
    model = tiny_model("mamba")
    handle = fast_mamba(model, device="cuda")
    assert handle.path == "phaselm-triton" and handle.modules
    handle.remove()
    assert routing(model) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_and_every_gradient_equal_transformers(tiny_model, ids, backend):
    reference, fast = tiny_model("mamba"), tiny_model("mamba")
    handle = fast_mamba(fast, backend)
    assert (
        handle.path == f"phaselm-{backend}" and len(handle.modules) == 8 and scan_path(fast) == handle.path
    )  # 4 mixers, 4 blocks
    for model in (reference, fast):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    torch.testing.assert_close(fast(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(
            p_fast.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_padding_mask_matches_transformers(tiny_model, backend):
    reference, fast = tiny_model("mamba"), tiny_model("mamba")
    fast_mamba(fast, backend)
    ids = torch.randint(2, 64, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            fast(input_ids=ids, attention_mask=mask).logits,
            reference(input_ids=ids, attention_mask=mask).logits,
            rtol=1e-4,
            atol=1e-5,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_generation_equals_transformers_and_full_forward(tiny_model, ids, backend):
    reference, fast = tiny_model("mamba"), tiny_model("mamba")
    fast_mamba(fast, backend)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    generated = fast.generate(ids, **kwargs)
    assert torch.equal(generated, reference.generate(ids, **kwargs))
    # Each cached step's logits equal a full forward over the sequence so far.
    tokens = greedy_decode(fast, ids, 4, graph=False)
    with torch.no_grad():
        full = fast(input_ids=torch.cat([ids, tokens], dim=1)).logits
    torch.testing.assert_close(tokens, full[:, ids.shape[1] - 1 : -1].argmax(-1))
    decoder = StepDecoder(fast, ids, graph=False)
    torch.testing.assert_close(decoder.first_logits, full[:, ids.shape[1] - 1].float(), rtol=1e-4, atol=1e-5)
    for i in range(3):
        torch.testing.assert_close(
            decoder.step(tokens[:, i : i + 1]), full[:, ids.shape[1] + i].float(), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("mode", ["token", "recurrent"])
def test_cached_generation_with_a_grafted_core(tiny_model, ids, mode):
    reference, fast = tiny_model("mamba"), tiny_model("mamba")
    # Our reference ops: the Triton kernels' cached generation is the test above (the
    # interpreter is slow), and what is checked here is the graft's carried phases.
    fast_mamba(fast, "reference")
    outputs = []
    for model in (reference, fast):
        torch.manual_seed(1)
        handle = graft(model, PhaseCoreConfig(n_oscillators=5, mode=mode, alpha_init=0.5))
        outputs.append(model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))
        handle.remove()
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_gives_back_the_class_forward(tiny_model, ids, backend):
    model = tiny_model("mamba")
    with torch.no_grad():
        before = model(input_ids=ids).logits
    handle = fast_mamba(model, backend)
    assert fast_mamba(model, backend) is handle and routing(model) is handle
    handle.remove()
    assert routing(model) is None
    assert all("forward" not in vars(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mamba2_logits_gradients_and_generation_equal_transformers(ids, backend):
    torch.manual_seed(0)
    reference = build_mamba2()
    torch.manual_seed(0)
    fast = build_mamba2()
    handle = fast_mamba(fast, backend)
    assert len(handle.modules) == 2
    for model in (reference, fast):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(
            p_fast.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(fast.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_step_decoder_refuses_a_model_without_cache(raises_phaselm):
    class NoCache(torch.nn.Module):
        def forward(self, input_ids, use_cache=False, past_key_values=None):
            return type("Out", (), {"logits": torch.zeros(1, 1, 3), "past_key_values": None})()

    with raises_phaselm("returned no cache"):
        StepDecoder(NoCache(), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_output_transform_acts_before_the_gate(tiny_model, ids, backend):
    """An identity transform unfuses the gate without changing logits or gradients; a transform
    to ones leaves the mixer out_proj(silu(gate)): it acts before the gate."""
    reference, fast = tiny_model("mamba"), tiny_model("mamba")
    handle = fast_mamba(fast, backend)
    mixers = [layer.mixer for layer in fast.backbone.layers]
    seen = []
    for mixer in mixers:
        mixer.scan_output_transform = lambda y: seen.append(y.shape) or y
    for model in (reference, fast):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    assert seen[0] == (*ids.shape, mixers[0].intermediate_size)
    torch.testing.assert_close(fast(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    for (name, p_ref), (_, p_fast) in zip(reference.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    mixers[0].scan_output_transform = torch.ones_like  # before the gate: out_proj(1 · silu(gate))
    with torch.no_grad():
        hidden = torch.randn(2, 5, mixers[0].hidden_size)
        _, gate = mixers[0].in_proj(hidden).chunk(2, dim=-1)
        expected = mixers[0].out_proj(torch.nn.functional.silu(gate))
        torch.testing.assert_close(mixers[0](hidden), expected, rtol=1e-5, atol=1e-6)
    handle.remove()
