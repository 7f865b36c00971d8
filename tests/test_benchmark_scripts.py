"""The device scripts run end to end on CPU at toy sizes (a broken script wastes device time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from cli_helpers import TINY_MODEL, TINY_TRAIN, set_args

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args, timeout=120, interpret=True) -> subprocess.CompletedProcess:
    """``python3 ARGS`` from the repo root with src/ on the path, as the device runs the scripts
    (``interpret=False``: without the tests' TRITON_INTERPRET, so Triton kernels count as absent)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if not interpret:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_jobs_runs_jobs_side_by_side_and_collects_every_result(tmp_path):
    sets = set_args(TINY_TRAIN)
    command = [
        "benchmarks/train_jobs.py", "--out", str(tmp_path), "--parallel", "2", "--limit", "300", *sets,
        "--job", "gpt", "recipes/gpt-baseline.toml", *TINY_MODEL["gpt2"],
        "--job", "mamba", "recipes/mamba2.toml", *TINY_MODEL["fusion"],
        "--job", "broken", "recipes/mamba2.toml", "fusion.no_such_key=1",
        "--keep", "gpt",
    ]
    done = run_script(*command, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        table = tar.extractfile("./table.txt").read().decode()
    assert {"machine.txt", "table.txt", "gpt.metrics.jsonl", "mamba.summary.json", "broken.log"} <= names
    rows = dict(line.split(": ", 1) for line in table.splitlines())
    assert (
        rows["gpt"].startswith("parameters")
        and "(GPU shared)" in rows["gpt"]
        and rows["mamba"].startswith("parameters")
    )
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


def load_profile_step():
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_compiles_each_models_stack_of_layers_in_blocks_mode():
    profile_step = load_profile_step()
    for recipe, arch, layers in (
        ("fusion-gf-mh.toml", "fusion", "fusion.n_layers=3"),
        ("gpt-baseline.toml", "gpt2", "gpt.n_layer=3"),
        ("kssm-v3.toml", "kssm", "kssm.n_layers=3"),
    ):
        overrides = dict(profile_step.parse_override(item) for item in [*TINY_MODEL[arch], layers])
        _, objective, forward, _ = profile_step.make(str(ROOT / "recipes" / recipe), "eager", overrides, device="cpu")
        assert forward is objective
        blocks = profile_step.repeated_blocks(objective)
        assert len(blocks) == 3, recipe  # the layers, not some shorter list inside a layer


def test_profile_step_refuses_an_unknown_mode():
    done = run_script("benchmarks/profile_step.py", "--variant", "x", "recipes/mamba2.toml", "fast")
    assert done.returncode == 2 and "the mode must be one of eager, compiled, blocks, got 'fast'" in done.stderr


def test_compile_time_refuses_an_unknown_mode():
    done = run_script("benchmarks/compile_time.py", "recipes/mamba2.toml", "--mode", "layers")
    assert done.returncode == 2 and "invalid choice: 'layers'" in done.stderr


def test_kssm_profile_smoke_times_every_backend_pair_and_breaks_a_step_down(tmp_path):
    # conftest sets TRITON_INTERPRET=1, which the script inherits: the Triton pairs run too.
    done = subprocess.run(
        [sys.executable, "benchmarks/kssm_profile.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OUT": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "kssm_profile.json").read_text())
    names = {"gpt", *(f"kssm ssd={s} bank={b}" for s in ("chunked", "triton") for b in ("reference", "triton"))}
    assert set(result["speeds"]) == names
    for name, speed in result["speeds"].items():
        assert speed.get("tokens_per_s", 0) > 0, (name, speed)
    kssm, gpt = result["breakdown_ms"]["kssm"], result["breakdown_ms"]["gpt"]
    assert (
        kssm["mixer"] > 0 and kssm["bank"] > 0 and kssm["mlp"] > 0 and kssm["optimizer"] > 0 and kssm["attention"] == 0
    )
    assert gpt["attention"] > 0 and gpt["mixer"] == gpt["bank"] == 0
    for groups in (kssm, gpt):
        assert sum(v for k, v in groups.items() if k != "step") <= groups["step"] * 1.001
    assert "| mixer |" in done.stdout and "× GPT" in done.stdout


def test_train_jobs_protocol_copy_points_at_the_runs_and_counts_them(tmp_path):
    import importlib.util

    from phaselm.protocols.spec import load_protocol

    spec = importlib.util.spec_from_file_location("train_jobs", ROOT / "benchmarks" / "train_jobs.py")
    train_jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_jobs)
    runs = [tmp_path / f"run-s{i}" for i in range(3)]
    copy = train_jobs.protocol_copy(ROOT / "protocols" / "kssm-does-r-matter.toml", runs, tmp_path / "p.toml")
    protocol = load_protocol(copy)  # the protocol's own checks: 20 windows × 3 seeds × 3 runs = 180
    assert protocol.model_path == str(runs[0]) and list(protocol.runs) == [str(r) for r in runs[1:]]
    assert protocol.samples_per_condition == 180


def test_seed_experiments_trains_toy_runs_and_runs_the_protocol_on_their_seeds(tmp_path):
    """benchmarks/seed_experiments.sh at toy sizes: two seeds of one oscillator variant, then the
    does-R-matter protocol over both runs (on the device it once failed only at this last step)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SMOKE": "1", "STAGE": "kssm", "VARIANTS": "bistable", "SEEDS": "0 1", "OUT": str(tmp_path / "out"),
           "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", "benchmarks/seed_experiments.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "protocol does-r-matter-bistable exit 0" in done.stdout, done.stdout[-2000:]
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        verdict = tar.extractfile("./does-r-matter-bistable.protocol.md").read().decode()
    assert {"bistable-s0.metrics.jsonl", "bistable-s1.metrics.jsonl", "does-r-matter-bistable.protocol.json"} <= names
    assert "2 runs" in verdict or "× 2 run" in verdict


def test_kssm_profile_lists_a_fusion_models_kernels_at_an_overridden_shape(tmp_path):
    """The fusion targets of issue 13 are profiled with the same script: --kssm names their recipe."""
    command = [sys.executable, "benchmarks/kssm_profile.py", "--smoke", "--kssm", "recipes/fusion-gf-mh.toml",
               "--gpt", "recipes/gpt2-fusion-baseline.toml", "--pairs", "chunked:reference", "--no-breakdown",
               "--kernels", "3", "--set", "train.seq_len=24"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    speeds = json.loads((tmp_path / "kssm_profile.json").read_text())["speeds"]
    assert set(speeds) == {"gpt", "fusion-gf-mh ssd=chunked bank=reference"}
    for speed in speeds.values():
        assert speed["kernels"]["launches"] > 0 and len(speed["kernels"]["top"]) == 3
    assert "fusion-gf-mh ssd=chunked bank=reference: one compiled step" in done.stdout


def test_seed_experiments_pretrains_a_backbone_then_grafts_cores_and_runs_their_protocols(tmp_path):
    """STAGE=phase-mamba at toy sizes: `phaselm pretrain`, one Phase Core per seed through
    train_jobs' `--command train`, then does-R-matter over the cores and the observation and
    intervention protocols on the first; results.tgz holds each protocol's verdict."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SMOKE": "1", "STAGE": "phase-mamba", "SEEDS": "0 1", "CORPUS": "tinyshakespeare",
           "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}
    done = subprocess.run(["bash", "benchmarks/seed_experiments.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for protocol in ("does-r-matter", "observation", "intervention"):
        assert f"protocol {protocol}-phase-mamba exit 0" in done.stdout, done.stdout[-2000:]
    assert json.loads((tmp_path / "out" / "backbone.summary.json").read_text())["steps"] == 3
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        table = tar.extractfile("./table.txt").read().decode()
    assert {"pm-s0.metrics.jsonl", "pm-s1.summary.json", "does-r-matter-phase-mamba.protocol.json",
            "intervention-phase-mamba.protocol.md"} <= names
    assert "with core" in table and "R mean" in table


def test_check_fast_paths_runs_on_cpu_and_its_chunked_paths_match_their_references(tmp_path):
    """The device's correctness check must not rot between device calls: on CPU it runs the
    PyTorch fast paths (the compiled kernels are skipped) and writes every check it knows."""
    done = run_script("benchmarks/check_fast_paths.py", "--out", str(tmp_path), timeout=300, interpret=False)
    assert done.returncode == 0, done.stderr[-2000:]
    checks = json.loads((tmp_path / "fast_paths.json").read_text())["checks"]
    chunked = ("rwkv6 chunked vs reference", "ssd chunked vs reference")
    assert {*chunked, "selective scan triton vs reference"} <= set(checks)
    for name in chunked:
        errors = checks[name]["forward"] + checks[name]["backward"]
        assert max(errors) < 1e-4, (name, checks[name])


def test_kernel_totals_leave_out_user_annotations():
    """The optimizer's record_function range has a device row spanning its kernels and the gaps
    between them; summed with the kernels' own rows it counted AdamW twice."""
    import importlib.util
    from types import SimpleNamespace

    import torch

    spec = importlib.util.spec_from_file_location("kssm_profile", ROOT / "benchmarks" / "kssm_profile.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    cuda = torch.autograd.DeviceType.CUDA

    def row(key, annotation=False, device_time=5.0):
        return SimpleNamespace(key=key, is_user_annotation=annotation, device_time_total=device_time,
                               device_type=cuda, self_cpu_time_total=1.0)

    assert profile.is_kernel(row("_rwkv6_fwd_kernel"), "cuda")
    assert profile.is_kernel(row("multi_tensor_apply_kernel"), "cuda")  # AdamW's own kernels stay
    assert not profile.is_kernel(row("Optimizer.step#AdamW.step", annotation=True), "cuda")
    assert not profile.is_kernel(row("Optimizer.step#AdamW.step"), "cuda")  # torch without the flag
    assert not profile.is_kernel(row("my region", annotation=True), "cpu")
    assert not profile.is_kernel(row("idle", device_time=0.0), "cuda")
