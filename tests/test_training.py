"""The training loop: schedule, metrics, checkpoints, exact resume, gradient accumulation, its config."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from phaselm import checkpoint as ckpt
from phaselm.objectives import LanguageModelObjective
from phaselm.training import TrainConfig, lr_factor, train
from training_helpers import CFG, read_jsonl, token_streams


@pytest.fixture
def ids():
    return token_streams()


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    factors = [lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
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
    assert records[-1]["split"] == "val"
    assert result.evaluation["val_ppl"] == pytest.approx(math.exp(records[-1]["val_ce"]))
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


def test_corpus_shorter_than_a_sequence(tmp_path, tiny_model, raises_phaselm):
    short = torch.arange(5)
    with raises_phaselm(r"fewer than one sequence"):
        train(LanguageModelObjective(tiny_model("gpt2")), short, short, CFG, tmp_path / "r", "", progress=False)
    assert not (tmp_path / "r").exists()


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


def test_train_config_refuses_an_unknown_nonfinite_action(raises_phaselm):
    with raises_phaselm("train.on_nonfinite must be"):
        TrainConfig(on_nonfinite="ignore")
