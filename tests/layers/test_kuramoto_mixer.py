"""The causal Kuramoto token mixer (phaselm.layers.kuramoto_mixer): reference == SDPA (forward and
every gradient, float64, ragged lengths), causality, cached == full, left padding, R in [0, 1],
the Kuramoto dynamics synchronising under uniform strong coupling, and K-SSM with the mixer.
The model-level contract (causality, cached generate, save/load, reference == fast, padding)
also runs on it: tests/models/test_model_contract.py, family "kssm-kuramoto"."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from phaselm.errors import PhaseLMError
from phaselm.layers.kuramoto_mixer import (
    KuramotoMixer,
    KuramotoMixerConfig,
    allowed_keys,
    mean_field,
    mean_field_loop,
    mean_field_reference,
    rotate_by_position,
)
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM
from phaselm.ops import backend

HIDDEN = 16
TINY = KuramotoMixerConfig(heads=2, oscillators=3, key_dim=4, steps=2, dt=0.5)


def mixer(backend_name: str = "auto", dtype=torch.float64, **overrides) -> KuramotoMixer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, backend=backend_name, **overrides)
    return KuramotoMixer(HIDDEN, cfg).to(dtype).eval()


def both_paths(**overrides) -> tuple[KuramotoMixer, KuramotoMixer]:
    sdpa, reference = mixer("sdpa", **overrides), mixer("reference", **overrides)
    reference.load_state_dict(sdpa.state_dict())
    return sdpa, reference


def hidden(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [1, 5, 13])
def test_the_three_mean_fields_agree_with_padding_and_a_past(length):
    gen = torch.Generator().manual_seed(length)
    past = 4
    q = torch.randn(2, 2, length, 4, dtype=torch.float64, generator=gen)
    k = torch.randn(2, 2, past + length, 4, dtype=torch.float64, generator=gen)
    z = torch.randn(2, 2, past + length, 6, dtype=torch.float64, generator=gen)
    past_real = torch.tensor([[False, False, True, True], [True, True, True, True]])
    new_real = torch.ones(2, length, dtype=torch.bool)
    allowed = allowed_keys(past_real, new_real)
    loop = mean_field_loop(q, k, z, allowed)
    torch.testing.assert_close(mean_field_reference(q, k, z, allowed), loop)
    torch.testing.assert_close(mean_field(q, k, z, allowed, "sdpa"), loop)
    # None = plain causal (no past): the same as the explicit causal mask
    plain = mean_field_loop(q, k[:, :, past:], z[:, :, past:], None)
    torch.testing.assert_close(mean_field(q, k[:, :, past:], z[:, :, past:], None, "sdpa"), plain)
    torch.testing.assert_close(mean_field_reference(q, k[:, :, past:], z[:, :, past:], None), plain)


def test_a_padded_key_is_never_seen_and_a_padded_query_sees_only_itself():
    allowed = allowed_keys(None, torch.tensor([[False, False, True, True]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize("length", [1, 6, 11])
@pytest.mark.parametrize("options", [{}, {"readout": "phases", "rotary": False}], ids=["default", "phases-norotary"])
def test_reference_equals_sdpa_forward_and_every_gradient(length, options):
    sdpa, reference = both_paths(**options)
    x = hidden(2, length)
    readout = torch.randn(2, length, HIDDEN, dtype=torch.float64)
    results = []
    for layer in (sdpa, reference):
        x_in = x.clone().requires_grad_()
        out, order, _ = layer(x_in, use_cache=False)
        ((out * readout).sum() + order.square().sum()).backward()
        results.append((out, order, x_in.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (out_s, order_s, dx_s, grads_s), (out_r, order_r, dx_r, grads_r) = results
    torch.testing.assert_close(out_s, out_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(order_s, order_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx_s, dx_r, rtol=1e-10, atol=1e-12)
    assert set(grads_s) == {"in_proj.weight", "out_proj.weight", "coupling_logit"}
    for name, grad in grads_s.items():
        # One token couples only to itself (sin 0 = 0): K gets no gradient there, rightly.
        assert grad is not None and (grad.abs().sum() > 0) == (length > 1 or name != "coupling_logit"), name
        torch.testing.assert_close(grad, grads_r[name], rtol=1e-10, atol=1e-12, msg=name)


def test_auto_is_sdpa_logged_and_the_environment_refines_it(monkeypatch):
    layer = mixer("auto")
    layer(hidden(1, 3))
    assert backend.chosen()["kuramoto_mixer@cpu"] == "sdpa"
    monkeypatch.setenv("PHASELM_BACKEND_KURAMOTO_MIXER", "reference")
    layer(hidden(1, 3))
    assert backend.chosen()["kuramoto_mixer@cpu"] == "reference"


@pytest.mark.parametrize("path", ["sdpa", "reference"])
def test_causal_later_tokens_leave_earlier_outputs_and_r_unchanged(path):
    layer = mixer(path)
    x = hidden(2, 12)
    later = x.clone()
    later[:, 7:] = torch.randn_like(later[:, 7:])
    with torch.no_grad():
        out, order, _ = layer(x)
        out2, order2, _ = layer(later)
    torch.testing.assert_close(out2[:, :7], out[:, :7], rtol=0, atol=1e-12)
    torch.testing.assert_close(order2[:, :7], order[:, :7], rtol=0, atol=1e-12)
    assert not torch.allclose(out2[:, 7:], out[:, 7:])


@pytest.mark.parametrize("path", ["sdpa", "reference"])
def test_cached_steps_equal_the_full_forward(path):
    layer = mixer(path)
    x = hidden(2, 10)
    with torch.no_grad():
        full_out, full_order, _ = layer(x)
        outs, orders, cache = [], [], None
        for piece in (x[:, :4], x[:, 4:5], x[:, 5:8], x[:, 8:9], x[:, 9:]):  # prefill, single and chunked steps
            out, order, cache = layer(piece, cache=cache)
            outs.append(out)
            orders.append(order)
    torch.testing.assert_close(torch.cat(outs, 1), full_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat(orders, 1), full_order, rtol=1e-10, atol=1e-12)
    keys, values, real = cache
    assert keys.shape == (2, 2, 10, 4) and values.shape == (2, 2, 2, 10, 6) and bool(real.all())


@pytest.mark.parametrize("path", ["sdpa", "reference"])
def test_left_padding_with_a_mask_equals_the_unpadded_rows_also_when_decoding_on(path):
    layer = mixer(path)
    lengths = [7, 3, 5]
    rows = [hidden(1, n, seed=10 + n)[0] for n in lengths]
    width = max(lengths)
    padded = torch.randn(len(rows), width, HIDDEN, dtype=torch.float64)  # padding content must not matter
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    nxt = hidden(len(rows), 1, seed=99)
    with torch.no_grad():
        out, order, cache = layer(padded, attention_mask=mask)
        step_out, step_order, _ = layer(nxt, cache=cache)  # the next token: no mask, the cache remembers
        for i, row in enumerate(rows):
            alone_out, alone_order, alone_cache = layer(row[None])
            torch.testing.assert_close(out[i, width - len(row) :], alone_out[0], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(order[i, width - len(row) :], alone_order[0], rtol=1e-10, atol=1e-12)
            alone_step, alone_step_order, _ = layer(nxt[i : i + 1], cache=alone_cache)
            torch.testing.assert_close(step_out[i], alone_step[0], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(step_order[i], alone_step_order[0], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(out).all()  # padded queries see themselves: no empty softmax


def test_r_is_a_synchrony_in_zero_one():
    layer = mixer("sdpa", dtype=torch.float32)
    with torch.no_grad():
        _, order, _ = layer(torch.randn(3, 40, HIDDEN) * 3)
    assert order.shape == (3, 40, TINY.heads)
    assert order.min() >= 0 and order.max() <= 1 + 1e-6
    torch.testing.assert_close(order[:, 0], torch.ones(3, TINY.heads), atol=1e-5, rtol=0)  # token 0 sees itself
    assert order[:, 1:].min() < 0.99  # and later tokens are not trivially synchronised


def uniform_coupling(coupling: float, steps: int) -> KuramotoMixer:
    """A mixer with q = k = 0 (A uniform over s ≤ t) and ω = 0: pure Kuramoto coupling of strength K."""
    layer = mixer("sdpa", steps=steps, dt=0.1, coupling_init=coupling)
    h, d = TINY.heads, TINY.oscillators
    with torch.no_grad():
        layer.in_proj.weight[h * d :].zero_()  # ω, q, k rows
    return layer


def test_uniform_strong_coupling_synchronises_the_phases_and_weak_coupling_does_not():
    x = hidden(2, 16) * 2
    with torch.no_grad():
        _, start, _ = uniform_coupling(10.0, steps=1)(x)  # R of the initial phases
        _, strong, _ = uniform_coupling(10.0, steps=30)(x)
        _, weak, _ = uniform_coupling(1e-3, steps=30)(x)
    assert start[:, 4:].mean() < 0.8  # the initial phases are spread
    assert strong[:, 4:].min() > 0.99  # K·dt = 1 for 30 steps: every token joins the mean field
    torch.testing.assert_close(weak, start, atol=1e-2, rtol=0)  # K ≈ 0: R stays where it started


def test_rotary_scores_depend_only_on_the_distance_between_tokens():
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 6, 4, dtype=torch.float64, generator=gen) for _ in range(2))
    scores = [rotate_by_position(q, first) @ rotate_by_position(k, first).transpose(-1, -2) for first in (0, 37)]
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(scores[0], q @ k.transpose(-1, -2))  # and the rotation does act


def previous_token_loss(rotary: bool, steps: int = 250, length: int = 16) -> float:
    """Train embedding → mixer → MLP to name the previous token (8 symbols; chance = ln 8 = 2.08):
    the char-level skill the K-SSM's mixer failed to learn (issue 15). Held-out CE."""
    torch.manual_seed(0)
    width = 32
    cfg = KuramotoMixerConfig(heads=2, oscillators=8, key_dim=8, rotary=rotary)
    embed, norm, layer = torch.nn.Embedding(8, width), torch.nn.RMSNorm(width), KuramotoMixer(width, cfg)
    nn = torch.nn
    head = nn.Sequential(nn.RMSNorm(width), nn.Linear(width, 64), nn.GELU(), nn.Linear(64, 8))
    modules = torch.nn.ModuleList([embed, norm, layer, head])
    optimizer = torch.optim.AdamW(modules.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def loss(batch: int) -> torch.Tensor:
        ids = torch.randint(0, 8, (batch, length), generator=gen)
        h = embed(ids)
        logits = head(h + layer(norm(h), use_cache=False)[0])[:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 8), ids[:, :-1].reshape(-1))

    for _ in range(steps):
        optimizer.zero_grad()
        loss(32).backward()
        optimizer.step()
    with torch.no_grad():
        return loss(256).item()


def test_with_rotary_positions_the_mixer_carries_the_previous_token_and_without_it_cannot():
    # Without positions the softmax cannot single out token t − 1 (only itself, by content):
    # the diagnosis of issue 15's K-SSM stuck at bigram CE. With them it learns the copy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead
    try:
        with_rotary, without = previous_token_loss(rotary=True), previous_token_loss(rotary=False)
    finally:
        torch.set_num_threads(threads)
    assert with_rotary < 0.75 and without > 1.2, (with_rotary, without)  # measured: 0.50 and 1.59


def test_bad_settings_are_one_line_errors():
    with pytest.raises(PhaseLMError, match="even key_dim"):
        KuramotoMixerConfig(key_dim=5)
    with pytest.raises(PhaseLMError, match="readout must be one of"):
        KSSMConfig(mixer="kuramoto", kuramoto_readout="mean")
    with pytest.raises(PhaseLMError, match="steps ≥ 1"):
        KSSMConfig(mixer="kuramoto", kuramoto_steps=0)
    with pytest.raises(PhaseLMError, match="dt > 0"):
        KuramotoMixerConfig(dt=0.0)
    with pytest.raises(PhaseLMError, match="backend must be one of"):
        KSSMConfig(mixer="kuramoto", kuramoto_backend="flash")


KSSM_TINY = dict(
    vocab_size=40,
    hidden_size=32,
    n_layers=2,
    n_oscillators=8,
    n_harmonics=4,
    dropout=0.0,
    mixer="kuramoto",
    kuramoto_heads=2,
    kuramoto_oscillators=4,
    kuramoto_key_dim=8,
)


def test_kssm_with_the_mixer_reports_r_per_layer_and_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = KSSMForCausalLM(KSSMConfig(**KSSM_TINY)).eval()
    assert model.blocks[0].mixer.in_proj.weight[:8].std() > 0.1  # the phase rows kept their wide init
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.mixer_orders.shape == (2, 2, 9, 2)
    assert out.mixer_orders.min() >= 0 and out.mixer_orders.max() <= 1 + 1e-6
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.mixer == "kuramoto" and loaded.config.kuramoto_key_dim == 8
    with torch.no_grad():
        again = loaded(input_ids=ids)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(again.mixer_orders, out.mixer_orders, rtol=0, atol=0)


def test_kssm_with_another_mixer_has_no_mixer_orders():
    torch.manual_seed(0)
    model = KSSMForCausalLM(KSSMConfig(**{**KSSM_TINY, "mixer": "none"})).eval()
    with torch.no_grad():
        assert model(input_ids=torch.randint(0, 40, (1, 4))).mixer_orders is None


def test_tables_name_the_mixer_and_its_output_can_be_ablated():
    from phaselm.interventions import Intervention, intervene
    from phaselm.subject import Subject

    torch.manual_seed(0)
    model = KSSMForCausalLM(KSSMConfig(**KSSM_TINY)).eval()
    assert Subject(model, None).variant == "K-SSM bistable (Kuramoto mixer)"
    ids = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with intervene(model, Intervention("ablate", "mixer")):
            ablated = model(input_ids=ids).logits
        with_mixer_zeroed = KSSMForCausalLM(KSSMConfig(**KSSM_TINY)).eval()
        with_mixer_zeroed.load_state_dict(model.state_dict())
        for block in with_mixer_zeroed.blocks:
            block.mixer.out_proj.weight.zero_()
        expected = with_mixer_zeroed(input_ids=ids).logits
    assert not torch.allclose(ablated, base)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-6)
