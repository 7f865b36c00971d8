"""Recipes: TOML ↔ dataclasses, with one-line errors for unknown keys and wrong types."""

from __future__ import annotations

from pathlib import Path

import pytest

from phaselm.config import dump_recipe, from_dict, load_recipe, parse_override
from phaselm.experiments.phase_mamba import PhaseMambaRecipe, PretrainRecipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sections_and_types_are_read(tmp_path):
    path = write(tmp_path, '[core]\nn_oscillators = 8\nmode = "recurrent"\ncoupling = 3\n[backbone]\nlayer = 2\n')
    recipe = load_recipe(PhaseMambaRecipe, path)
    assert recipe.core.n_oscillators == 8
    assert recipe.core.mode == "recurrent"
    assert recipe.core.coupling == 3.0 and isinstance(recipe.core.coupling, float)
    assert recipe.backbone.layer == 2
    assert recipe.drift.enabled  # the Phase-Mamba recipe turns the drift controller on by default


def test_unknown_key_suggests_the_closest(tmp_path, raises_phaselm):
    path = write(tmp_path, "[core]\nn_oscilators = 8\n")
    with raises_phaselm(r"unknown key 'n_oscilators' in \[core\]; did you mean 'n_oscillators'"):
        load_recipe(PhaseMambaRecipe, path)


def test_unknown_section(tmp_path, raises_phaselm):
    with raises_phaselm(r"unknown key 'trian'.*did you mean 'train'"):
        load_recipe(PhaseMambaRecipe, write(tmp_path, "[trian]\nsteps = 3\n"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nsteps = 'ten'\n", r"train.steps = 'ten' has the wrong type; it needs int"),
        ("[train]\nsteps = 1.5\n", r"train.steps = 1.5 has the wrong type"),
        ("[drift]\nenabled = 1\n", r"drift.enabled = 1 has the wrong type; it needs bool"),
        (
            "[core]\nmode = 'sequential'\n",
            r"core.mode = 'sequential' has the wrong type; it needs 'token' or 'recurrent'",
        ),
        ("core = 3\n", r"\[core\] must be a table"),
    ],
)
def test_wrong_types_are_one_line_errors(tmp_path, raises_phaselm, text, match):
    with raises_phaselm(match):
        load_recipe(PhaseMambaRecipe, write(tmp_path, text))


def test_invalid_values_are_checked_by_the_dataclasses(tmp_path, raises_phaselm):
    with raises_phaselm(r"drift thresholds"):
        load_recipe(PhaseMambaRecipe, write(tmp_path, "[drift]\nboost_below = 0.99\n"))
    with raises_phaselm(r"train.steps must be at least 1"):
        load_recipe(PhaseMambaRecipe, write(tmp_path, "[train]\nsteps = 0\n"))


def test_missing_and_malformed_files(tmp_path, raises_phaselm):
    with raises_phaselm(r"does not exist"):
        load_recipe(PhaseMambaRecipe, tmp_path / "nope.toml")
    with raises_phaselm(r"not valid TOML"):
        load_recipe(PhaseMambaRecipe, write(tmp_path, "[core\n"))


def test_dump_then_load_round_trips(tmp_path):
    recipe = from_dict(PhaseMambaRecipe, {"core": {"mode": "recurrent", "n_oscillators": 12}, "train": {"steps": 7}})
    path = write(tmp_path, dump_recipe(recipe))
    assert load_recipe(PhaseMambaRecipe, path) == recipe


def test_overrides_win_and_parse_as_toml_values(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 10\n")
    overrides = dict(
        parse_override(s) for s in ["train.steps=3", "core.mode=recurrent", "train.lr=0.5", "drift.enabled=false"]
    )
    recipe = load_recipe(PhaseMambaRecipe, path, overrides)
    assert (recipe.train.steps, recipe.core.mode, recipe.train.lr, recipe.drift.enabled) == (3, "recurrent", 0.5, False)


def test_bad_override_syntax(raises_phaselm):
    with raises_phaselm(r"section.key=value"):
        parse_override("train.steps")


@pytest.mark.parametrize("name, cls", [("phase-mamba.toml", PhaseMambaRecipe), ("pretrain-mamba.toml", PretrainRecipe)])
def test_shipped_recipes_load(name, cls):
    load_recipe(cls, RECIPES / name)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_value_that_is_not_finite_is_refused(value, raises_phaselm):
    from phaselm.experiments.phase_mamba import PhaseMambaRecipe

    with raises_phaselm("core.coupling = .* is not a finite number"):
        load_recipe(PhaseMambaRecipe, RECIPES / "phase-mamba.toml", {"core.coupling": float(value)})
