"""The training loop: schedule, metrics, checkpoints, resume, drift, only-the-core-trains."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import VOCAB
from phaselm import checkpoint as ckpt
from phaselm.graft import graft
from phaselm.losses import LossConfig
from phaselm.observables import DriftConfig, TONE_NAMES
from phaselm.phase_core import PhaseCoreConfig
from phaselm.training import (
    LanguageModelObjective,
    PhaseCoreObjective,
    TrainConfig,
    lr_factor,
    train,
)

CFG = TrainConfig(steps=6, batch_size=2, seq_len=8, lr=1e-2, min_lr=1e-3, warmup_steps=2, log_every=2, eval_batches=2)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    stream = torch.randint(0, VOCAB, (600,), generator=g)
    return stream[:500], stream[500:]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def test_pretraining_writes_metrics_checkpoint_and_learns(tmp_path, tiny_model, ids):
    model = tiny_model("gpt2")
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 30, "lr": 3e-2})
    result = train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train_records = [r for r in records if r.get("split") != "val"]
    assert [r["step"] for r in train_records] == list(range(2, 31, 2))
    for key in ("loss", "ce", "u_mean", "lr", "tokens_per_s"):
        assert all(math.isfinite(r[key]) for r in train_records), key
    assert train_records[-1]["ce"] < train_records[0]["ce"]
    assert records[-1]["split"] == "val" and result.evaluation["val_ppl"] == pytest.approx(math.exp(records[-1]["val_ce"]))
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000030"
    assert (tmp_path / "run" / "config.toml").read_text() == "x = 1\n"


def test_resume_continues_exactly(tmp_path, tiny_model, ids):
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 3})
    straight = tiny_model("gpt2")
    train(LanguageModelObjective(straight), *ids, cfg, tmp_path / "a", "x = 1\n", progress=False)

    # Interrupt after the step-3 checkpoint: run a copy to 6 steps, then delete its last checkpoint
    # and the metrics after step 3, as a crash would leave them.
    resumed = tiny_model("gpt2")
    train(LanguageModelObjective(resumed), *ids, cfg, tmp_path / "b", "x = 1\n", progress=False)
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000006")
    fresh = tiny_model("gpt2", seed=5)  # different weights: the checkpoint must restore them
    train(LanguageModelObjective(fresh), *ids, cfg, tmp_path / "b", "x = 1\n", resume=True, progress=False)
    for p, q in zip(straight.parameters(), fresh.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no step logged twice
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]


def test_existing_run_is_never_overwritten(tmp_path, tiny_model, ids, raises_phaselm):
    run = tmp_path / "run"
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "x = 1\n", progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with raises_phaselm(r"already holds a run; pass --resume"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "x = 1\n", progress=False)
    with raises_phaselm(r"config.toml differs"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "x = 2\n", resume=True, progress=False)
    with raises_phaselm(r"already finished"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "x = 1\n", resume=True, progress=False)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_resume_from_truncated_checkpoint_fails_and_keeps_files(tmp_path, tiny_model, ids, raises_phaselm):
    run = tmp_path / "run"
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 3})
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, run, "x = 1\n", progress=False)
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-000006")
    weights = run / "checkpoints" / "step-000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with raises_phaselm(r"step-000003"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, run, "x = 1\n", resume=True, progress=False)
    assert weights.stat().st_size == 100


def test_corpus_shorter_than_a_sequence(tmp_path, tiny_model, raises_phaselm):
    short = torch.arange(5)
    with raises_phaselm(r"fewer than one sequence"):
        train(LanguageModelObjective(tiny_model("gpt2")), short, short, CFG, tmp_path / "r", "", progress=False)
    assert not (tmp_path / "r").exists()


def test_core_training_moves_only_the_core_and_logs_observables(tmp_path, tiny_model, ids):
    model = tiny_model("mamba")
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    handle = graft(model, PhaseCoreConfig())
    core_before = {k: v.clone() for k, v in handle.core.state_dict().items()}
    drift = DriftConfig(enabled=True, brake_above=0.02, boost_below=0.01)  # R always "too high": BRAKE
    result = train(PhaseCoreObjective(handle, LossConfig(), drift), *ids, CFG, tmp_path / "run", "", progress=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    assert not torch.equal(handle.core.to_phase.weight, core_before["to_phase.weight"])
    assert handle.core.alpha.item() != 0.0
    # The controller acted: six BRAKEs scaled K by 0.9 each.
    assert result.drift_actions == {"BRAKE": 6}
    assert float(handle.core.coupling_scale) == pytest.approx(0.9**6)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("split") != "val"]
    for r in records:
        for key in ("ce", "uncertainty_reg", "presence", "tonal", "r_mean", "r_min", "r_max", "u_mean", "ru_mean",
                    "goldilocks_residence", "drift_action", "coupling_scale", "lr", "tokens_per_s"):
            assert key in r, key
        assert set(r["tones"]) == set(TONE_NAMES) and sum(r["tones"].values()) == CFG.batch_size * CFG.seq_len
        assert r["drift_counts"] == {"BRAKE": 2}
    assert "val_ppl_without_core" in result.evaluation


def test_drift_off_leaves_coupling_alone(tmp_path, tiny_model, ids):
    handle = graft(tiny_model("mamba"), PhaseCoreConfig())
    result = train(PhaseCoreObjective(handle, LossConfig(), DriftConfig()), *ids, CFG, tmp_path / "run", "", progress=False)
    assert result.drift_actions == {} and float(handle.core.coupling_scale) == 1.0


# --------------------------------------------------------------------------------------------
# the numerical guard


class PoisonAt(torch.nn.Module):
    """Passes its input through, except that at the listed calls it returns NaN (a planted fault)."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, h):
        self.count += 1
        return h * float("nan") if self.count in self.calls else h


def poisoned_gpt2(tiny_model, calls):
    model = tiny_model("gpt2")
    layer = model.transformer.h[1]
    layer.mlp.act = torch.nn.Sequential(layer.mlp.act, PoisonAt(calls))
    return model


def test_first_nonfinite_module_names_the_innermost_culprit():
    from phaselm.training import first_nonfinite_module

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sequential(torch.nn.Identity(), PoisonAt({1})), torch.nn.Linear(3, 1))
    assert first_nonfinite_module(net, lambda: net(torch.ones(2, 3))) == "1.1"
    assert first_nonfinite_module(net, lambda: net(torch.ones(2, 3))) is None  # the fault was one call only


def test_a_nonfinite_loss_stops_the_run_naming_the_module(tmp_path, tiny_model, ids, raises_phaselm):
    model = poisoned_gpt2(tiny_model, calls={3, 4})  # step 3 and the guard's second run of it
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 2})
    with raises_phaselm(r"step 3: the loss is not finite \(first produced by module lm\.transformer\.h\.1\.mlp\.act\.1\)"):
        train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000002"  # the last good state, nothing after
    record = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert record == {"step": 3, "nonfinite": "the loss", "source": "module lm.transformer.h.1.mlp.act.1", "action": "stop"}
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_skip_mode_skips_the_bad_step_and_finishes(tmp_path, tiny_model, ids):
    model = poisoned_gpt2(tiny_model, calls={3, 4})
    cfg = TrainConfig(**{**CFG.__dict__, "on_nonfinite": "skip"})
    train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {"step": 3, "nonfinite": "the loss", "source": "module lm.transformer.h.1.mlp.act.1", "action": "skip"} in records
    assert records[-1]["split"] == "val" and math.isfinite(records[-1]["val_ce"])
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000006"


def test_ten_bad_steps_in_a_row_stop_even_in_skip_mode(tmp_path, tiny_model, ids, raises_phaselm):
    model = poisoned_gpt2(tiny_model, calls=set(range(1, 20)))
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 12, "on_nonfinite": "skip"})
    with raises_phaselm("in ten steps in a row"):
        train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "run") is None


def test_a_huge_learning_rate_ends_in_a_one_line_error_not_nan_checkpoints(tmp_path, tiny_model, ids, raises_phaselm):
    cfg = TrainConfig(**{**CFG.__dict__, "lr": 1e6, "grad_clip": 0.0, "checkpoint_every": 1})
    with raises_phaselm("is not finite"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    if latest is not None:  # whatever was written holds finite weights
        from safetensors.torch import load_file

        assert all(bool(torch.isfinite(t).all()) for f in latest.glob("*.safetensors") for t in load_file(f).values())


def test_train_config_refuses_an_unknown_nonfinite_action(raises_phaselm):
    with raises_phaselm("train.on_nonfinite must be"):
        TrainConfig(on_nonfinite="ignore")


# --------------------------------------------------------------------------------------------
# resuming: a longer run, a torn metrics line


def test_resume_may_extend_train_steps_and_nothing_else(tmp_path, tiny_model, ids, raises_phaselm):
    run = tmp_path / "run"
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "[train]\nsteps = 6\n", progress=False)
    longer = TrainConfig(**{**CFG.__dict__, "steps": 10})
    with raises_phaselm("differs from this recipe in more than train.steps"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, longer, run, "[train]\nsteps = 10\nlr = 0.5\n", resume=True, progress=False)
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, longer, run, "[train]\nsteps = 10\n", resume=True, progress=False)
    assert (run / "config.toml").read_text() == "[train]\nsteps = 10\n"
    assert ckpt.latest_checkpoint(run).name == "step-000010"
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("split") != "val"]
    assert steps == [2, 4, 6, 8, 10]


def test_a_metrics_line_torn_by_a_kill_does_not_stop_resume(tmp_path, tiny_model, ids):
    run = tmp_path / "run"
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 2})
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, TrainConfig(**{**cfg.__dict__, "steps": 4}), run, "[train]\nsteps = 4\n", progress=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the process died mid-write
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, run, "[train]\nsteps = 6\n", resume=True, progress=False)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("split") != "val"] == [2, 4, 6]


def test_gradient_accumulation_equals_one_larger_batch(tmp_path, tiny_model, ids):
    """Two micro-batches of 2 and one batch of 4 draw the same windows and take the same step."""
    weights = []
    for batch, accum in ((4, 1), (2, 2)):
        model = tiny_model("gpt2")
        cfg = TrainConfig(**{**CFG.__dict__, "steps": 1, "batch_size": batch, "grad_accum": accum, "warmup_steps": 0})
        train(LanguageModelObjective(model), *ids, cfg, tmp_path / f"run-{accum}", "x = 1\n", progress=False)
        weights.append([p.detach().clone() for p in model.parameters()])
    # AdamW's first step moves each weight by ≈ lr·sign(g) = 1e-2; float rounding of the summed
    # gradients moves a few near-zero ones by ~1e-6, while a micro-batch left out of the sum moves
    # many by ~1e-2. (AdamW is blind to a constant scale of every gradient, so this does not see the
    # 1/grad_accum factor; that only keeps clipping thresholds and logged norms comparable.)
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
