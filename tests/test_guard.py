"""The numerical guard: a non-finite loss, gradient or R stops (or skips) the step, naming the module;
no NaN checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm import checkpoint as ckpt
from phaselm.guard import first_nonfinite_module
from phaselm.objectives import LanguageModelObjective
from phaselm.training import TrainConfig, train
from training_helpers import CFG, read_jsonl, token_streams


@pytest.fixture
def ids():
    return token_streams()


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
    inner = torch.nn.Sequential(torch.nn.Identity(), PoisonAt({1}))
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), inner, torch.nn.Linear(3, 1))
    assert first_nonfinite_module(net, lambda: net(torch.ones(2, 3))) == "1.1"
    assert first_nonfinite_module(net, lambda: net(torch.ones(2, 3))) is None  # the fault was one call only


def test_a_nonfinite_loss_stops_the_run_naming_the_module(tmp_path, tiny_model, ids, raises_phaselm):
    model = poisoned_gpt2(tiny_model, calls={3, 4})  # step 3 and the guard's second run of it
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 2})
    with raises_phaselm(
        r"step 3: the loss is not finite \(first produced by module lm\.transformer\.h\.1\.mlp\.act\.1\)"
    ):
        train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000002"  # the last good state, nothing after
    record = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    source = "module lm.transformer.h.1.mlp.act.1"
    assert record == {"step": 3, "nonfinite": "the loss", "source": source, "action": "stop"}
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_skip_mode_skips_the_bad_step_and_finishes(tmp_path, tiny_model, ids):
    model = poisoned_gpt2(tiny_model, calls={3, 4})
    cfg = TrainConfig(**{**CFG.__dict__, "on_nonfinite": "skip"})
    train(LanguageModelObjective(model), *ids, cfg, tmp_path / "run", "x = 1\n", progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    source = "module lm.transformer.h.1.mlp.act.1"
    assert {"step": 3, "nonfinite": "the loss", "source": source, "action": "skip"} in records
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
