"""The Phase-Mamba commands: a finished `phaselm pretrain` or `phaselm train` run extends with
--resume and a larger train.steps (continuing from its last step, replacing model/ and summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cli_helpers import run_cli, set_args
from live_helpers import write_corpus

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = ["train.batch_size=2", "train.seq_len=16", "train.eval_batches=1", "train.log_every=1", "train.warmup_steps=0"]


def train_steps(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("split") != "val"]


def test_pretrain_routes_its_mamba_to_our_kernels_for_the_device_it_trains_on(tmp_path, capsys, monkeypatch):
    import phaselm.experiments.phase_mamba as phase_mamba

    asked = []
    def record(model, device=None):
        asked.append((type(model).__name__, device))

    monkeypatch.setattr(phase_mamba, "fast_mamba", record)
    pre = [f"data.corpus={write_corpus(tmp_path)}", "model.hidden_size=16", "model.n_layers=1", *TINY, "train.steps=1"]
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "pre"), *set_args(pre))
    assert code == 0, err
    assert asked == [("MambaForCausalLM", "cuda" if torch.cuda.is_available() else "cpu")]


def test_pretrain_then_train_extend_when_resumed_with_more_steps(tmp_path, capsys):
    corpus = write_corpus(tmp_path)
    pre, pre_run = [f"data.corpus={corpus}", "model.hidden_size=16", "model.n_layers=1", *TINY], tmp_path / "pre"
    code, _, err = run_cli(capsys, "pretrain", "--out", str(pre_run), *set_args([*pre, "train.steps=2"]))
    assert code == 0, err
    weights_at_2 = load_file(pre_run / "model" / "model.safetensors")
    code, _, err = run_cli(capsys, "pretrain", "--out", str(pre_run), "--resume", *set_args([*pre, "train.steps=4"]))
    assert code == 0, err
    assert train_steps(pre_run) == [1, 2, 3, 4] and json.loads((pre_run / "summary.json").read_text())["steps"] == 4
    weights = load_file(pre_run / "model" / "model.safetensors")
    final = load_file(pre_run / "checkpoints" / "step-000004" / "model.safetensors")
    shared = [k for k in weights if k in final]
    assert shared and all(torch.equal(weights[k], final[k]) for k in shared)
    assert any(not torch.equal(weights[k], weights_at_2[k]) for k in shared)
    assert not [p.name for p in pre_run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    core = [
        f"backbone.name={pre_run / 'model'}",
        f"data.corpus={corpus}",
        "core.n_oscillators=8",
        "sample.max_new_tokens=2",
        *TINY,
    ]
    run = tmp_path / "pm"
    train_cmd = ["train", str(RECIPES / "phase-mamba.toml"), "--out", str(run)]
    code, _, err = run_cli(capsys, *train_cmd, *set_args([*core, "train.steps=2"]))
    assert code == 0, err
    code, out, err = run_cli(capsys, *train_cmd, "--resume", "--json", *set_args([*core, "train.steps=4"]))
    assert code == 0, err
    assert json.loads(out)["steps"] == 4 and json.loads((run / "summary.json").read_text())["steps"] == 4
    assert train_steps(run) == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
