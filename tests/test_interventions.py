"""R interventions on K-SSM: each changes what it should and nothing else, composes, restores."""

from __future__ import annotations

import json
import math

import pytest
import torch

from phaselm.interventions import (
    Intervention,
    arc_offsets,
    arc_order,
    arc_step,
    intervene,
    mean_phase,
    override_clamp,
    parse_layers,
    phase_sites,
)
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM
from phaselm.oscillators import order_parameter

TINY = dict(vocab_size=40, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)


def kssm(**overrides) -> KSSMForCausalLM:
    """A tiny K-SSM whose R is neither 0 nor 1 (random natural frequencies) and whose u spreads."""
    torch.manual_seed(0)
    model = KSSMForCausalLM(KSSMConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.bank.omega0.copy_(torch.randn_like(block.bank.omega0) * 0.8)
            block.bank.to_params.weight.mul_(40)
    return model


@pytest.fixture(scope="module")
def model():
    return kssm()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, TINY["vocab_size"], (3, 12), generator=torch.Generator().manual_seed(1))


def forward(model, ids):
    with torch.no_grad():
        return model(ids, output_orders=True)


# ---------------------------------------------------------------- the arc


@pytest.mark.parametrize("n", [2, 3, 8, 192])
@pytest.mark.parametrize("r", [0.0, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_arc_has_exactly_the_requested_order(n, r):
    offsets = arc_offsets(n, r).double()
    assert float(order_parameter(offsets)) == pytest.approx(r, abs=2e-6)
    assert float(offsets.mean()) == pytest.approx(0.0, abs=1e-6)  # centred: the mean phase is kept


def test_arc_order_is_monotone_in_the_spacing():
    n = 16
    steps = [i * (2 * math.pi / n) / 200 for i in range(201)]
    values = [arc_order(n, s) for s in steps]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert arc_step(n, 1.0) == 0.0 and arc_step(n, 0.0) == pytest.approx(2 * math.pi / n)


def test_forced_phases_keep_the_mean_phase():
    theta = torch.randn(4, 5, 8) * 0.7 + 1.0
    site = kssm().blocks[0].bank
    with intervene(site, Intervention("pin", 0.4)):
        transform = site.phase_transforms[0]
        forced = transform(theta)
    assert torch.allclose(order_parameter(forced), torch.full((4, 5), 0.4), atol=2e-6)
    assert torch.allclose(mean_phase(forced), mean_phase(theta), atol=1e-5)


# ---------------------------------------------------------------- the model


def test_sync_forces_r_to_one_at_its_layer_and_leaves_earlier_layers_alone(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("sync", layers=[1])):
        forced = forward(model, ids)
    assert torch.allclose(forced.orders[:, 1], torch.ones_like(forced.orders[:, 1]), atol=1e-5)
    assert torch.equal(forced.orders[:, 0], base.orders[:, 0])  # layer 0 runs before the forced layer
    assert torch.equal(forced.u[:, 0], base.u[:, 0])
    assert not torch.allclose(forced.logits, base.logits, atol=1e-4)  # the readout sees the forced phases
    assert base.orders[:, 1].max() < 0.95  # so R = 1 above is the intervention, not the model


def test_pin_sets_r_exactly_and_changes_later_layers(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("pin", 0.3, layers=[0])):
        forced = forward(model, ids)
    assert torch.allclose(forced.orders[:, 0], torch.full_like(forced.orders[:, 0], 0.3), atol=1e-5)
    assert not torch.allclose(forced.orders[:, 1], base.orders[:, 1])  # downstream layers see the change


def test_disorder_gives_r_zero_everywhere(model, ids):
    with intervene(model, Intervention("disorder")):
        forced = forward(model, ids)
    assert forced.orders.max() < 1e-5


def test_noop_is_bit_exact_and_records_nothing_applied(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("pin", 0.3, layers=[])) as applied:
        assert all(site.phase_transforms == [] for site in phase_sites(model))
        same = forward(model, ids)
    assert torch.equal(same.logits, base.logits) and torch.equal(same.orders, base.orders)
    assert applied.records[0]["layers"] == []
    with intervene(model):
        assert torch.equal(forward(model, ids).logits, base.logits)


def test_restored_after_exit_and_after_an_exception(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("sync")):
        pass
    assert torch.equal(forward(model, ids).logits, base.logits)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, Intervention("disorder", layers=[0, 1])):
            assert all(len(site.phase_transforms) == 1 for site in phase_sites(model))
            raise RuntimeError("boom")
    assert all(site.phase_transforms == [] for site in phase_sites(model))
    assert torch.equal(forward(model, ids).logits, base.logits)


def test_interventions_compose_in_order(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("pin", 0.3, layers=[0])):
        with intervene(model, Intervention("sync", layers=[0])):
            assert torch.allclose(forward(model, ids).orders[:, 0], torch.ones(3, 12), atol=1e-5)  # the inner one acts last
        assert torch.allclose(forward(model, ids).orders[:, 0], torch.full((3, 12), 0.3), atol=1e-5)
        with intervene(model, Intervention("sync", layers=[1])):  # different layers: both act
            both = forward(model, ids)
        assert torch.allclose(both.orders[:, 0], torch.full((3, 12), 0.3), atol=1e-5)
        assert torch.allclose(both.orders[:, 1], torch.ones(3, 12), atol=1e-5)
    with intervene(model, Intervention("sync", layers=[0]), Intervention("pin", 0.6, layers=[0])):
        assert torch.allclose(forward(model, ids).orders[:, 0], torch.full((3, 12), 0.6), atol=1e-5)
    assert torch.equal(forward(model, ids).logits, base.logits)


def test_interventions_act_in_cached_generation(model, ids):
    from phaselm.evals import sample

    with intervene(model, Intervention("pin", 0.7, layers=[1])):
        new, orders = sample(model, ids, 6, temperature=0)
        full = forward(model, torch.cat([ids, new], 1))
    assert torch.allclose(orders[:, 1], torch.full((3, 6), 0.7), atol=1e-5)
    # cached steps and one full forward agree on what was generated (greedy)
    assert torch.equal(full.logits[:, ids.shape[1] - 1 : -1].argmax(-1), new)


def test_applied_record_is_json_metadata(model):
    with intervene(model, Intervention("pin", 0.25, layers=[1]), Intervention("sync")) as applied:
        pass
    records = json.loads(json.dumps(applied.to_json()))
    assert records[0] == {"kind": "pin", "value": 0.25, "layers": [1], "target_order": 0.25, "n_oscillators": 8,
                          "arc_width": pytest.approx(arc_step(8, 0.25) * 7)}
    assert records[1]["kind"] == "sync" and records[1]["layers"] == [0, 1] and records[1]["target_order"] == 1.0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Intervention("pin", 1.5), r"pinned R must be in \[0, 1\], got 1.5"),
        (lambda: Intervention("pin", -0.1), r"must be in \[0, 1\]"),
        (lambda: Intervention("pin", float("nan")), r"must be in \[0, 1\]"),
        (lambda: Intervention("pin"), "needs a value"),
        (lambda: Intervention("sync", 0.5), "takes no value"),
        (lambda: Intervention("freeze"), "unknown intervention kind 'freeze'; choose one of sync, disorder, pin"),
        (lambda: Intervention("sync", layers=[0, 0]), "listed twice"),
        (lambda: Intervention.parse("pin=abc"), "is not a number"),
        (lambda: parse_layers("0,x"), "is not an integer"),
    ],
)
def test_bad_interventions_are_one_line_errors(raises_phaselm, make, match):
    with raises_phaselm(match):
        make()


@pytest.mark.parametrize("layers, match", [([2], "layer 2 is out of range: this model has 2 oscillator layers"), ([-1], "layer -1 is out of range")])
def test_layer_out_of_range_registers_nothing(model, raises_phaselm, layers, match):
    with raises_phaselm(match):
        with intervene(model, Intervention("sync", layers=[0]), Intervention("sync", layers=layers)):
            pass
    assert all(site.phase_transforms == [] for site in phase_sites(model))


def test_models_without_oscillators_are_refused(tiny_model, raises_phaselm):
    with raises_phaselm("needs a model with oscillators"):
        with intervene(tiny_model("gpt2"), Intervention("sync")):
            pass


def test_parse():
    assert Intervention.parse("pin=0.3", [1]) == Intervention("pin", 0.3, (1,))
    assert Intervention.parse("pin", "all", 0.2).value == 0.2
    assert Intervention.parse(" disorder ").layers == "all"
    assert parse_layers("all") == "all" and parse_layers("0, 2") == (0, 2) and parse_layers("") == ()


# ---------------------------------------------------------------- evaluation-time clamp


def test_override_clamp_bounds_u_and_restores(model, ids, raises_phaselm):
    base = forward(model, ids)
    assert base.u.min() < 0.9 and base.u.max() > 1.1  # the tiny model's u spreads past the new bounds
    with override_clamp(model, 0.9, 1.1) as info:
        clamped = forward(model, ids)
    assert info["u_min"] == 0.9 and clamped.u.min() >= 0.9 - 1e-6 and clamped.u.max() <= 1.1 + 1e-6
    assert (clamped.u == torch.tensor(0.9)).any() or (clamped.u == torch.tensor(1.1)).any()
    with pytest.raises(KeyError):
        with override_clamp(model, 0.5, 2.0):
            raise KeyError("x")
    assert all((b.cfg.u_min, b.cfg.u_max, b.cfg.bistable) == (0.1, 10.0, True) for b in phase_sites(model))
    assert torch.equal(forward(model, ids).logits, base.logits)
    with raises_phaselm("u_min < u_max"):
        with override_clamp(model, 2.0, 1.0):
            pass
    with raises_phaselm("need 0 < u_min"):
        with override_clamp(model, 0.0, 1.0):
            pass


def test_override_clamp_on_a_monostable_model_switches_the_clamp_on(ids):
    mono = kssm(bistable=False)
    free = forward(mono, ids)
    assert free.u.min() < -1  # unclamped
    with override_clamp(mono, -1.0, 1.0):  # u_min ≤ 0 is allowed without −log(u) in play
        clamped = forward(mono, ids)
    assert clamped.u.min() >= -1.0 and clamped.u.max() <= 1.0
    assert all(not b.cfg.bistable for b in phase_sites(mono))
