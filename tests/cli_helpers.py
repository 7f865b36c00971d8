"""Running the ``phaselm`` CLI inside a test and checking its one-line errors."""

from __future__ import annotations

import json

from phaselm.cli import main
from phaselm.config import load_recipe
from phaselm.experiments.language_model import LMRecipe

# Overrides that shrink any language-model recipe to a few CPU-seconds of training.
TINY_TRAIN = [
    "train.steps=3",
    "train.batch_size=2",
    "train.seq_len=16",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "train.eval_every=0",
]
TINY_MODEL = {
    "kssm": [
        "kssm.hidden_size=32",
        "kssm.n_layers=1",
        "kssm.head_dim=16",
        "kssm.n_oscillators=8",
        "kssm.n_harmonics=4",
    ],
    "fusion": ["fusion.hidden_size=32", "fusion.n_layers=1", "fusion.rwkv_head_dim=16", "fusion.mamba_head_dim=16"],
    "gpt2": ["gpt.n_embd=32", "gpt.n_layer=1", "gpt.n_head=2"],
}


def set_args(items) -> list[str]:
    """``["a=1", "b=2"]`` → ``["--set", "a=1", "--set", "b=2"]``."""
    return [x for item in items for x in ("--set", item)]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``phaselm ARGS`` in-process → (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def train_tiny(capsys, recipe, out) -> dict:
    """``phaselm train-lm RECIPE --json`` shrunk by the tiny overrides → its summary (checked)."""
    arch = load_recipe(LMRecipe, recipe).arch
    code, stdout, err = run_cli(
        capsys, "train-lm", str(recipe), "--out", str(out), "--json", *set_args(TINY_TRAIN + TINY_MODEL[arch])
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["arch"] == arch and summary["val_ce"] > 0
    return summary


def assert_one_line_error(code, err, match):
    """Exit code 2 and exactly one ``error: …`` line on stderr that contains ``match``."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]
