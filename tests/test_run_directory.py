"""Run directories: never overwritten, resumed only with the same recipe (a longer train.steps extends it),
a torn metrics line tolerated."""

from __future__ import annotations

import shutil

import pytest

from phaselm import checkpoint as ckpt
from phaselm.objectives import LanguageModelObjective
from phaselm.training import TrainConfig, train
from training_helpers import CFG, read_jsonl, token_streams


@pytest.fixture
def ids():
    return token_streams()


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
    shutil.rmtree(run / "checkpoints" / "step-000006")
    weights = run / "checkpoints" / "step-000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with raises_phaselm(r"step-000003"):
        train(LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, run, "x = 1\n", resume=True, progress=False)
    assert weights.stat().st_size == 100


def test_resume_may_extend_train_steps_and_nothing_else(tmp_path, tiny_model, ids, raises_phaselm):
    run = tmp_path / "run"
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, CFG, run, "[train]\nsteps = 6\n", progress=False)
    longer = TrainConfig(**{**CFG.__dict__, "steps": 10})
    with raises_phaselm("differs from this recipe in more than train.steps"):
        train(
            LanguageModelObjective(tiny_model("gpt2")), *ids, longer, run, "[train]\nsteps = 10\nlr = 0.5\n",
            resume=True, progress=False,
        )
    train(
        LanguageModelObjective(tiny_model("gpt2")), *ids, longer, run, "[train]\nsteps = 10\n",
        resume=True, progress=False,
    )
    assert (run / "config.toml").read_text() == "[train]\nsteps = 10\n"
    assert ckpt.latest_checkpoint(run).name == "step-000010"
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("split") != "val"]
    assert steps == [2, 4, 6, 8, 10]


def test_a_metrics_line_torn_by_a_kill_does_not_stop_resume(tmp_path, tiny_model, ids):
    run = tmp_path / "run"
    cfg = TrainConfig(**{**CFG.__dict__, "checkpoint_every": 2})
    first = TrainConfig(**{**cfg.__dict__, "steps": 4})
    train(LanguageModelObjective(tiny_model("gpt2")), *ids, first, run, "[train]\nsteps = 4\n", progress=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.2')  # the process died mid-write
    train(
        LanguageModelObjective(tiny_model("gpt2")), *ids, cfg, run, "[train]\nsteps = 6\n", resume=True, progress=False
    )
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r.get("split") != "val"] == [2, 4, 6]


def test_resume_may_change_how_the_step_runs():
    from phaselm.run_directory import _differ_only_in_resumable_keys as resumable

    old = "[train]\nsteps = 6\nlr = 0.1\n"
    assert resumable(old, '[train]\nsteps = 6\nlr = 0.1\ncompile_mode = "reduce-overhead"\ncompile = false\n')
    assert resumable(old, '[train]\nsteps = 8\nlr = 0.1\ndistributed = "fsdp"\n')
    assert not resumable(old, '[train]\nsteps = 6\nlr = 0.2\ncompile_mode = "reduce-overhead"\n')


def test_an_unknown_compile_mode_is_refused(raises_phaselm):
    with raises_phaselm("train.compile_mode must be one of default, reduce-overhead"):
        TrainConfig(compile_mode="fastest")
