"""Interventions on every PhaseLM model (K-SSM, fusion, grafted HF models): each changes what it
should and nothing else, composes, restores after exceptions, and a no-op is bit-exact."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import string

import pytest
import torch

from phaselm.graft import graft
from phaselm.interventions import (
    KINDS,
    Intervention,
    arc_offsets,
    arc_order,
    arc_step,
    calibrate,
    intervene,
    kept_oscillators,
    mean_phase,
    measure,
    override_clamp,
    parse_layers,
    phase_sites,
    structure,
)
from phaselm.models.fusion import FusionConfig, FusionForCausalLM
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM
from phaselm.oscillators import integrate, order_parameter
from phaselm.phase_core import PhaseCoreConfig
from tiny_models import raises_one_line_phaselm_error

TINY = dict(vocab_size=40, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)


# One intra-op thread for this module (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert all(a > b for a, b in itertools.pairwise(values))
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
    with pytest.raises(RuntimeError, match="boom"), intervene(model, Intervention("disorder", layers=[0, 1])):
        assert all(len(site.phase_transforms) == 1 for site in phase_sites(model))
        raise RuntimeError("boom")
    assert all(site.phase_transforms == [] for site in phase_sites(model))
    assert torch.equal(forward(model, ids).logits, base.logits)


def test_interventions_compose_in_order(model, ids):
    base = forward(model, ids)
    with intervene(model, Intervention("pin", 0.3, layers=[0])):
        with intervene(model, Intervention("sync", layers=[0])):
            assert torch.allclose(
                forward(model, ids).orders[:, 0], torch.ones(3, 12), atol=1e-5
            )  # the inner one acts last
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


@pytest.mark.parametrize(
    "layers, match",
    [([2], "layer 2 is out of range: this model has 2 oscillator layers"), ([-1], "layer -1 is out of range")],
)
def test_layer_out_of_range_registers_nothing(model, raises_phaselm, layers, match):
    with raises_phaselm(match):
        with intervene(model, Intervention("sync", layers=[0]), Intervention("sync", layers=layers)):
            pass
    assert all(site.phase_transforms == [] for site in phase_sites(model))


def test_models_without_oscillators_are_refused(tiny_model, raises_phaselm):
    with raises_phaselm("needs a model with oscillators"), intervene(tiny_model("gpt2"), Intervention("sync")):
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
    with pytest.raises(KeyError), override_clamp(model, 0.5, 2.0):
        raise KeyError("x")
    assert all((b.cfg.u_min, b.cfg.u_max, b.cfg.bistable) == (0.1, 10.0, True) for b in phase_sites(model))
    assert torch.equal(forward(model, ids).logits, base.logits)
    with raises_phaselm("u_min < u_max"), override_clamp(model, 2.0, 1.0):
        pass
    with raises_phaselm("need 0 < u_min"), override_clamp(model, 0.0, 1.0):
        pass


def test_override_clamp_on_a_monostable_model_switches_the_clamp_on(ids):
    mono = kssm(bistable=False)
    free = forward(mono, ids)
    assert free.u.min() < -1  # unclamped
    with override_clamp(mono, -1.0, 1.0):  # u_min ≤ 0 is allowed without −log(u) in play
        clamped = forward(mono, ids)
    assert clamped.u.min() >= -1.0 and clamped.u.max() <= 1.0
    assert all(not b.cfg.bistable for b in phase_sites(mono))


# ================================================================ one API for every model (issue 5)
#
# Each new kind changes what it should and nothing else: earlier layers stay bit-identical,
# a no-op is bit-exact, everything is restored after an exception, and the branch ablations
# equal the models' own ablation paths.



FUSION = dict(vocab_size=40, hidden_size=32, n_layers=2, rwkv_head_dim=16, rwkv_mix_rank=4, rwkv_decay_rank=8,
              rwkv_chunk_size=4, mamba_state_size=8, mamba_head_dim=16, mamba_chunk_size=8)


def fusion(**overrides) -> FusionForCausalLM:
    torch.manual_seed(0)
    return FusionForCausalLM(FusionConfig(**{**FUSION, **overrides})).eval()


def assert_clean(model):
    """Nothing of an intervention is left: no hooks, no transforms, configs and scales restored."""
    for module in model.modules():
        assert not module._forward_hooks or all(
            getattr(h, "__self__", None) is not None for h in module._forward_hooks.values()
        )
        assert "_phaselm_output_transforms" not in module.__dict__
        assert getattr(module, "phase_transforms", []) == [] and getattr(module, "coupling_transforms", []) == []


@contextlib.contextmanager
def theta_probe(bank):
    """Record the bank's free phases θ (after the dynamics, before any intervention acts)."""
    seen = []
    bank.phase_transforms.insert(0, lambda theta: seen.append(theta.detach().clone()) or theta)
    try:
        yield seen
    finally:
        del bank.phase_transforms[0]




# ---------------------------------------------------------------- K-SSM: the new kinds


@pytest.mark.parametrize("item", [
    Intervention("k_scale", 0.5, layers=[1]),
    Intervention("oscillators", 2, layers=[1]),
    Intervention("mean_output", layers=[1]),
    Intervention("noise_output", layers=[1]),
    Intervention("unclamp", layers=[1]),
    Intervention("ablate", "bank", layers=[1]),
    Intervention("ablate", "mixer", layers=[1]),
    Intervention("ablate", "mlp", layers=[1]),
], ids=lambda i: i.spec)
def test_every_kind_changes_its_layer_and_leaves_earlier_layers_alone(model, ids, item):
    base = forward(model, ids)
    with intervene(model, item, calibration=ids):
        forced = forward(model, ids)
    assert torch.equal(forced.orders[:, 0], base.orders[:, 0]) and torch.equal(forced.u[:, 0], base.u[:, 0])
    assert not torch.allclose(forced.logits, base.logits, atol=1e-6)
    assert_clean(model)
    assert torch.equal(forward(model, ids).logits, base.logits)


@pytest.mark.parametrize(
    "item",
    [
        Intervention("k_scale", 1.0),
        Intervention("oscillators", 8),
        Intervention("mean_output", layers=[]),
        Intervention("noise_output", layers=[]),
        Intervention("ablate", "bank", layers=[]),
        Intervention("unclamp", layers=[]),
    ],
    ids=lambda i: f"{i.spec}@{i.layers}",
)
def test_noops_of_the_new_kinds_are_bit_exact(model, ids, item):
    base = forward(model, ids)
    with intervene(model, item, calibration=ids):
        same = forward(model, ids)
    assert (
        torch.equal(same.logits, base.logits) and torch.equal(same.orders, base.orders) and torch.equal(same.u, base.u)
    )


def test_k_scale_scales_the_coupling_step_exactly(ids):
    """One coupling step with ω = 0 and no noise: θ₁ − θ₀ = K·(S cos θ₀ − C sin θ₀), linear in K."""
    model = kssm()
    bank = model.blocks[0].bank
    runs = {}
    for factor in (0.0, 1.0, 2.0):
        with theta_probe(bank) as seen, intervene(model, Intervention("k_scale", factor, layers=[0])):
            forward(model, ids)
        runs[factor] = seen[0].double()
    assert torch.allclose(runs[2.0] - runs[0.0], 2 * (runs[1.0] - runs[0.0]), atol=1e-5)
    assert not torch.allclose(runs[1.0], runs[0.0])
    # composed scales multiply: ×2 inside ×0.5 is the model itself, bit for bit (powers of two)
    base = forward(model, ids)
    with intervene(model, Intervention("k_scale", 0.5)), intervene(model, Intervention("k_scale", 2.0)):
        assert torch.equal(forward(model, ids).logits, base.logits)


def test_oscillators_keeps_every_n_over_m_th_oscillator(model, ids):
    bank = model.blocks[1].bank
    with theta_probe(bank) as seen, intervene(model, Intervention("oscillators", 4, layers=[1])) as applied:
        forced = forward(model, ids)
    kept = kept_oscillators(8, 4)
    assert kept == [0, 2, 4, 6] and applied.records[0]["kept"] == kept
    assert torch.allclose(forced.orders[:, 1], order_parameter(seen[0][..., kept]), atol=1e-6)
    refusal = "oscillators=3 does not divide the 8 oscillators of this model; keep one of 1, 2, 4, 8"
    with raises_one_line_phaselm_error(refusal):
        with intervene(model, Intervention("oscillators", 3)):
            pass
    assert_clean(model)


def test_mean_output_replaces_the_bank_output_by_its_calibration_mean(model, ids):
    calibration = torch.randint(0, TINY["vocab_size"], (4, 20), generator=torch.Generator().manual_seed(7))
    outputs = []
    hook = model.blocks[0].bank.register_forward_hook(lambda m, a, out: outputs.append(out.out.detach().clone()))
    try:
        forward(model, calibration)
        stats = calibrate(model, calibration)
        with intervene(model, Intervention("mean_output", layers=[0]), calibration=calibration) as applied:
            forward(model, ids)
    finally:
        hook.remove()
    free = outputs[0].flatten(0, 1).double()
    mean, std, positions = stats[0]
    assert positions == 80 and torch.allclose(mean.double(), free.mean(0), atol=1e-6)
    assert torch.allclose(std.double(), free.std(0, unbiased=False), atol=1e-5)
    replaced = outputs[-1]
    assert torch.allclose(replaced, mean.expand_as(replaced), atol=1e-7)  # the same at every position
    assert applied.records[0]["calibration_positions"] == 80


def test_noise_output_has_the_calibration_moments_and_is_seeded(model, ids):
    calibration = torch.randint(0, TINY["vocab_size"], (4, 20), generator=torch.Generator().manual_seed(7))
    mean, std, _ = calibrate(model, calibration)[0]
    outputs = []
    hook = model.blocks[0].bank.register_forward_hook(lambda m, a, out: outputs.append(out.out.detach().clone()))
    many = torch.randint(0, TINY["vocab_size"], (16, 64), generator=torch.Generator().manual_seed(8))
    try:
        with intervene(model, Intervention("noise_output", layers=[0]), calibration=calibration, seed=3):
            a = forward(model, ids).logits
            forward(model, many)
            noise = outputs[-1].flatten(0, 1)  # (the calibration pass inside intervene was recorded too)
        with intervene(model, Intervention("noise_output", layers=[0]), calibration=calibration, seed=3):
            b = forward(model, ids).logits
        with intervene(model, Intervention("noise_output", layers=[0]), calibration=calibration, seed=4):
            c = forward(model, ids).logits
    finally:
        hook.remove()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert noise.shape == (16 * 64, 32)
    assert torch.allclose(noise.mean(0), mean, atol=4 * float(std.max()) / 32)
    assert torch.allclose(noise.std(0), std, rtol=0.1, atol=1e-6)


def test_output_kinds_need_calibration(model, raises_phaselm):
    with raises_phaselm("needs calibration text"), intervene(model, Intervention("mean_output")):
        pass


def test_unclamp_equals_the_monostable_map(ids):
    bistable, mono = kssm(), kssm(bistable=False)
    free = forward(mono, ids)
    assert free.u.max() > 10 or free.u.min() < 0.1  # the clamp matters for this model
    with intervene(bistable, Intervention("unclamp")):
        unclamped = forward(bistable, ids)
    assert torch.equal(unclamped.logits, free.logits) and torch.equal(unclamped.u, free.u)
    assert all(b.cfg.bistable for b in phase_sites(bistable))


def test_ablating_a_bank_equals_zeroing_its_readout(model, ids):
    zeroed = kssm()
    with torch.no_grad():
        zeroed.blocks[1].bank.readout.weight.zero_()
        zeroed.blocks[1].bank.readout.bias.zero_()
        zeroed.blocks[0].mixer.out_proj.weight.zero_()
    with intervene(model, Intervention("ablate", "bank", layers=[1]), Intervention("ablate", "mixer", layers=[0])):
        ablated = forward(model, ids)
    assert torch.equal(ablated.logits, forward(zeroed, ids).logits)
    assert torch.equal(ablated.orders, forward(zeroed, ids).orders)  # R is still measured, only the output is gone


def test_branch_names_are_checked_against_the_model(model, raises_phaselm):
    with raises_phaselm(r"this kssm model has no branch 'mamba'; its branches are: bank, mixer, mlp$"):
        with intervene(model, Intervention("ablate", "mamba")):
            pass
    with raises_phaselm(r"has no branch 'bnak'; its branches are: bank, mixer, mlp; did you mean bank\?"):
        with intervene(model, Intervention("ablate", "bnak")):
            pass
    assert list(structure(kssm(mixer="none")).branches) == ["bank", "mlp"]
    assert_clean(model)


@pytest.mark.parametrize("make", [
    lambda: (Intervention("k_scale", 2.0), Intervention("pin", 0.4, layers=[0])),
    lambda: (Intervention("oscillators", 4), Intervention("noise_output", layers=[1])),
    lambda: (Intervention("unclamp"), Intervention("ablate", "mixer"), Intervention("mean_output")),
])
def test_new_kinds_restore_after_an_exception(model, ids, make):
    base = forward(model, ids)
    with pytest.raises(RuntimeError, match="boom"), intervene(model, *make(), calibration=ids):
        assert not torch.equal(forward(model, ids).logits, base.logits)
        raise RuntimeError("boom")
    assert_clean(model)
    assert all((b.cfg.bistable, b.cfg.u_min, b.cfg.u_max) == (True, 0.1, 10.0) for b in phase_sites(model))
    assert torch.equal(forward(model, ids).logits, base.logits)


def test_a_bad_later_intervention_installs_nothing(model, ids, raises_phaselm):
    with raises_phaselm("has no branch 'rwkv'"):
        with intervene(
            model,
            Intervention("k_scale", 2.0),
            Intervention("mean_output"),
            Intervention("ablate", "rwkv"),
            calibration=ids,
        ):
            pass
    assert_clean(model)


def test_new_kinds_act_in_cached_generation(model, ids):
    from phaselm.evals import sample

    for item in (
        Intervention("k_scale", 0.0, layers=[1]),
        Intervention("mean_output", layers=[1]),
        Intervention("ablate", "bank", layers=[1]),
    ):
        with intervene(model, item, calibration=ids):
            new, _ = sample(model, ids, 6, temperature=0)
            full = forward(model, torch.cat([ids, new], 1))
        assert torch.equal(full.logits[:, ids.shape[1] - 1 : -1].argmax(-1), new), item.spec


def test_records_of_the_new_kinds(model, ids):
    with intervene(
        model,
        Intervention("k_scale", 0.5, layers=[1]),
        Intervention("ablate", "bank"),
        Intervention("oscillators", 2),
        Intervention("mean_output", layers=[0]),
        calibration=ids,
    ) as applied:
        pass
    records = json.loads(json.dumps(applied.to_json()))
    assert records[0] == {"kind": "k_scale", "value": 0.5, "layers": [1]}
    assert records[1] == {"kind": "ablate", "value": "bank", "layers": [0, 1]}
    assert records[2]["kept"] == [0, 4] and records[2]["n_oscillators"] == 8
    assert records[3]["calibration_positions"] == 36 and len(records[3]["output_std"]) == 1
    assert applied.model == "kssm"


def test_measure_records_r_without_changing_anything(model, ids):
    base = forward(model, ids)
    with measure(model) as m:
        same = forward(model, ids)
        with intervene(model, Intervention("pin", 0.2, layers=[1])):
            forward(model, ids)
    assert torch.equal(same.logits, base.logits)
    seq = m.sequence()
    assert seq.shape == (3, 2, 24) and torch.equal(seq[..., :12], base.orders)
    assert torch.allclose(seq[:, 1, 12:], torch.full((3, 12), 0.2), atol=1e-5)  # the recorder sees the forced R
    assert_clean(model)


# ---------------------------------------------------------------- parsing the new kinds


def test_parse_the_new_kinds(raises_phaselm):
    assert Intervention.parse("k_scale=0.5", [1]) == Intervention("k_scale", 0.5, (1,))
    assert Intervention.parse("ablate=mamba").value == "mamba"
    assert Intervention.parse("oscillators=4").value == 4 and isinstance(Intervention.parse("oscillators=4").value, int)
    assert Intervention.parse("mean_output").value is None
    assert Intervention.parse("pin=0.3").spec == "pin=0.3" and Intervention("ablate", "rwkv").spec == "ablate=rwkv"
    assert Intervention("k_scale", 2).label == "k_scale ×2 @ layers all"
    assert set(KINDS) >= {
        "sync",
        "disorder",
        "pin",
        "oscillators",
        "k_scale",
        "mean_output",
        "noise_output",
        "unclamp",
        "ablate",
    }
    for make, match in [
        (
            lambda: Intervention.parse("k_scal=2"),
            "unknown intervention kind 'k_scal'; choose one of sync, disorder, pin, .*did you mean k_scale\\?",
        ),
        (lambda: Intervention("k_scale", -1), "finite factor ≥ 0"),
        (lambda: Intervention("k_scale"), "needs a value: the factor on K"),
        (lambda: Intervention("oscillators", 2.5), "whole number"),
        (lambda: Intervention("oscillators", 0), "whole number"),
        (lambda: Intervention("ablate"), "needs a value: the branch to ablate"),
        (lambda: Intervention.parse("mean_output=2"), "takes no value"),
        (lambda: Intervention.parse("pin=1.5"), r"pinned R must be in \[0, 1\]"),
    ]:
        with raises_phaselm(match):
            make()


# ---------------------------------------------------------------- fusion models


KURAMOTO_BRANCH = dict(branches=("rwkv6", "kuramoto"), kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)


@pytest.mark.parametrize("branch", ["rwkv", "mamba", "kuramoto"])
def test_fusion_branch_ablation_equals_the_models_own_path(branch):
    model = fusion(**KURAMOTO_BRANCH) if branch == "kuramoto" else fusion()
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        own = model(x, ablate=branch, output_branches=True)
        with intervene(model, Intervention("ablate", branch)):
            ours = model(x, output_branches=True)
    assert torch.equal(ours.logits, own.logits)
    for a, b in zip(getattr(ours, f"{branch}_outputs"), getattr(own, f"{branch}_outputs")):
        assert torch.equal(a, b) and not a.any()
    assert_clean(model)


def test_fusion_ablation_at_one_layer_leaves_earlier_layers_alone():
    model = fusion()
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(x, output_hidden_states=True)
        with intervene(model, Intervention("ablate", "mamba", layers=[1])):
            forced = model(x, output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip(forced.hidden_states[:2], base.hidden_states[:2]))
    assert not torch.equal(forced.hidden_states[2], base.hidden_states[2])


def test_fusion_gate_ablation_averages_the_branches():
    model = fusion(fusion="GF", gate_init=0.3)
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    fused = []
    hook = model.blocks[0].fusion.register_forward_hook(lambda m, a, out: fused.append(out[0].detach().clone()))
    try:
        with torch.no_grad(), intervene(model, Intervention("ablate", "fusion_gate", layers=[0])):
            out = model(x, output_branches=True)
    finally:
        hook.remove()
    assert torch.allclose(fused[0], 0.5 * (out.rwkv_outputs[0] + out.mamba_outputs[0]), atol=1e-7)
    assert float(out.gates[0]) == 0.5 and out.gates[1].shape == (2, 10, 1)  # GF: a gate per position


def test_fusion_branches_per_variant(raises_phaselm):
    assert list(structure(fusion()).branches) == ["rwkv", "mamba", "fusion_gate", "mlp"]
    assert list(structure(fusion(fusion="CP")).branches) == ["rwkv", "mamba", "mlp"]
    assert list(structure(fusion(mixer="rwkv6")).branches) == ["rwkv", "mlp"]
    assert list(structure(fusion(**KURAMOTO_BRANCH)).branches) == ["rwkv", "kuramoto", "fusion_gate", "mlp"]
    with raises_phaselm(r"this phaselm_fusion model has no branch 'mamba'; its branches are: rwkv, kuramoto, "):
        with intervene(fusion(**KURAMOTO_BRANCH), Intervention("ablate", "mamba")):
            pass
    with raises_phaselm(r"this phaselm_fusion model has no branch 'mamba'; its branches are: rwkv, mlp$"):
        with intervene(fusion(mixer="rwkv6"), Intervention("ablate", "mamba")):
            pass
    with raises_phaselm("no branch 'fusion_gate'; its branches are: rwkv, mamba, mlp"):
        with intervene(fusion(fusion="RF"), Intervention("ablate", "fusion_gate")):
            pass
    with raises_phaselm("intervention 'sync' needs a model with oscillators"):
        with intervene(fusion(), Intervention("sync")):
            pass


# ---------------------------------------------------------------- grafted Hugging Face models

TOKENS = string.ascii_letters + string.digits + " ."


@pytest.fixture(params=["token", "recurrent"])
def grafted(request, tiny_model):
    model = tiny_model("mamba")
    handle = graft(model, PhaseCoreConfig(n_oscillators=8, mode=request.param, alpha_init=2.0, coupling=1.0), layer=1)
    yield model, handle
    handle.remove()


def hf_ids():
    return torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(5))


def test_graft_structure_and_pin(grafted):
    model, handle = grafted
    info = structure(model)
    assert [(s.layer, s.kind) for s in info.sites] == [(0, "core")] and list(info.branches) == ["phase_core"]
    x = hf_ids()
    inputs = []  # what reaches the grafted layer: everything before the core
    pre = model.backbone.layers[1].register_forward_pre_hook(
        lambda m, a, kw: inputs.append(a[0].clone()), with_kwargs=True
    )
    with torch.no_grad():
        base = model(x)
        with intervene(model, Intervention("pin", 0.3)) as applied:
            forced = model(x)
            r = handle.last.order
        pre.remove()
        with intervene(handle, Intervention("sync")):  # a Graft handle works as the target too
            model(x)
            assert torch.allclose(handle.last.order, torch.ones_like(handle.last.order), atol=1e-5)
    assert applied.records[0]["target_order"] == 0.3
    assert torch.allclose(r, torch.full_like(r, 0.3), atol=1e-5)
    assert torch.equal(inputs[0], inputs[1])  # the layers before the core are untouched
    assert not torch.allclose(forced.logits, base.logits, atol=1e-5)
    assert_clean(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, base.logits)


def test_graft_ablating_the_core_equals_disabled(grafted):
    model, handle = grafted
    x = hf_ids()
    with torch.no_grad():
        with handle.disabled():
            bare = model(x).logits
        with intervene(model, Intervention("ablate", "phase_core")):
            ablated = model(x).logits
    assert torch.equal(ablated, bare) and handle.enabled


def test_graft_k_scale_zero_is_the_uncoupled_dynamics(grafted):
    model, handle = grafted
    x = hf_ids()
    kicks = []
    hook = handle.core.to_phase.register_forward_hook(lambda m, a, out: kicks.append(out.detach().clone()))
    try:
        with torch.no_grad(), intervene(model, Intervention("k_scale", 0.0)):
            model(x)
            r = handle.last.order
    finally:
        hook.remove()
    core = handle.core
    if core.config.mode == "token":
        expected = order_parameter(integrate(kicks[0], core.omega, 0.0, core.config.dt, core.config.steps))
        assert torch.allclose(r, expected, atol=1e-5)
    assert float(core.coupling_scale) == 1.0


def test_graft_mean_output_replaces_the_modulation(grafted):
    model, handle = grafted
    x, calibration = hf_ids(), torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(6))
    stats = calibrate(model, calibration)[0]
    seen = []
    hook = handle.core.register_forward_hook(lambda m, a, out: seen.append((out.hidden - a[0]).detach().clone()))
    try:
        with torch.no_grad(), intervene(model, Intervention("mean_output"), calibration=calibration):
            model(x)
    finally:
        hook.remove()
    assert torch.allclose(seen[-1], stats[0].expand_as(seen[-1]), atol=1e-5)  # (seen[0]: the calibration pass)


def test_graft_interventions_in_generation_and_after_exceptions(grafted):
    from phaselm.data import CharTokenizer
    from phaselm.generation import generate

    model, handle = grafted
    tokenizer = CharTokenizer(TOKENS[:64])
    with intervene(model, Intervention("pin", 0.6)):
        g = generate(model, tokenizer, "To be", 6, temperature=1.0, seed=1, handle=handle, measured=True)
    assert all(abs(t.r - 0.6) < 1e-5 for t in g.readings)
    x = hf_ids()
    with torch.no_grad():
        base = model(x).logits
    with pytest.raises(KeyError):
        with intervene(
            model,
            Intervention("k_scale", 3.0),
            Intervention("noise_output"),
            Intervention("ablate", "phase_core"),
            calibration=x,
        ):
            raise KeyError("x")
    assert handle.enabled and float(handle.core.coupling_scale) == 1.0
    assert_clean(model)
    with torch.no_grad():
        assert torch.equal(model(x).logits, base)


def test_graft_refuses_what_it_lacks(grafted, raises_phaselm):
    model, _ = grafted
    with raises_phaselm(r"this mamba \(grafted Phase Core\) model has no branch 'mixer'; its branches are: phase_core"):
        with intervene(model, Intervention("ablate", "mixer")):
            pass
    with raises_phaselm("'unclamp' needs K-SSM banks"), intervene(model, Intervention("unclamp")):
        pass
    with raises_phaselm("layer 1 is out of range: this model has 1 oscillator layers"):
        with intervene(model, Intervention("sync", layers=[1])):
            pass
    with raises_phaselm("oscillators=3 does not divide the 8 oscillators"):
        with intervene(model, Intervention("oscillators", 3)):
            pass
