"""The PhaseBlock (issue 15): the low-rank coupling against the explicit d×d formula, the drift
controller's regimes acting on the current forward, causality, grafting inside a Mamba mixer
(cached == full, remove() exact), the 2.8B parameter count, and `phaselm train` with its recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_cli, set_args
from live_helpers import write_corpus
from phaselm.backbones import MAMBA_SHAPES, MambaSpec, build_mamba, save_backbone
from phaselm.config import dump_recipe, from_dict, load_recipe, tomllib
from phaselm.corpora import load_text
from phaselm.experiments.phase_mamba import PhaseMambaRecipe, load_run
from phaselm.graft import graft
from phaselm.interventions.sites import structure
from phaselm.losses import LossConfig
from phaselm.objectives import PhaseCoreObjective
from phaselm.observables import DriftConfig
from phaselm.oscillators import order_parameter
from phaselm.phase_block import (
    PhaseBlock,
    PhaseBlockConfig,
    dense_coupling_reference,
    drift_decision,
    low_rank_coupling,
    trainable_parameter_count,
)
from phaselm.phase_core import PhaseCoreConfig
from phaselm.tokenizers import learn_tokenizer
from tiny_models import VOCAB

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def fixed_noise(theta: torch.Tensor) -> torch.Tensor:
    """A deterministic per-element stand-in for ε, so noisy forwards can be compared."""
    return torch.cos(3.0 * theta)


# ---------------------------------------------------------------- the block alone


def test_shapes_and_dtype():
    block = PhaseBlock(PhaseBlockConfig(d_inner=12, rank=3))
    y = torch.randn(2, 5, 12, dtype=torch.bfloat16)
    out = block(y)
    assert out.hidden.shape == (2, 5, 12) and out.hidden.dtype == torch.bfloat16
    assert out.order.shape == (2, 5) and out.phases.shape == (2, 5, 12) and out.state is None
    assert out.order.dtype == out.phases.dtype == torch.float32
    assert ((out.order >= 0) & (out.order <= 1)).all()


def test_wrong_width_is_one_line(raises_phaselm):
    block = PhaseBlock(PhaseBlockConfig(d_inner=12, rank=3))
    with raises_phaselm("PhaseBlock expects scan outputs"):
        block(torch.randn(1, 2, 8))
    with raises_phaselm("core.drift_control must be one of"):
        PhaseBlockConfig(drift_control="sometimes")


def test_low_rank_coupling_equals_the_dense_formula_in_float64():
    d, r = 9, 3
    theta = torch.rand(4, 2, d, dtype=torch.float64) * 2 * math.pi - math.pi
    U, V = torch.randn(d, r, dtype=torch.float64), torch.randn(d, r, dtype=torch.float64)
    K = U @ V.T
    explicit = torch.stack(
        [
            torch.stack([sum(K[i, j] * torch.sin(t[j] - t[i]) for j in range(d)) for i in range(d)])
            for t in theta.reshape(-1, d)
        ]
    ).reshape(theta.shape)
    torch.testing.assert_close(dense_coupling_reference(theta, K), explicit, rtol=0, atol=1e-12)
    torch.testing.assert_close(low_rank_coupling(theta, U, V), explicit, rtol=0, atol=1e-12)
    # And every gradient (θ, U, V) of the fast form equals the dense reference's.
    grads = []
    for form in (lambda t, u, v: low_rank_coupling(t, u, v), lambda t, u, v: dense_coupling_reference(t, u @ v.T)):
        leaves = [x.clone().requires_grad_() for x in (theta, U, V)]
        weights = torch.linspace(-1, 1, theta.numel(), dtype=torch.float64).reshape(theta.shape)
        (form(*leaves) * weights).sum().backward()
        grads.append([x.grad for x in leaves])
    for fast, dense in zip(*grads):
        torch.testing.assert_close(fast, dense, rtol=0, atol=1e-11)


def test_euler_steps_follow_the_dense_kuramoto_update_in_float64():
    cfg = PhaseBlockConfig(d_inner=8, rank=2, steps=3, dt=0.08)
    block = PhaseBlock(cfg).double()
    theta0 = torch.rand(2, 3, 8, dtype=torch.float64) * 2 - 1
    k = torch.tensor(1.7, dtype=torch.float64)
    theta = theta0
    for _ in range(cfg.steps):
        theta = theta + cfg.dt * dense_coupling_reference(theta, k * block.U @ block.V.T)
    torch.testing.assert_close(block.integrate(theta0, k), theta, rtol=0, atol=1e-12)
    assert not torch.allclose(theta, theta0)  # the coupling moved the phases


def test_drift_decision_regimes_with_hand_set_order():
    cfg = PhaseBlockConfig()
    order = torch.tensor([0.95, 0.56, 0.55, 0.45, 0.30, 0.29, 0.0])
    scale, noise, actions = drift_decision(order, 2.0, cfg)
    torch.testing.assert_close(scale, torch.tensor([1.9, 1.9, 2.0, 2.0, 2.0, 2.2, 2.2]))
    # BRAKE: σ = min(2·0.05·(R − 0.55), 0.2); no noise elsewhere.
    torch.testing.assert_close(noise, torch.tensor([0.1 * 0.40, 0.1 * 0.01, 0, 0, 0, 0, 0]))
    assert actions.tolist() == [0, 0, 1, 1, 1, 2, 2]  # BRAKE, COAST, ESCAPE
    # σ is capped at 0.2; k is clipped to [0.1, 5] in both directions.
    _, loud, _ = drift_decision(torch.tensor([1.0]), 1.0, PhaseBlockConfig(brake_noise=1.0))
    assert float(loud) == pytest.approx(0.2)
    low, _, _ = drift_decision(torch.tensor([0.9]), 0.1, cfg)
    high, _, _ = drift_decision(torch.tensor([0.1]), 5.0, cfg)
    assert float(low) == pytest.approx(0.1) and float(high) == pytest.approx(5.0)


def _block_with_phases(theta0: torch.Tensor, **overrides) -> PhaseBlock:
    cfg = PhaseBlockConfig(d_inner=theta0.shape[-1], rank=4, **overrides)
    block = PhaseBlock(cfg)
    block.encode = lambda y: theta0  # hand-set θ⁰, hence hand-set R
    block.phase_noise = fixed_noise
    return block


def test_controller_acts_on_the_current_forward_per_position():
    d = 32
    spread = torch.linspace(-math.pi, math.pi, d + 1)[:-1]  # R = 0: ESCAPE
    synced = 0.05 * torch.randn(2, d)  # R ≈ 1: BRAKE
    theta0 = torch.stack([synced[0], spread, synced[1]])[None]  # (1, 3, d); mean R ≈ 2/3: the batch BRAKEs
    block = _block_with_phases(theta0, coupling=2.0).train()
    y = torch.randn(1, 3, d)
    with torch.no_grad():
        free = block.integrate(theta0, torch.tensor(2.0))
        r_free = order_parameter(free)
    assert (r_free[0, [0, 2]] > 0.55).all() and r_free[0, 1] < 0.30 and r_free.mean() > 0.55
    out = block(y)  # a training forward: training mode, gradients on
    sigma = (0.1 * (r_free[0, [0, 2]] - 0.55)).clamp(max=0.2).reshape(1, 2, 1)
    with torch.no_grad():
        expected_brake = block.integrate(theta0[:, [0, 2]], torch.tensor(2.0 * 0.95), sigma)
        expected_escape = block.integrate(theta0[:, 1:2], torch.tensor(2.0 * 1.1))
    torch.testing.assert_close(out.phases[:, [0, 2]], expected_brake, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.phases[:, 1:2], expected_escape, rtol=0, atol=1e-6)
    assert not torch.allclose(out.phases, free, atol=1e-4)  # this forward, not the next, was controlled
    # The stored k moves once, by the batch's mean free R (BRAKE), for the next forward.
    assert float(block.coupling_scale) == pytest.approx(2.0 * 0.95) and block.last_action == "BRAKE"
    with torch.no_grad():  # no gradients: no control, the stored k as it is
        torch.testing.assert_close(block(y).phases, block.integrate(theta0, torch.tensor(1.9)), rtol=0, atol=0)
    assert float(block.coupling_scale) == pytest.approx(1.9)


def test_evaluation_forwards_neither_control_nor_change_anything():
    d = 16
    theta0 = (0.05 * torch.randn(d))[None, None]
    block = _block_with_phases(theta0, coupling=2.0).eval()
    with torch.no_grad():
        out = block(torch.randn(1, 1, d))
    torch.testing.assert_close(out.phases, block.integrate(theta0, torch.tensor(2.0)), rtol=0, atol=0)
    assert float(block.coupling_scale) == 2.0 and block.last_action is None


@pytest.mark.parametrize("training", [False, True])
def test_block_is_causal_per_position(training):
    block = PhaseBlock(PhaseBlockConfig(d_inner=16, rank=4)).train(training)
    block.phase_noise = fixed_noise
    y = torch.randn(2, 7, 16)
    changed = y.clone()
    changed[:, 4:] = torch.randn(2, 3, 16) * 5
    scale = block.coupling_scale.clone()
    with torch.set_grad_enabled(training):  # the controller acts in training forwards only
        first = block(y)
        with torch.no_grad():
            block.coupling_scale.copy_(scale)  # the controller's update is for the next forward
        second = block(changed)
    assert block.last_action is not None if training else block.last_action is None
    torch.testing.assert_close(first.hidden[:, :4], second.hidden[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(first.order[:, :4], second.order[:, :4], rtol=0, atol=0)
    assert not torch.allclose(first.hidden[:, 4:], second.hidden[:, 4:])


# ---------------------------------------------------------------- grafted inside a Mamba mixer


def test_graft_inside_the_mixer_then_remove_is_exact(tiny_model):
    model = tiny_model("mamba")
    ids = torch.randint(2, VOCAB, (2, 9))
    mixer = model.backbone.layers[1].mixer
    with torch.no_grad():
        plain = model(ids).logits
    handle = graft(model, PhaseBlockConfig(rank=4), layer=1)
    assert handle.core.config.d_inner == mixer.intermediate_size
    with torch.no_grad(), handle.record() as rec:
        grafted = model(ids).logits
    assert rec.sequence().shape == (2, 9) and handle.last.phases.shape == (2, 9, mixer.intermediate_size)
    assert not torch.allclose(grafted, plain, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set()  # the backbone is frozen; the block is not a submodule of the model
    sites = structure(handle.model)
    assert [(s.kind, s.n_oscillators) for s in sites.sites] == [("core", mixer.intermediate_size)]
    handle.remove()
    assert "forward" not in mixer.__dict__ and "scan_output_transform" not in mixer.__dict__
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(after, plain)
    assert all(p.requires_grad for p in model.parameters())


def test_grafted_model_is_causal_and_cached_generation_equals_full_forward(tiny_model):
    model = tiny_model("mamba")
    handle = graft(model, PhaseBlockConfig(rank=4))
    try:
        ids = torch.randint(2, VOCAB, (2, 6))
        changed = ids.clone()
        changed[:, 4:] = (changed[:, 4:] + 7) % VOCAB
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits[:, :4], model(changed).logits[:, :4], rtol=0, atol=0)
            with handle.record() as rec:
                generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
            with handle.record() as full_rec:
                full_logits = model(generated[:, :-1]).logits
        assert [o.shape[1] for o in rec.orders] == [6, 1, 1, 1]
        torch.testing.assert_close(rec.sequence(), full_rec.sequence(), atol=1e-5, rtol=0)
        assert torch.equal(full_logits[:, 5:].argmax(-1), generated[:, 6:])
    finally:
        handle.remove()


def test_block_graft_refuses_a_model_without_a_mamba_mixer(tiny_model, raises_phaselm):
    with raises_phaselm("a PhaseBlock grafts into a Hugging Face Mamba"):
        graft(tiny_model("gpt2"), PhaseBlockConfig(rank=4))
    with raises_phaselm("does not match the mixer's inner width"):
        graft(tiny_model("mamba"), PhaseBlockConfig(d_inner=10, rank=4))


def test_gradients_reach_only_the_block(tiny_model):
    model = tiny_model("mamba")
    handle = graft(model, PhaseBlockConfig(rank=4))
    handle.core.train()
    try:
        ids = torch.randint(2, VOCAB, (2, 8))
        objective = PhaseCoreObjective(handle, LossConfig(), DriftConfig(enabled=False))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        block_before = {n: p.detach().clone() for n, p in handle.core.named_parameters()}
        optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            out = objective(ids[:, :-1], ids[:, 1:])
            optimizer.zero_grad()
            out.losses["loss"].backward()
            optimizer.step()
            metrics = objective.after_step(out)
        assert metrics["drift_action"] in ("BRAKE", "COAST", "ESCAPE")
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        moved = [n for n, p in handle.core.named_parameters() if not torch.equal(p, block_before[n])]
        assert set(moved) == set(block_before)  # Enc, G, H, U, V and the LayerNorm all train
    finally:
        handle.remove()


# ---------------------------------------------------------------- recipes and the 2.8B shape


def test_parameter_count_at_2_8b_is_the_seeds_79m():
    hidden, _ = MAMBA_SHAPES["mamba-2.8b"]
    recipe = load_recipe(PhaseMambaRecipe, RECIPES / "phase-block-2.8b.toml")
    assert isinstance(recipe.core, PhaseBlockConfig) and recipe.backbone.layer == 32
    d_inner = 2 * hidden  # MambaConfig's expand = 2
    with torch.device("meta"):
        block = PhaseBlock(PhaseBlockConfig(d_inner=d_inner, rank=recipe.core.rank))
    count = sum(p.numel() for p in block.parameters() if p.requires_grad)
    assert count == trainable_parameter_count(d_inner, recipe.core.rank) == 78_996_480
    assert abs(count - 79e6) / 79e6 < 0.005


def test_core_kind_round_trips_through_a_recipe(raises_phaselm):
    recipe = load_recipe(PhaseMambaRecipe, RECIPES / "phase-block.toml")
    assert isinstance(recipe.core, PhaseBlockConfig) and not recipe.drift.enabled
    again = from_dict(PhaseMambaRecipe, tomllib.loads(dump_recipe(recipe)))
    assert again == recipe
    core = load_recipe(PhaseMambaRecipe, RECIPES / "phase-mamba.toml")
    assert isinstance(core.core, PhaseCoreConfig)
    assert from_dict(PhaseMambaRecipe, tomllib.loads(dump_recipe(core))) == core
    with raises_phaselm("core.kind = 'phase-blob' is unknown"):
        load_recipe(PhaseMambaRecipe, RECIPES / "phase-block.toml", {"core.kind": "phase-blob"})
    with raises_phaselm("a PhaseBlock runs its own drift controller"):
        load_recipe(PhaseMambaRecipe, RECIPES / "phase-block.toml", {"drift.enabled": True})
    with raises_phaselm("unknown key 'n_oscillators'"):
        load_recipe(PhaseMambaRecipe, RECIPES / "phase-block.toml", {"core.n_oscillators": 8})


def test_phaselm_train_with_the_phase_block_recipe(tmp_path, capsys):
    corpus = write_corpus(tmp_path)
    torch.manual_seed(0)
    tokenizer = learn_tokenizer("char", load_text(str(corpus)), 0.1)
    backbone = save_backbone(build_mamba(MambaSpec(hidden_size=16, n_layers=2), tokenizer.vocab_size), tokenizer,
                             tmp_path / "backbone")
    run = tmp_path / "run"
    overrides = [
        f"backbone.name={backbone}", f"data.corpus={corpus}", "core.rank=4", "train.steps=2", "train.batch_size=2",
        "train.seq_len=16", "train.eval_batches=1", "train.log_every=1", "train.warmup_steps=0",
        "train.checkpoint_every=0", "sample.max_new_tokens=2",
    ]
    code, out, err = run_cli(capsys, "train", str(RECIPES / "phase-block.toml"), "--out", str(run), "--json",
                             *set_args(overrides))
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(out)["steps"] == summary["steps"] == 2
    d_inner = 2 * 16
    assert summary["trainable_parameters"] == trainable_parameter_count(d_inner, 4)
    assert sum(summary["drift_actions"].values()) == 2 and set(summary["drift_actions"]) <= {"BRAKE", "COAST", "ESCAPE"}
    assert 0.1 <= summary["coupling_scale"] <= 5.0
    assert 'kind = "phase-block"' in (run / "config.toml").read_text()
    (checkpoint,) = (run / "checkpoints").iterdir()
    weights = load_file(checkpoint / "model.safetensors")
    assert {k.split(".")[0] for k in weights} == {"encoder", "gate", "residual", "U", "V", "norm", "coupling_scale"}
    assert not any(k.startswith("backbone") for k in weights)  # only the block is saved (and trained)
    # The run reopens with the trained block inside the middle layer's mixer.
    model, _, handle, recipe = load_run(run)
    try:
        assert isinstance(recipe.core, PhaseBlockConfig) and handle.layer_path == "backbone.layers.1"
        state = handle.core.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights)
        with torch.no_grad(), handle.record() as rec:
            model(torch.randint(0, 10, (1, 5)))
        assert rec.sequence().shape == (1, 5)
    finally:
        handle.remove()


def test_interventions_act_on_a_grafted_block(tiny_model):
    from phaselm.interventions import Intervention, intervene

    model = tiny_model("mamba")
    handle = graft(model, PhaseBlockConfig(rank=4), layer=1)
    try:
        x = torch.randint(2, VOCAB, (2, 8))
        with torch.no_grad():
            base = model(x).logits
            with intervene(model, Intervention("pin", 0.3)):
                pinned = model(x).logits
                r = handle.last.order
            with handle.disabled():
                bare = model(x).logits
            with intervene(model, Intervention("ablate", "phase_core")):
                ablated = model(x).logits
            kicks = []
            hook = handle.core.encoder.register_forward_hook(lambda m, a, out: kicks.append(out.clone()))
            with intervene(model, Intervention("k_scale", 0.0)):
                model(x)
                uncoupled = handle.last.phases
            hook.remove()
        torch.testing.assert_close(r, torch.full_like(r, 0.3), atol=1e-5, rtol=0)
        assert not torch.allclose(pinned, base, atol=1e-5)
        assert torch.equal(ablated, bare)
        # k × 0: the phases stay at θ⁰ = π·tanh(Enc·y).
        torch.testing.assert_close(uncoupled, math.pi * torch.tanh(kicks[0]), rtol=0, atol=0)
        with torch.no_grad():
            assert torch.equal(model(x).logits, base)  # every intervention undone
    finally:
        handle.remove()
