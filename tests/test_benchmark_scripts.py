"""The device scripts run end to end on CPU at toy sizes (a broken script wastes device time)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from cli_helpers import TINY_MODEL, TINY_TRAIN, set_args

ROOT = Path(__file__).resolve().parents[1]


def test_train_jobs_runs_jobs_side_by_side_and_collects_every_result(tmp_path):
    sets = set_args(TINY_TRAIN)
    command = [
        sys.executable, "benchmarks/train_jobs.py", "--out", str(tmp_path), "--parallel", "2", "--limit", "300", *sets,
        "--job", "gpt", "recipes/gpt-baseline.toml", *TINY_MODEL["gpt2"],
        "--job", "mamba", "recipes/mamba2.toml", *TINY_MODEL["fusion"],
        "--job", "broken", "recipes/mamba2.toml", "fusion.no_such_key=1",
        "--keep", "gpt",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        table = tar.extractfile("./table.txt").read().decode()
    assert {"machine.txt", "table.txt", "gpt.metrics.jsonl", "mamba.summary.json", "broken.log"} <= names
    rows = dict(line.split(": ", 1) for line in table.splitlines())
    assert rows["gpt"].startswith("parameters") and "(GPU shared)" in rows["gpt"] and rows["mamba"].startswith("parameters")
    assert rows["broken"].startswith("no result")  # a failing job is reported, and does not stop the others
    parts = sorted(tmp_path.glob("gpt.model.tgz.part-*"))
    assert parts and not list(tmp_path.glob("mamba.model.tgz.part-*"))
    joined = tmp_path / "gpt.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert "gpt/model/config.json" in tar.getnames() and not any("checkpoints" in n for n in tar.getnames())


def test_device_scripts_parse():
    for script in sorted((ROOT / "benchmarks").glob("*.sh")):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
