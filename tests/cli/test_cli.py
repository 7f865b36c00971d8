"""The CLI end to end on tiny shapes: demo, generate --measured --json, and every bad input.

Bad input must give one line on stderr, exit code 2, no traceback, and leave files alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from phaselm.cli import main
from phaselm.observables import TONE_NAMES

RECIPES = Path(__file__).resolve().parents[2] / "recipes"






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
    for name in ("config.toml", "metrics.jsonl", "summary.json", "report.md", "plots/order.png", "plots/loss.png",
                 "plots/tones.png"):
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
    code, out, err = run_cli(capsys, "generate", str(demo_run / "backbone" / "model"), "-n", "3", "--measured",
                             "--json")
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
    recipe.write_text(f'[backbone]\nname = "{demo_run / "backbone" / "model"}"\n[train]\nsteps = 2\nbatch_size = '
                      '2\nseq_len = 8\n')
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
        (["generate", "{tmp}"], "neither a run directory nor a model folder"),
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
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
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
    # The copy leaves the backbone behind: point at the original's (runs store it relative to the run).
    (run / "config.toml").write_text(text.replace('name = "backbone/model"',
                                                  f'name = "{demo_run}/backbone/model"').replace("coupling = 2.0",
                                                                                                 "coupling = 3.0"))
    assert "coupling = 3.0" in (run / "config.toml").read_text()
    code, _, err = run_cli(capsys, "generate", str(run), "-n", "2")
    assert_one_line_error(code, err, "was saved with core=")


# ---------------------------------------------------------------- phaselm eval …


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """Tiny K-SSM and GPT run directories (the layout train-lm writes) on a small corpus."""
    from eval_helpers import make_run
    from phaselm.data import load_text

    root = tmp_path_factory.mktemp("eval_runs")
    corpus = root / "small.txt"
    corpus.write_text(load_text("tinyshakespeare")[:12_000], encoding="utf-8")
    return {"kssm": make_run(root, "kssm", corpus=corpus), "gpt": make_run(root, "gpt", arch="gpt2", corpus=corpus)}


FAST_GEN = ["--prompts", "4", "--prompt-tokens", "8", "--max-new-tokens", "5"]
FAST_VAL = ["--batches", "1", "--batch-size", "2", "--seq-len", "16"]


def test_eval_intervention_writes_json_and_png(eval_runs, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = run_cli(capsys, "eval", "intervention", str(eval_runs["kssm"]), *FAST_GEN, "--kind", "sync",
                                "--kind", "pin", "--value", "0.3", "--layers", "1", "--json", "--out", str(out))
    assert code == 0, err
    data = json.loads(stdout)
    assert data == json.loads((out / "intervention.json").read_text())
    assert [r["label"] for r in data["results"]] == ["sync @ layers 1", "pin 0.3 @ layers 1"] and data["n_prompts"] == 4
    assert data["results"][1]["forced"]["r_per_layer"][1] == pytest.approx(0.3, abs=1e-5)
    assert data["command"].startswith("phaselm ")
    assert (out / "intervention.png").read_bytes()[:4] == b"\x89PNG"
    # a second run into the same --out is refused and leaves the first result alone
    before = snapshot(out)
    code, _, err = run_cli(capsys, "eval", "intervention", str(eval_runs["kssm"]), *FAST_GEN, "--out", str(out))
    assert_one_line_error(code, err, "already holds intervention.json")
    assert snapshot(out) == before


def test_eval_intervention_default_out_and_text_output(eval_runs, capsys):
    code, stdout, err = run_cli(capsys, "eval", "intervention", str(eval_runs["kssm"] / "model"), *FAST_GEN, "--kind",
                                "disorder", "--temperature", "0")
    assert code == 0, err
    assert "| disorder @ layers all | KL(unforced ‖ forced) |" in stdout and "plot:" in stdout
    assert (eval_runs["kssm"] / "evals" / "intervention.png").is_file()


@pytest.mark.parametrize(
    "args, check",
    [
        (["temperature", "{kssm}", "-t", "0,1", *FAST_GEN],
         lambda d: [r["temperature"] for r in d["rows"]] == [0.0, 1.0]),
        (["temperature", "{gpt}", "-t", "0.8", *FAST_GEN], lambda d: d["rows"][0]["metrics"]["mean_r"] is None),
        (["clamp", "{kssm}", "--bounds", "0.1:10,0.9:1.1", *FAST_VAL],
         lambda d: "not retraining" in d["note"] and len(d["rows"]) == 3),
        (["correlation", "{kssm}", *FAST_VAL], lambda d: d["tokens"] == 32 and len(d["layers"]) == 3),
    ],
)
def test_eval_commands_json(eval_runs, tmp_path, capsys, args, check):
    args = [a.format(**eval_runs) for a in args]
    code, stdout, err = run_cli(capsys, "eval", *args, "--json", "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads(stdout)
    assert check(data)
    assert Path(data["files"]["png"]).read_bytes()[:4] == b"\x89PNG" and Path(data["files"]["json"]).is_file()


def test_eval_ablation_on_a_trained_run(eval_runs, tmp_path, capsys):
    """A real `train-lm` run next to a GPT run: the table shows — for GPT's R and u."""
    sets = ["train.steps=2", "train.batch_size=2", "train.seq_len=16", "train.eval_batches=1",
            "train.checkpoint_every=0",
            "kssm.hidden_size=32", "kssm.n_layers=1", "kssm.head_dim=16", "kssm.n_oscillators=8", "kssm.n_harmonics=4",
            f"data.corpus={eval_runs['kssm'].parent / 'small.txt'}"]
    run = tmp_path / "trained"
    code, _, err = run_cli(capsys, "train-lm", str(RECIPES / "kssm-v3.toml"), "--out", str(run),
                           *[x for s in sets for x in ("--set", s)])
    assert code == 0, err
    out = tmp_path / "ablation"
    code, stdout, err = run_cli(capsys, "eval", "ablation", str(run), str(eval_runs["gpt"]), "--batches", "1",
                                "--batch-size", "2", "--json", "--out", str(out))
    assert code == 0, err
    data = json.loads(stdout)
    assert [r["variant"] for r in data["rows"]] == ["K-SSM bistable", "GPT-2"]
    assert 0 <= data["rows"][0]["r_mean"] <= 1 and data["rows"][1]["r_mean"] is None
    assert "—" in (out / "ablation.md").read_text() and (out / "ablation.png").is_file()


@pytest.mark.parametrize(
    "args, match",
    [
        (["intervention", "{tmp}/missing"], "{tmp}/missing does not exist; pass a run directory"),
        (["intervention", "{gpt}"], "needs a model with oscillators (K-SSM or a grafted Phase Core); this gpt2 model "
                                    "has none"),
        (["correlation", "{gpt}"], "needs a model with oscillators"),
        (["clamp", "{gpt}"], "needs a model with oscillators"),
        (["intervention", "{kssm}", "--kind", "pin", "--value", "1.5"], "pinned R must be in [0, 1], got 1.5"),
        (["intervention", "{kssm}", "--kind", "pin=-0.2"], "pinned R must be in [0, 1]"),
        (["intervention", "{kssm}", "--kind", "pin"], "needs a value"),
        (["intervention", "{kssm}", "--value", "0.5"], "--value only applies to --kind pin"),
        (["intervention", "{kssm}", "--kind", "freeze"], "unknown intervention kind 'freeze'"),
        (["intervention", "{kssm}", "--layers", "7"], "layer 7 is out of range: this model has 2 oscillator layers"),
        (["intervention", "{kssm}", "--prompts", "1"], "at least 2 prompts, got --prompts 1"),
        (["temperature", "{kssm}", "--prompts", "0"], "at least 2 prompts"),
        (["temperature", "{kssm}", "-t", "hot"], "bad temperatures 'hot'"),
        (["clamp", "{kssm}", "--bounds", "5:1"], "u_min < u_max, got u_min=5 ≥ u_max=1"),
        (["clamp", "{kssm}", "--bounds", "0:1"], "clamp bounds of a bistable model need 0 < u_min"),
        (["clamp", "{kssm}", "--bounds", "1-2"], "bad bounds '1-2'"),
        (["correlation", "{kssm}", "--seq-len", "5000"], "fewer than one sequence"),
        (["ablation", "{kssm}", "{tmp}/missing"], "run directory {tmp}/missing does not exist"),
    ],
)
def test_eval_bad_inputs_are_one_line_errors(eval_runs, tmp_path, capsys, args, match):
    values = {"tmp": tmp_path, **eval_runs}
    before = {name: snapshot(path) for name, path in eval_runs.items()}
    code, _stdout, err = run_cli(capsys, "eval", *[a.format(**values) for a in args], "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, match.format(**values))
    assert not (tmp_path / "out").exists()
    assert {name: snapshot(path) for name, path in eval_runs.items()} == before


def test_eval_commands_have_help_with_an_example(capsys):
    code, out, _ = run_cli(capsys, "eval", "--help")
    assert code == 0 and all(name in out
                             for name in ("intervention", "temperature", "clamp", "correlation", "ablation"))
    for command in ("intervention", "temperature", "clamp", "correlation", "ablation"):
        code, out, _ = run_cli(capsys, "eval", command, "--help")
        assert code == 0 and "Example" in out and "--json" in out and "--out" in out, command


@pytest.mark.slow
def test_a_run_moved_elsewhere_opens_from_any_directory(demo_run, tmp_path, capsys, monkeypatch):
    """The demo's backbone lives inside the run, so the run stores it as a relative path."""
    assert 'name = "backbone/model"' in (demo_run / "config.toml").read_text()
    moved = tmp_path / "moved" / "demo"
    shutil.copytree(demo_run, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "generate", str(moved), "--prompt", "ROMEO:", "-n", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["text"]


# Usage errors and value ranges: one line on stderr naming the problem and the command's --help,
# exit code 2, no traceback, nothing written (each case fails before anything loads or trains).
USAGE_CASES = [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["eval", "nosuch"], "No such command 'nosuch'"),
    (["protocol", "nosuch"], "No such command 'nosuch'"),
    (["generate"], "Missing argument 'model'"),
    (["train"], "Missing argument 'recipe'"),
    (["train-lm"], "Missing argument 'recipe'"),
    (["report"], "Missing argument"),
    (["serve"], "Missing argument"),
    (["diagnose"], "Missing argument"),
    (["eval", "intervention"], "Missing argument 'run_dir'"),
    (["eval", "temperature"], "Missing argument"),
    (["eval", "clamp"], "Missing argument"),
    (["eval", "correlation"], "Missing argument"),
    (["protocol", "run"], "Missing argument"),
    (["protocol", "check"], "Missing argument"),
    (["generate", "x", "--bogus"], "No such option: --bogus"),
    (["train", "x.toml", "--bogus"], "No such option: --bogus"),
    (["train-lm", "x.toml", "--lr", "1"], "No such option: --lr"),
    (["pretrain", "x.toml", "--steps", "3"], "No such option: --steps"),
    (["demo", "--bogus"], "No such option: --bogus"),
    (["bench", "--bogus"], "No such option: --bogus"),
    (["serve", "x", "--bogus"], "No such option: --bogus"),
    (["eval", "clamp", "x", "--bogus"], "No such option: --bogus"),
    (["generate", "x", "-n", "abc"], "Invalid value for '--max-new-tokens'"),
    (["generate", "x", "-n", "1.5"], "Invalid value for '--max-new-tokens'"),
    (["generate", "x", "--temperature", "warm"], "Invalid value for '--temperature'"),
    (["generate", "x", "--top-k", "many"], "Invalid value for '--top-k'"),
    (["generate", "x", "--seed", "s"], "Invalid value for '--seed'"),
    (["bench", "--backbone", "mamba-130m", "--steps", "x"], "Invalid value for '--steps'"),
    (["bench", "--backbone", "mamba-130m", "--seq-len", "1.5"], "Invalid value for '--seq-len'"),
    (["serve", "x", "--port", "http"], "Invalid value for '--port'"),
    (["generate", "x", "-n", "0"], "max_new_tokens must be between 1 and 100,000"),
    (["generate", "x", "-n", "-5"], "max_new_tokens must be between 1 and 100,000"),
    (["generate", "x", "-n", "100000000"], "max_new_tokens must be between 1 and 100,000"),
    (["generate", "x", "--temperature", "-1"], "temperature must be a finite number ≥ 0"),
    (["generate", "x", "--temperature", "nan"], "temperature must be a finite number ≥ 0"),
    (["generate", "x", "--temperature", "inf"], "temperature must be a finite number ≥ 0"),
    (["generate", "x", "--top-k", "-3"], "top_k must be ≥ 0"),
    (["bench", "--backbone", "mamba-130m", "--steps", "0"], "--steps ≥ 1"),
    (["bench", "--backbone", "mamba-130m", "--seq-len", "1"], "--seq-len must be ≥ 2"),
    (["bench", "--backbone", "mamba-130m", "--batches", "1,2"], "one batch size"),
    (["bench", "--backbone", "mamba-130m", "--batches", "a"], "--batches"),
    (["bench", "--backbone", "mamba-9b", "--quick"], "--quick runs a toy stand-in for a named shape"),
    (["bench"], "nothing to measure"),
]


@pytest.mark.parametrize("args, match", USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_usage_errors_and_value_ranges_are_one_line(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override, match",
    [
        ("core.coupling=inf", "core.coupling = inf is not a finite number"),
        ("core.coupling=nan", "core.coupling = nan is not a finite number"),
        ("train.lr=-inf", "train.lr = -inf is not a finite number"),
        ("core.steps=-1", "core.steps must be ≥ 0"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite must be 'stop' or 'skip'"),
        ("backbone.shape=mamba-9b", "backbone.shape must be one of"),
    ],
)
def test_recipe_values_that_cannot_work_are_refused_up_front(tmp_path, capsys, override, match):
    code, _, err = run_cli(capsys, "train", str(RECIPES / "phase-mamba.toml"), "--set", override, "--out",
                           str(tmp_path / "run"))
    assert_one_line_error(code, err, match)
    assert not (tmp_path / "run").exists()


def test_misleading_inputs_get_messages_that_say_what_is_wrong(tmp_path, capsys, tiny_model):
    (tmp_path / "a-folder").mkdir()
    code, _, err = run_cli(capsys, "train", str(tmp_path / "a-folder"))
    assert_one_line_error(code, err, "is a directory; pass a TOML file")

    (tmp_path / "plain-file").write_text("x")
    code, _, err = run_cli(capsys, "train-lm", str(RECIPES / "gpt-baseline.toml"), "--out",
                           str(tmp_path / "plain-file" / "run"))
    assert_one_line_error(code, err, "cannot create run directory")

    folder = tmp_path / "bad-header"
    tiny_model("gpt2").save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])  # a corrupt safetensors header
    code, _, err = run_cli(capsys, "generate", str(folder), "-n", "2")
    assert_one_line_error(code, err, f"cannot load folder {str(folder)!r}")


@pytest.mark.slow
def test_generate_opens_a_train_lm_run(tmp_path, capsys):
    from cli_helpers import train_tiny

    train_tiny(capsys, RECIPES / "gpt2-fusion-baseline.toml", tmp_path / "run")
    code, out, err = run_cli(capsys, "generate", str(tmp_path / "run"), "--prompt", "RO", "-n", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["text"]
