"""The CLI end to end on tiny shapes: demo, generate --measured --json, and every bad input.

Bad input must give one line on stderr, exit code 2, no traceback, and leave files alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from phaselm.cli import main
from phaselm.observables import TONE_NAMES

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A whole demo pipeline at tiny shapes (seconds): pretrained backbone + trained core run."""
    out = tmp_path_factory.mktemp("demo") / "run"
    main(["demo", "--quick", "--out", str(out)])
    return out


@pytest.mark.slow
def test_quick_demo_writes_every_artifact(demo_run):
    for name in ("config.toml", "metrics.jsonl", "summary.json", "report.md", "plots/order.png", "plots/loss.png", "plots/tones.png"):
        assert (demo_run / name).is_file(), name
    summary = json.loads((demo_run / "summary.json").read_text())
    for key in ("order", "uncertainty", "ru"):
        assert set(summary[key]) == {"mean", "std", "min", "max"}
    assert set(summary["tones"]) == set(TONE_NAMES) and sum(summary["tones"].values()) == pytest.approx(1.0)
    assert 0.0 <= summary["goldilocks_residence"] <= 1.0
    assert sum(summary["drift_actions"].values()) == 6  # drift is on in the recipe: one action per step
    assert summary["val_ppl_with_core"] > 1 and summary["val_ppl_without_core"] > 1
    assert summary["samples"]["blind"] == summary["samples"]["measured_text"]  # same seed, same computation
    report = (demo_run / "report.md").read_text()
    for image in ("plots/order.png", "plots/loss.png", "plots/tones.png"):
        assert f"({image})" in report
    assert (demo_run / "backbone" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_generate_measured_json(demo_run, capsys):
    code, out, err = run_cli(capsys, "generate", str(demo_run), "--prompt", "ROMEO:", "-n", "7", "--measured", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["mode"] == "measured" and len(data["tokens"]) == 7
    for token in data["tokens"]:
        assert 0.0 <= token["r"] <= 1.0 and 0.0 <= token["u"] <= 1.0 and token["tone"] in TONE_NAMES
    code, out, _ = run_cli(capsys, "generate", str(demo_run), "--prompt", "ROMEO:", "-n", "7", "--json")
    assert json.loads(out)["text"] == data["text"] and "tokens" not in json.loads(out)


@pytest.mark.slow
def test_generate_from_the_bare_backbone_folder(demo_run, capsys):
    code, out, err = run_cli(capsys, "generate", str(demo_run / "backbone" / "model"), "-n", "3", "--measured", "--json")
    assert code == 0, err
    assert all(t["r"] is None for t in json.loads(out)["tokens"])


@pytest.mark.slow
def test_demo_refuses_an_existing_run(demo_run, capsys):
    before = snapshot(demo_run)
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", str(demo_run))
    assert_one_line_error(code, err, "already holds a demo run")
    assert snapshot(demo_run) == before


@pytest.mark.slow
def test_train_refuses_an_existing_run_dir(demo_run, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[backbone]\nname = "{demo_run / "backbone" / "model"}"\n[train]\nsteps = 2\nbatch_size = 2\nseq_len = 8\n')
    before = snapshot(demo_run)
    code, _, err = run_cli(capsys, "train", str(recipe), "--out", str(demo_run))
    assert_one_line_error(code, err, "already holds a run")
    assert snapshot(demo_run) == before


@pytest.mark.slow
def test_train_with_a_layer_out_of_range(demo_run, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[backbone]\nname = "{demo_run / "backbone" / "model"}"\nlayer = 9\n')
    code, _, err = run_cli(capsys, "train", str(recipe), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "layer 9 is out of range: this model has 2 layers")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_and_resume_a_grafted_run(demo_run, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[backbone]\nname = "{demo_run / "backbone" / "model"}"\n'
        "[train]\nsteps = 4\nbatch_size = 2\nseq_len = 8\ncheckpoint_every = 2\neval_batches = 1\n"
        "[sample]\nmax_new_tokens = 4\n"
    )
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", str(recipe), "--out", str(run), "--json")
    assert code == 0, err
    assert json.loads(out)["trainable_parameters"] > 0
    code, _, err = run_cli(capsys, "train", str(recipe), "--out", str(run), "--resume")
    assert_one_line_error(code, err, "already finished all 4 steps")


@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "{tmp}/missing.toml"], "does not exist"),
        (["train", "{bad_key}"], "did you mean 'n_oscillators'"),
        (["train", "{no_model}"], "backbone folder {tmp}/nope does not exist"),
        (["train", "{no_config}"], "is not a Hugging Face model folder"),
        (["pretrain", "--set", "data.corpus={tmp}/nothing.txt", "--out", "{tmp}/p"], "corpus not found"),
        (["pretrain", "--set", "data.corpus={empty}", "--out", "{tmp}/p"], "is empty"),
        (["pretrain", "--set", "data.corpus={short}", "--out", "{tmp}/p"], "fewer than one sequence"),
        (["pretrain", "--set", "train.steps", "--out", "{tmp}/p"], "section.key=value"),
        (["generate", "{tmp}"], "not a Hugging Face model folder"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, args, match):
    (tmp_path / "bad_key.toml").write_text("[core]\nn_oscilators = 3\n")
    (tmp_path / "no_model.toml").write_text(f'[backbone]\nname = "{tmp_path}/nope"\n')
    (tmp_path / "hf").mkdir()
    (tmp_path / "no_config.toml").write_text(f'[backbone]\nname = "{tmp_path}/hf"\n')
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text("abc")
    values = {
        "tmp": tmp_path,
        "bad_key": tmp_path / "bad_key.toml",
        "no_model": tmp_path / "no_model.toml",
        "no_config": tmp_path / "no_config.toml",
        "empty": tmp_path / "empty.txt",
        "short": tmp_path / "short.txt",
    }
    args = [a.format(**values) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, match.format(**values))
    assert not (tmp_path / "p").exists()


def test_unknown_hub_model_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[backbone]\nname = "no-such-org/no-such-model"\n')
    code, _, err = run_cli(capsys, "train", str(recipe), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "cannot load hub model 'no-such-org/no-such-model'")


def test_every_command_has_help_with_an_example(capsys):
    for command in ("pretrain", "train", "generate", "demo"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "Example" in out, command


def test_console_script_exit_code(tmp_path):
    """The installed entry point, in a real process: exit 2, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "phaselm", "train", str(tmp_path / "missing.toml")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_readme_api_example_runs(demo_run, capsys):
    """The README's ten-line API example runs as written (on the tiny demo backbone)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## The API in ten lines")[1].split("```python")[1].split("```")[0]
    code = code.replace('"runs/demo/backbone/model"', repr(str(demo_run / "backbone" / "model")))
    exec(compile(code, "README.md", "exec"), {})
    assert "[(" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_refuses_a_checkpoint_from_another_config(demo_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("backbone"))
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace(f'name = "{demo_run}/backbone/model"', f'name = "{demo_run}/backbone/model"').replace("coupling = 2.0", "coupling = 3.0"))
    assert "coupling = 3.0" in (run / "config.toml").read_text()
    code, _, err = run_cli(capsys, "generate", str(run), "-n", "2")
    assert_one_line_error(code, err, "was saved with core=")
