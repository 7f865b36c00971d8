"""The Kuramoto token mixer as an oscillator site (kind "mixer"): declared by K-SSM and the fusion
model's kuramoto branch; pin / sync / disorder force the synchrony of the field each token
couples to (|M_t| = r, its phase kept), k_scale scales K; the reference and SDPA paths agree under
a transform (forward and every gradient, ragged lengths); causality and cached == full hold; no
transform leaves the output bit-identical; bad selections are one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm.interventions import Intervention, field_order_transform, intervene, measure, structure
from phaselm.layers.kuramoto_mixer import KuramotoMixer, KuramotoMixerConfig
from phaselm.models.fusion import FusionConfig, FusionForCausalLM
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=40, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)
MIXER = dict(mixer="kuramoto", kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)


def kssm(backend: str = "reference", **overrides) -> KSSMForCausalLM:
    torch.manual_seed(0)
    return KSSMForCausalLM(KSSMConfig(**{**TINY, **MIXER, "kuramoto_backend": backend, **overrides})).eval()


def fusion_kuramoto() -> FusionForCausalLM:
    torch.manual_seed(0)
    config = FusionConfig(
        vocab_size=40,
        hidden_size=32,
        n_layers=2,
        branches=("rwkv6", "kuramoto"),
        rwkv_head_dim=16,
        rwkv_mix_rank=4,
        rwkv_decay_rank=8,
        rwkv_chunk_size=4,
        kuramoto_heads=2,
        kuramoto_oscillators=4,
        kuramoto_key_dim=8,
    )
    return FusionForCausalLM(config).eval()


def ids(length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 40, (2, length), generator=torch.Generator().manual_seed(seed))


def mixer_r(model, x) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, R (B, mixer sites, T)) of one forward, R read by measure."""
    info = structure(model)
    rows = [s.layer for s in info.sites if s.kind == "mixer"]
    with torch.no_grad(), measure(model) as m:
        logits = model(input_ids=x).logits
    return logits, torch.stack([m.orders[r][0] for r in rows], 1)


def test_kssm_and_fusion_declare_their_mixers_as_sites():
    sites = structure(kssm()).sites
    assert [(s.layer, s.kind, s.n_oscillators) for s in sites] == [
        (0, "bank", 8),
        (1, "bank", 8),
        (2, "mixer", 8),
        (3, "mixer", 8),
    ]
    model = kssm()
    assert [s.module for s in sites if s.kind == "mixer"] != []
    assert all(isinstance(s.module, KuramotoMixer) for s in structure(model).sites if s.kind == "mixer")
    assert [s.kind for s in structure(kssm(mixer="ssd")).sites] == ["bank", "bank"]
    assert [(s.kind, s.n_oscillators) for s in structure(fusion_kuramoto()).sites] == [("mixer", 8), ("mixer", 8)]


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("kind, value, r", [("pin", 0.5, 0.5), ("sync", None, 1.0), ("disorder", None, 0.0)])
def test_pin_sync_disorder_set_the_mixer_r_and_change_the_output(backend, kind, value, r):
    model, x = kssm(backend), ids()
    free_logits, free_r = mixer_r(model, x)
    assert free_r.std() > 0.01  # free R varies over positions: the forced value is not what it was
    with intervene(model, Intervention(kind, value, sites="mixer")) as applied:
        logits, forced = mixer_r(model, x)
    assert applied.records[0]["sites"] == "mixer" and applied.records[0]["layers"] == [0, 1]
    # R = sqrt(|M|² + 1e-12) (the mixer keeps sqrt's gradient finite at 0), so exact up to 1e-6
    torch.testing.assert_close(forced, torch.full_like(forced, r), atol=2e-6, rtol=0)
    assert (logits - free_logits).abs().max() > 1e-3
    after, after_r = mixer_r(model, x)
    assert torch.equal(after, free_logits) and torch.equal(after_r, free_r)  # removed: bit-exact


def test_pin_acts_on_every_step_and_keeps_the_field_s_phase():
    """On the mixer alone: the transform sees each step's field (steps calls) and returns it at
    |M| = r with arg M kept."""
    torch.manual_seed(0)
    mixer = KuramotoMixer(16, KuramotoMixerConfig(heads=2, oscillators=3, key_dim=4, steps=3, backend="reference"))
    seen = []
    pin = field_order_transform(0.3)

    def probe(re, im):
        out = pin(re, im)
        seen.append((re, im, *out))
        return out

    mixer.phase_transforms.append(probe)
    with torch.no_grad():
        _, order, _ = mixer(torch.randn(2, 7, 16))
    assert len(seen) == 3
    for re, im, re2, im2 in seen:
        torch.testing.assert_close(torch.hypot(re2, im2), torch.full_like(re2, 0.3))
        moved = torch.hypot(re, im) > 1e-3
        torch.testing.assert_close(torch.atan2(im2, re2)[moved], torch.atan2(im, re)[moved])
    torch.testing.assert_close(order, torch.full_like(order, 0.3))


def test_k_scale_on_the_mixer_scales_its_coupling():
    model, x = kssm(), ids()
    with torch.no_grad(), intervene(model, Intervention("k_scale", 0.25, sites="mixer")):
        scaled = model(input_ids=x).logits
    with torch.no_grad():
        for block in model.blocks:
            k = torch.nn.functional.softplus(block.mixer.coupling_logit)
            block.mixer.coupling_logit.copy_(torch.log(torch.expm1(0.25 * k)))
        direct = model(input_ids=x).logits
    torch.testing.assert_close(scaled, direct, atol=1e-5, rtol=1e-5)


def test_reference_and_sdpa_agree_under_a_transform_with_ragged_lengths():
    """Forward, R and every gradient, float64, a left-padded row, pin and k_scale installed."""
    torch.manual_seed(0)
    cfg = dict(heads=2, oscillators=3, key_dim=4, steps=2, readout="field")
    ref = KuramotoMixer(16, KuramotoMixerConfig(**cfg, backend="reference")).double()
    fast = KuramotoMixer(16, KuramotoMixerConfig(**cfg, backend="sdpa")).double()
    fast.load_state_dict(ref.state_dict())
    for m in (ref, fast):
        m.phase_transforms.append(field_order_transform(0.4))
        m.coupling_transforms.append(lambda k: 1.5 * k)
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 9)
    mask[0, :4] = 0  # ragged: row 0 is 5 tokens long
    outs = [m(x, mask, use_cache=False) for m in (ref, fast)]
    weight = torch.randn_like(outs[0][0])
    grads = [
        torch.autograd.grad((o * weight).sum() + r.sum(), [x, *m.parameters()])
        for (o, r, _), m in zip(outs, (ref, fast))
    ]
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)


def test_a_pinned_mixer_stays_causal_and_cached_equals_full():
    model, x = kssm(), ids(10)
    later = x.clone()
    later[:, 6:] = (later[:, 6:] + 7) % 40
    with torch.no_grad(), intervene(model, Intervention("pin", 0.3, sites="mixer")):
        full = model(input_ids=x).logits
        changed = model(input_ids=later).logits
        out = model(input_ids=x[:, :6], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(6, 10):
            out = model(input_ids=x[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert torch.equal(full[:, :6], changed[:, :6])  # a pin at t depends on tokens ≤ t only
    assert (full[:, 6:] - changed[:, 6:]).abs().max() > 0
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_default_sites_are_every_site_and_layers_count_the_chosen_kind():
    model, x = kssm(), ids()
    with intervene(model, Intervention("sync")) as everything:
        assert [len(s.module.phase_transforms) for s in structure(model).sites] == [1, 1, 1, 1]
    with intervene(model, Intervention("sync", layers=[1], sites="mixer")):
        assert [len(s.module.phase_transforms) for s in structure(model).sites] == [0, 0, 0, 1]
        _, forced = mixer_r(model, x)
    assert everything.records[0]["layers"] == [0, 1, 2, 3] and "sites" not in everything.records[0]
    assert not torch.allclose(forced[:, 0], torch.ones_like(forced[:, 0]))
    torch.testing.assert_close(forced[:, 1], torch.ones_like(forced[:, 1]))


def test_output_kinds_and_the_fusion_branch():
    model, x = fusion_kuramoto(), ids()
    free, _ = mixer_r(model, x)
    with intervene(model, Intervention("disorder", sites="mixer")):
        disordered, r = mixer_r(model, x)
    assert r.abs().max() < 2e-6 and (disordered - free).abs().max() > 1e-4
    with intervene(model, Intervention("noise_output", sites="mixer"), calibration=ids(16, seed=1)) as applied:
        noisy, _ = mixer_r(model, x)
    assert applied.records[0]["calibration_positions"] == 32 and (noisy - free).abs().max() > 1e-4
    assert torch.equal(mixer_r(model, x)[0], free)


BAD = [
    (
        lambda: kssm(mixer="ssd"),
        Intervention("pin", 0.5, sites="mixer"),
        "intervention 'pin' targets mixer sites, but this kssm model has none; its oscillator sites are: bank",
    ),
    (kssm, Intervention("oscillators", 2, sites="mixer"), "a Kuramoto mixer's R is across tokens"),
    (kssm, Intervention("sync", layers=[2], sites="mixer"), "layer 2 is out of range: this model has 2 mixer sites"),
    (fusion_kuramoto, Intervention("unclamp"), "intervention 'unclamp' needs K-SSM banks"),
]


@pytest.mark.parametrize("build, item, match", BAD, ids=["no mixer", "oscillators", "layer", "unclamp"])
def test_bad_selections_are_one_line_errors(build, item, match, raises_phaselm):
    model = build()
    with raises_phaselm(match):
        with intervene(model, item):
            pass
    assert all(getattr(m, "phase_transforms", []) == [] for m in model.modules())


def test_bad_sites_values_are_refused(raises_phaselm):
    with raises_phaselm("sites must be one of bank, core, mixer"):
        Intervention("pin", 0.5, sites="mixr")
    with raises_phaselm("ablate names a branch"):
        Intervention("ablate", "mixer", sites="mixer")
    item = Intervention.parse("pin=0.2", "1", sites="mixer")
    assert Intervention.from_dict(item.to_dict()) == item and item.label == "pin 0.2 @ mixer layers 1"
    assert math.isclose(item.target_order, 0.2)
