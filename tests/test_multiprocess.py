"""Training under torchrun: every process trains, the first one alone writes the run.

Two CPU processes (gloo) on a tiny recipe: the run directory holds one model, one summary and
one report, every step is logged once, and `python -m phaselm.cli` is a working entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_python_dash_m_phaselm_cli_runs():
    out = subprocess.run([sys.executable, "-m", "phaselm.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "train-lm" in out.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun missing")
def test_two_processes_train_and_only_the_first_writes(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    overrides = ["train.steps=4", "train.batch_size=2", "train.seq_len=16", "train.eval_batches=1", "train.log_every=1",
                 "gpt.n_embd=32", "gpt.n_layer=1", "gpt.n_head=2"]
    args = [torchrun, "--nproc_per_node", "2", "-m", "phaselm.cli", "train-lm", str(RECIPES / "gpt2-fusion-baseline.toml"),
            "--out", str(tmp_path / "run"), "--json"] + [x for o in overrides for x in ("--set", o)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)  # printed once, by the first process
    assert summary["arch"] == "gpt2" and (tmp_path / "run" / "model" / "config.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("split") != "val"]
    assert steps == [1, 2, 3, 4]
