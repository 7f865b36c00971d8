"""Every language-model recipe trains a few steps through the CLI (the CI smoke run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli as cli
from cli_helpers import train_tiny
from phaselm.config import load_recipe, tomllib
from phaselm.experiments.language_model import LMRecipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LM_RECIPES = [
    "kssm-v3.toml",
    "kssm-v3-monostable.toml",
    "kssm-v3-nomixer.toml",
    "kssm-kuramoto.toml",
    "gpt-baseline.toml",
]


@pytest.mark.parametrize("name", LM_RECIPES)
def test_recipe_smoke(name, tmp_path, capsys):
    arch = train_tiny(capsys, RECIPES / name, tmp_path / "run")["arch"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") != "val"]
    assert len(train_records) == 3
    if arch == "kssm":
        assert all("bank_reg" in r and 0 <= r["r_mean"] <= 1 for r in train_records)
    code, out, err = cli(capsys, "generate", str(tmp_path / "run" / "model"), "-n", "4", "--json")
    assert code == 0, err and len(json.loads(out)["text"]) > 0
    stored = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    model_sections = {"kssm": "kssm", "gpt2": "gpt", "fusion": "fusion"}
    assert [s for s in model_sections.values() if s in stored] == [model_sections[arch]]  # only the trained arch's
    assert load_recipe(LMRecipe, tmp_path / "run" / "config.toml").arch == arch  # and it loads back


def test_recipe_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "kssm"\n[kssm]\nu_min = 5.0\nu_max = 1.0\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "0 < u_min < u_max" in err and err.count("\n") == 1
    bad.write_text('arch = "gpt2"\n[gpt]\nn_positions = 8\n[train]\nseq_len = 16\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "longer than gpt.n_positions" in err
    bad.write_text('arch = "lstm"\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "arch must be one of" in err
    assert not (tmp_path / "r").exists()


def _lm_recipe_paths():
    return sorted(p for p in RECIPES.glob("*.toml") if "arch" in tomllib.loads(p.read_text()))


@pytest.mark.parametrize("path", _lm_recipe_paths(), ids=lambda p: p.stem)
def test_every_lm_recipe_loads(path):
    recipe = load_recipe(LMRecipe, path)
    assert recipe.train.steps > 0 and recipe.tokenizer.kind in ("char", "bpe")


@pytest.mark.parametrize("path", [p for p in _lm_recipe_paths() if p.stem.endswith("-bpe")], ids=lambda p: p.stem)
def test_bpe_recipe_keeps_its_char_level_siblings_model(path):
    """The BPE-16K comparison changes the data and vocabulary, never the model."""
    bpe = tomllib.loads(path.read_text())
    char = tomllib.loads((RECIPES / f"{path.stem.removesuffix('-bpe')}.toml").read_text())
    section = {"kssm": "kssm", "gpt2": "gpt", "fusion": "fusion"}[char["arch"]]
    assert bpe["arch"] == char["arch"] and bpe[section] == char[section]
    assert bpe["tokenizer"] == {"kind": "bpe", "vocab_size": 16000} and char["tokenizer"]["kind"] == "char"


def test_recipe_picks_the_scan_path(tmp_path, capsys):
    from phaselm.experiments.language_model import build_lm

    recipe = load_recipe(LMRecipe, RECIPES / "kssm-v3.toml", {"kssm.scan": "fused", "kssm.n_layers": 1})
    assert build_lm(recipe, 65).config.scan == "fused"
    bad = ["--set", "kssm.scan=fast", "--set", "kssm.n_layers=1"]
    code, _, err = cli(capsys, "train-lm", str(RECIPES / "kssm-v3.toml"), "--out", str(tmp_path / "r"), *bad)
    assert code == 2 and "scan must be one of auto, reference, chunked, triton, fused" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def _train_records(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("split") != "val" and "nonfinite" not in r]


def test_resume_extends_a_finished_run(tmp_path, capsys):
    """A finished train-lm run resumed with twice the steps continues from its last step and
    replaces model/ and summary.json with the longer run's."""
    from safetensors.torch import load_file

    from cli_helpers import TINY_MODEL, TINY_TRAIN, set_args

    recipe, run = RECIPES / "gpt-baseline.toml", tmp_path / "run"
    first = train_tiny(capsys, recipe, run)  # TINY_TRAIN: 3 steps
    assert first["steps"] == 3 and _train_records(run) == [1, 2, 3]
    weights_at_3 = load_file(run / "model" / "model.safetensors")
    again = [*TINY_TRAIN, "train.steps=3", *TINY_MODEL["gpt2"]]
    code, _, err = cli(capsys, "train-lm", str(recipe), "--out", str(run), "--resume", *set_args(again))
    assert code == 2 and "already finished all 3 steps" in err and err.count("\n") == 1

    longer = [*TINY_TRAIN, "train.steps=6", *TINY_MODEL["gpt2"]]
    code, out, err = cli(capsys, "train-lm", str(recipe), "--out", str(run), "--resume", "--json", *set_args(longer))
    assert code == 0, err
    assert json.loads(out)["steps"] == 6 and json.loads((run / "summary.json").read_text())["steps"] == 6
    assert _train_records(run) == [1, 2, 3, 4, 5, 6]  # continued from step 3, nothing logged twice
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    saved = load_file(run / "model" / "model.safetensors")
    final = load_file(run / "checkpoints" / "step-000006" / "model.safetensors")
    shared = [k for k in saved if k in final]
    assert len(shared) >= len(saved) - 1  # save_pretrained may drop one tied weight
    assert all(torch.equal(saved[k], final[k]) for k in shared)  # the model is the step-6 weights
    assert any(not torch.equal(saved[k], weights_at_3[k]) for k in shared)
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # no half-written folder left
    assert "steps = 6" in (run / "config.toml").read_text()
