"""`phaselm bench --backbone`, the named backbone shapes and the seed recipe, on CPU.

The quick bench measures nothing worth reporting on a CPU; it keeps the command and every
measurement path (prefill, graft overhead, core training per mode, decode, the transformers
reference) running, so the GPU run never meets a broken command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from phaselm.backbones import mamba_of_shape
from phaselm.config import load_recipe
from phaselm.experiments.phase_mamba import PhaseMambaRecipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("shape, parameters", [("mamba-130m", 129_135_360), ("mamba-2.8b", 2_768_345_600)])
def test_named_shapes_have_the_published_parameter_counts(shape, parameters):
    """mamba-2.8b: the seeds' 2,768,345,600 backbone parameters (built on the meta device: no memory)."""
    model = mamba_of_shape(shape, device="meta")
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.config.vocab_size == 50280 and model.config.state_size == 16


def test_unknown_shape_is_a_one_line_error(raises_phaselm):
    with raises_phaselm("mamba-2.8b"):
        mamba_of_shape("mamba-3b", device="meta")


def test_quick_backbone_bench_writes_every_measurement(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "bench", "--backbone", "mamba-130m", "--quick", "--reference-seq", "8", "--out", str(tmp_path), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert json.loads((tmp_path / "bench.json").read_text())["backbone"] == "mamba-130m"
    assert "| scan path | transformers |" in (tmp_path / "bench.md").read_text()
    assert result["quick"] and result["scan_path"] == "transformers"
    assert result["prefill_tokens_per_s"] > 0 and result["decode_ms_per_token"]["eager"] > 0
    assert set(result["core_train_tokens_per_s"]) == {"token", "recurrent"} == set(result["graft_overhead"])
    assert result["reference_path"]["speedup"] > 0
    assert "graft overhead (recurrent)" in err  # progress lines on stderr


@pytest.mark.parametrize(
    "args, match",
    [
        (["bench", "recipes/rwkv6.toml", "--backbone", "mamba-130m"], "either recipes or --backbone"),
        (["bench"], "nothing to measure"),
        (["bench", "--backbone", "mamba-130m", "--quick", "--modes", "tokn"], "core mode must be one of"),
        (["bench", "--backbone", "mamba-130m", "--batches", "1,2"], "one batch size"),
        (["bench", "--quick", "recipes/rwkv6.toml"], "--quick goes with --backbone"),
    ],
)
def test_bench_bad_inputs_are_one_line_errors(capsys, args, match):
    assert_one_line_error(*run_cli(capsys, *args)[::2], match)


def test_seed_recipe_is_the_seeds_experiment():
    recipe = load_recipe(PhaseMambaRecipe, RECIPES / "phase-mamba-2.8b.toml")
    assert recipe.backbone.name == "state-spaces/mamba-2.8b-hf" and recipe.backbone.layer == 32
    assert (recipe.train.steps, recipe.train.batch_size, recipe.train.seq_len, recipe.train.lr) == (500, 4, 512, 1e-4)
    assert recipe.core.n_oscillators == 16 and recipe.core.coupling == 2.0 and recipe.drift.enabled
    assert (
        load_recipe(
            PhaseMambaRecipe, RECIPES / "phase-mamba-2.8b.toml", {"backbone.shape": "mamba-2.8b"}
        ).backbone.shape
        == "mamba-2.8b"
    )


def test_a_bad_backbone_shape_is_refused_up_front(raises_phaselm):
    with raises_phaselm("backbone.shape must be one of"):
        load_recipe(PhaseMambaRecipe, RECIPES / "phase-mamba-2.8b.toml", {"backbone.shape": "mamba-9b"})


def test_train_on_a_random_shape_backbone(tmp_path, capsys, monkeypatch):
    """`--set backbone.shape=…` trains a core on random weights with a char tokenizer (tiny budget)."""
    from phaselm import backbones

    monkeypatch.setitem(backbones.MAMBA_SHAPES, "mamba-130m", (32, 2))  # the shape's vocabulary, a CPU-sized body
    code, out, err = run_cli(
        capsys,
        "train",
        str(RECIPES / "phase-mamba-2.8b.toml"),
        "--out",
        str(tmp_path / "run"),
        "--json",
        "--set",
        "backbone.shape=mamba-130m",
        "--set",
        "backbone.layer=1",
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.seq_len=16",
        "--set",
        "train.eval_batches=1",
        "--set",
        "sample.max_new_tokens=3",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kernels"]["mamba_mixers"] == "transformers" and summary["graft_layer"] == "backbone.layers.1"
