"""phaselm.runs.open_run on every kind of run the project writes (built by the real writers at
tiny sizes), old runs without a recorded kind, and model folders; then every command that takes
a run — generate, serve, eval, protocol run, report, diagnose — on each of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch

from cli_helpers import TINY_MODEL, TINY_TRAIN, assert_one_line_error, run_cli
from phaselm.config import load_recipe, tomllib
from phaselm.experiments.demo import run_demo
from phaselm.experiments.language_model import LMRecipe, train_lm
from phaselm.runs import BACKBONE, LANGUAGE_MODEL, MODEL_FOLDER_KIND, PHASE_MAMBA, locate_run, open_run
from phaselm.serve import load_live_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

pytestmark = pytest.mark.usefixtures("one_thread")


def _without_kind(run: Path, copy: Path) -> Path:
    """A copy of ``run`` as written before runs recorded their kind."""
    shutil.copytree(run, copy)
    config = tomllib.loads((copy / "config.toml").read_text(encoding="utf-8"))
    del config["kind"]
    (copy / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    return copy


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    """name → path, with ``corpus`` (a short text) for every language model."""
    root = tmp_path_factory.mktemp("runs")
    run_demo(root / "demo", quick=True, progress=False)
    built = {"phase-mamba": root / "demo", "backbone": root / "demo" / "backbone"}
    for arch, recipe in (("kssm", "kssm-v3.toml"), ("fusion", "fusion-gf-mh.toml")):
        overrides = dict(item.split("=", 1) for item in TINY_TRAIN + TINY_MODEL[arch])
        overrides = {k: tomllib.loads(f"v = {v}")["v"] for k, v in overrides.items()}
        overrides["data.corpus"] = str(corpus)
        train_lm(load_recipe(LMRecipe, RECIPES / recipe, overrides), root / arch, progress=False)
        built[arch] = root / arch
    built["kssm-model"] = root / "kssm" / "model"
    built["loose-model"] = Path(shutil.copytree(root / "kssm" / "model", root / "loose" / "kssm-model"))
    built["old-kssm"] = _without_kind(root / "kssm", root / "old-kssm")
    built["old-phase-mamba"] = _without_kind(root / "demo", root / "old-demo")
    built["old-backbone"] = _without_kind(root / "demo" / "backbone", root / "old-backbone")
    return built


KINDS = {
    "phase-mamba": PHASE_MAMBA, "backbone": BACKBONE, "kssm": LANGUAGE_MODEL, "fusion": LANGUAGE_MODEL,
    "kssm-model": LANGUAGE_MODEL, "loose-model": MODEL_FOLDER_KIND,
    "old-kssm": LANGUAGE_MODEL, "old-phase-mamba": PHASE_MAMBA, "old-backbone": BACKBONE,
}
NAMES = list(KINDS)
KSSM = {"kssm", "kssm-model", "loose-model", "old-kssm"}  # K-SSM models: oscillators without a graft
# A model folder outside any run validates on the embedded Tiny Shakespeare, which this tiny
# char tokenizer (learnt on 12,000 characters of it) cannot encode: refused in one line.
NOT_ENCODABLE = "is not in the char tokenizer's vocabulary"


def test_every_writer_records_its_kind(runs):
    for name in ("phase-mamba", "backbone", "kssm", "fusion"):
        config = tomllib.loads((runs[name] / "config.toml").read_text(encoding="utf-8"))
        assert config["kind"] == KINDS[name], name


@pytest.mark.parametrize("name", NAMES)
def test_open_run(runs, name):
    run = open_run(runs[name], "cpu")
    assert run.kind == KINDS[name] and not run.model.training
    assert (run.graft is not None) == (run.kind == PHASE_MAMBA)
    assert (run.run_dir is None) == (name == "loose-model")
    assert (run.recipe is None) == (name == "loose-model")
    ids = run.tokenizer.encode("ROMEO:")
    assert ids and run.model(input_ids=torch.tensor([ids])).logits.shape[:2] == (1, len(ids))


def test_a_model_folder_inside_a_run_is_that_run(runs):
    inner, outer = open_run(runs["kssm-model"], "cpu"), open_run(runs["kssm"], "cpu")
    assert inner.run_dir == outer.run_dir == runs["kssm"] and inner.corpus == outer.corpus != "tinyshakespeare"
    assert open_run(runs["loose-model"], "cpu").corpus == "tinyshakespeare"


def test_not_a_run(tmp_path, raises_phaselm):
    with raises_phaselm("does not exist; pass a run directory"):
        locate_run(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with raises_phaselm("is not a directory"):
        locate_run(tmp_path / "file")
    with raises_phaselm("neither a run directory nor a model folder"):
        locate_run(tmp_path)
    (tmp_path / "config.toml").write_text('kind = "telescope"\n')
    with raises_phaselm("records kind 'telescope'"):
        locate_run(tmp_path)
    (tmp_path / "config.toml").write_text("[train]\nsteps = 3\n")
    with raises_phaselm("records no kind and is no recipe PhaseLM writes"):
        locate_run(tmp_path)
    (tmp_path / "config.toml").write_text('kind = "language-model"\narch = "kssm"\n')
    with raises_phaselm("without its trained model"):
        locate_run(tmp_path)


def test_a_run_config_is_not_another_kind_of_recipe(runs, raises_phaselm):
    from phaselm.experiments.phase_mamba import PhaseMambaRecipe

    assert load_recipe(LMRecipe, runs["kssm"] / "config.toml").arch == "kssm"
    with raises_phaselm("config of a 'language-model' run, not a 'phase-mamba' recipe"):
        load_recipe(PhaseMambaRecipe, runs["kssm"] / "config.toml")


# ---------------------------------------------------------------- every command on every kind


@pytest.mark.parametrize("name", NAMES)
def test_generate(runs, name, capsys):
    code, out, err = run_cli(capsys, "generate", str(runs[name]), "-n", "4", "--measured", "--json")
    assert code == 0, err
    readings = json.loads(out)["tokens"]
    assert len(readings) == 4
    # `phaselm generate --measured` reads R wherever the model has oscillators: a grafted core or K-SSM's banks
    assert all((r["r"] is not None) == (KINDS[name] == PHASE_MAMBA or name in KSSM) for r in readings)


@pytest.mark.parametrize("name", NAMES)
def test_serve_opens(runs, name):
    live = load_live_model(runs[name], max_new_tokens=8)
    assert live.kind == ("grafted" if KINDS[name] == PHASE_MAMBA else "kssm" if name in KSSM else "plain")


EVAL_REFUSED = {"loose-model": NOT_ENCODABLE}


@pytest.mark.parametrize("name", NAMES)
def test_eval_temperature(runs, name, capsys, tmp_path):
    code, _out, err = run_cli(capsys, "eval", "temperature", str(runs[name]), "--temperatures", "1.0", "--prompts", "2",
                             "--prompt-tokens", "4", "--max-new-tokens", "4", "--out", str(tmp_path), "--json")
    if name in EVAL_REFUSED:
        assert_one_line_error(code, err, EVAL_REFUSED[name])
    else:
        assert code == 0, err
        assert (tmp_path / "temperature.json").is_file()


NO_OSCILLATORS = "needs a model with oscillators (K-SSM or a grafted Phase Core)"
# What each oscillator eval says where it cannot apply: the backbone and the fusion model have
# no oscillators; a grafted Phase Core has R but no u, so there is nothing to clamp.
OSCILLATOR_EVALS = {
    "intervention": (["--kind", "sync", "--prompts", "2", "--prompt-tokens", "4", "--max-new-tokens", "4"], {}),
    "correlation": (["--batches", "1", "--batch-size", "2", "--seq-len", "16"], {}),
    "clamp": (["--bounds", "0.5:2", "--batches", "1", "--batch-size", "2", "--seq-len", "16"],
              {"phase-mamba": "a grafted Phase Core or a Kuramoto token mixer) have no u to clamp"}),
}


@pytest.mark.parametrize("name", ["phase-mamba", "kssm", "fusion", "backbone"])
@pytest.mark.parametrize("command", list(OSCILLATOR_EVALS))
def test_oscillator_evals(runs, name, command, capsys, tmp_path):
    flags, refused = OSCILLATOR_EVALS[command]
    code, _out, err = run_cli(capsys, "eval", command, str(runs[name]), *flags, "--out", str(tmp_path), "--json")
    if name in ("fusion", "backbone"):
        expected = "a clamp sweep needs a model with oscillators (K-SSM)" if command == "clamp" else NO_OSCILLATORS
        assert_one_line_error(code, err, expected)
    elif name in refused:
        assert_one_line_error(code, err, refused[name])
    else:
        assert code == 0, err
        result = json.loads((tmp_path / f"{command}.json").read_text(encoding="utf-8"))
        if command == "intervention":  # R is read from the grafted core too, and sync forces it to 1
            assert result["unforced"]["r_per_layer"]
            assert result["results"][0]["forced"]["r_per_layer"][0] == pytest.approx(1.0, abs=1e-3)


def _observation(path: Path, model: Path) -> Path:
    data = {
        "protocol": {"kind": "observation", "name": "tiny observation"},
        "model": {"path": str(model), "device": "cpu"},
        "prompts": {"source": "validation", "count": 2, "tokens": 4},
        "decoding": {"max_new_tokens": 4, "temperature": 1.0},
        "design": {"seeds": [0], "samples_per_condition": 2},
        "metrics": {"names": ["r_mean", "u_mean"]},
        "statistics": {"test": "t", "alpha": 0.05, "bootstrap_resamples": 200, "permutation_resamples": 200},
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_protocol_run(runs, name, capsys, tmp_path):
    file = _observation(tmp_path / "obs.toml", runs[name])
    code, _out, err = run_cli(capsys, "protocol", "run", str(file), "--out", str(tmp_path / "out"), "--json")
    if name == "loose-model":
        assert_one_line_error(code, err, NOT_ENCODABLE)
    elif KINDS[name] == PHASE_MAMBA or name in KSSM:
        assert code == 0, err
        assert (tmp_path / "out" / "results.json").is_file()
    else:  # no oscillators: nothing to observe, said in one line
        assert code == 2 and len(err.strip().splitlines()) == 1 and "oscillator" in err.lower(), err


@pytest.mark.parametrize("name", NAMES)
def test_report(runs, name, capsys, tmp_path):
    code, _out, err = run_cli(capsys, "report", str(runs[name]), "--out", str(tmp_path / "report.html"))
    if name == "loose-model":
        assert_one_line_error(code, err, "model folder outside any run")
    else:
        assert code == 0, err
        assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name", NAMES)
def test_diagnose(runs, name, capsys, tmp_path):
    code, _out, err = run_cli(capsys, "diagnose", str(runs[name]), "--out", str(tmp_path), "--windows", "1", "--device",
                             "cpu", "--json")
    if name == "fusion":
        assert code == 0, err
        assert (tmp_path / "diagnostics.json").is_file()
    else:  # the diagnostics are of the fusion family's branches
        assert_one_line_error(code, err, "no RWKV-6 / Mamba-2 branches to diagnose")
