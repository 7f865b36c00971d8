"""Training under torchrun: every process trains, the first one alone writes the run.

Two CPU processes (gloo) on a tiny recipe: the run directory holds one model, one summary and
one report, every step is logged once, and `python -m phaselm.cli` is a working entry point.
With `train.distributed = "fsdp"` the same run shards its state (FSDP2): its losses and
checkpoints match the DDP run's, and checkpoints move between FSDP, DDP and one process.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
needs_torchrun = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun missing")


def test_python_dash_m_phaselm_cli_runs():
    out = subprocess.run([sys.executable, "-m", "phaselm.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "train-lm" in out.stdout


@pytest.mark.slow
@needs_torchrun
def test_two_processes_train_and_only_the_first_writes(tmp_path):
    torchrun = TORCHRUN
    overrides = ["train.steps=4", "train.batch_size=2", "train.seq_len=16", "train.eval_batches=1", "train.log_every=1",
                 "gpt.n_embd=32", "gpt.n_layer=1", "gpt.n_head=2"]
    args = [
        torchrun,
        "--nproc_per_node",
        "2",
        "-m",
        "phaselm.cli",
        "train-lm",
        str(RECIPES / "gpt2-fusion-baseline.toml"),
        "--out",
        str(tmp_path / "run"),
        "--json",
    ] + [x for o in overrides for x in ("--set", o)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)  # printed once, by the first process
    assert summary["arch"] == "gpt2" and (tmp_path / "run" / "model" / "config.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("split") != "val"]
    assert steps == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------
# FSDP: a tiny K-SSM (tied embeddings, a 0-d parameter) on two processes, against DDP

TINY_KSSM = [
    "train.steps=4",
    "train.batch_size=2",
    "train.seq_len=16",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.eval_every=0",
    "kssm.hidden_size=32",
    "kssm.n_layers=1",
    "kssm.head_dim=16",
    "kssm.n_oscillators=8",
    "kssm.n_harmonics=4",
    "kssm.dropout=0.0",
]


def train_kssm(run: Path, *overrides: str, nproc: int = 2, resume: bool = False) -> subprocess.CompletedProcess:
    launcher = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    args = [*launcher, "-m", "phaselm.cli", "train-lm", str(RECIPES / "kssm-v3.toml"), "--out", str(run), "--json"]
    args += [x for o in [*TINY_KSSM, *overrides] for x in ("--set", o)] + (["--resume"] if resume else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=run.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"  # one writer
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_same_checkpoint(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Same files, tensor names, shapes and JSON structure; values within ``atol`` (RNG states aside)."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "training_state.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys(), sorted(set(ta) ^ set(tb))
        for key in ta:
            assert ta[key].shape == tb[key].shape and ta[key].dtype == tb[key].dtype, key
            if not key.startswith("rng."):
                assert torch.allclose(ta[key].float(), tb[key].float(), atol=atol, rtol=0), key
    ja, jb = (json.loads((c / "training_state.json").read_text()) for c in (a, b))
    assert ja["optimizer"] == jb["optimizer"] and ja["scheduler"] == jb["scheduler"] and ja["extra"] == jb["extra"]


@pytest.fixture(scope="module")
def ddp_and_fsdp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    ddp = train_kssm(root / "ddp", "train.distributed='ddp'")
    fsdp = train_kssm(root / "fsdp", "train.distributed='fsdp'")
    return root, ddp, fsdp


@pytest.mark.slow
@needs_torchrun
def test_fsdp_matches_ddp_and_only_the_first_process_writes(ddp_and_fsdp_runs):
    root, ddp, fsdp = ddp_and_fsdp_runs
    assert "FSDP: parameters, gradients and optimizer state sharded over 2 processes" in fsdp.stderr
    assert "DDP over 2 processes" in ddp.stderr
    summary = json.loads(fsdp.stdout)  # printed once, by the first process
    assert summary["arch"] == "kssm" and (root / "fsdp" / "model" / "config.json").is_file()
    assert (root / "fsdp" / "summary.json").is_file() and (root / "fsdp" / "report.md").is_file()
    ddp_losses, fsdp_losses = train_losses(root / "ddp"), train_losses(root / "fsdp")
    assert sorted(fsdp_losses) == [1, 2, 3, 4]
    for step in ddp_losses:  # gradients reduced in another order: float32 rounding apart
        assert fsdp_losses[step] == pytest.approx(ddp_losses[step], abs=1e-5), step
    # The checkpoints hold the full, unsharded state in exactly the DDP run's format.
    for step in ("step-000002", "step-000004"):
        assert_same_checkpoint(root / "ddp" / "checkpoints" / step, root / "fsdp" / "checkpoints" / step)
    # The saved model is the trained one, unsharded: its weights are the last checkpoint's.
    from safetensors.torch import load_file

    final = load_file(str(root / "fsdp" / "checkpoints" / "step-000004" / "model.safetensors"))
    saved = {}
    for file in (root / "fsdp" / "model").glob("*.safetensors"):
        saved.update(load_file(str(file)))
    for key, tensor in saved.items():
        assert torch.equal(tensor, final[key]), key


def killed_after_step_2(run: Path, copy: Path) -> Path:
    """``copy`` holds ``run`` as a kill after the step-2 checkpoint would have left it."""
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-000002", copy / "checkpoints" / "step-000002")
    for name in ("config.toml", "metrics.jsonl"):  # metrics of steps 3 and 4 included: resume drops them
        shutil.copy(run / name, copy / name)
    return copy


@pytest.mark.slow
@needs_torchrun
def test_fsdp_resumes_a_ddp_checkpoint_and_one_process_resumes_an_fsdp_one(ddp_and_fsdp_runs):
    root, _, _ = ddp_and_fsdp_runs
    ddp_losses, fsdp_losses = train_losses(root / "ddp"), train_losses(root / "fsdp")
    # DDP → FSDP: the sharded optimizer state carries on where DDP left it.
    resumed = killed_after_step_2(root / "ddp", root / "ddp-then-fsdp")
    train_kssm(resumed, "train.distributed='fsdp'", resume=True)
    resumed_losses = train_losses(resumed)
    assert sorted(resumed_losses) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed_losses[step] == pytest.approx(ddp_losses[step], abs=1e-5), step
    assert_same_checkpoint(root / "ddp" / "checkpoints" / "step-000004", resumed / "checkpoints" / "step-000004")
    # FSDP → one process: step 3 sees the first process's batch (its data generator is in the
    # checkpoint) with the FSDP run's step-2 weights, so its loss is the one that run logged.
    alone = killed_after_step_2(root / "fsdp", root / "fsdp-then-one")
    out = train_kssm(alone, "train.distributed='ddp'", nproc=1, resume=True)
    alone_losses = train_losses(alone)
    assert sorted(alone_losses) == [1, 2, 3, 4] and math.isfinite(alone_losses[4])
    assert alone_losses[3] == pytest.approx(fsdp_losses[3], abs=1e-5)
    assert json.loads(out.stdout)["arch"] == "kssm" and (alone / "model" / "config.json").is_file()


def test_train_distributed_is_ddp_or_fsdp(raises_phaselm):
    from phaselm.training import TrainConfig

    with raises_phaselm("train.distributed must be 'ddp' or 'fsdp'"):
        TrainConfig(distributed="zero3")


def test_fsdp_on_one_process_trains_unsharded_and_says_so(tmp_path, tiny_model, caplog):
    import logging

    from phaselm.objectives import LanguageModelObjective
    from phaselm.training import TrainConfig, train

    ids = torch.randint(0, 32, (400,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=8, warmup_steps=1, log_every=1, eval_batches=1, distributed="fsdp")
    with caplog.at_level(logging.INFO, logger="phaselm"):
        train(
            LanguageModelObjective(tiny_model("gpt2")), ids[:300], ids[300:], cfg, tmp_path / "run", "", progress=False
        )
    assert sum("nothing to shard" in r.getMessage() for r in caplog.records) == 1
    assert torch.isfinite(torch.tensor(train_losses(tmp_path / "run")[2]))


def test_unwrap_leaves_no_fsdp_mark_that_makes_generate_wait_for_other_processes(tmp_path):
    """A 2-GPU Phase Core FSDP run hung at exit: its first process sampled alone, and transformers'
    generate, seeing fully_shard's mark on the model, all-reduced once per token (synced_gpus)."""
    import torch.distributed as dist
    from transformers.distributed.fsdp import is_fsdp_managed_module

    from phaselm import distributed
    from phaselm.backbones import MambaSpec, build_mamba

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_mamba(MambaSpec(hidden_size=16, n_layers=1), vocab_size=11)
        distributed.shard(model, torch.device("cpu"))
        assert is_fsdp_managed_module(model)
        distributed.unwrap(model)
        assert not any(is_fsdp_managed_module(m) for m in model.modules())
        assert not any("_fsdp_use_orig_params" in vars(m) for m in model.modules())
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# FSDP on torch releases that look for a forward's outputs with pytree (the GPU machine's 2.11)


@pytest.fixture
def one_process_group(tmp_path):
    """A one-process gloo group: fully_shard runs its whole hook machinery on a single process too."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def outputs_found_as_older_torch_finds_them(monkeypatch):
    """FSDP2 hooks the end of backward onto the forward's output tensors. torch 2.13 looks inside
    dataclasses for them; older releases flatten the output with torch's pytree, to which an
    unregistered dataclass is one opaque leaf. Here 2.13 finds them the older way."""
    from torch.distributed.fsdp._fully_shard import _fsdp_state
    from torch.utils._pytree import tree_flatten

    if hasattr(_fsdp_state, "collect_grad_tensors"):  # absent: this torch already searches the older way
        monkeypatch.setattr(
            _fsdp_state,
            "collect_grad_tensors",
            lambda output: tuple(t for t in tree_flatten(output)[0] if torch.is_tensor(t) and t.requires_grad),
        )


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def test_a_backward_fsdp_never_saw_is_caught_and_exposing_the_output_type_fixes_it(
    one_process_group, outputs_found_as_older_torch_finds_them, raises_phaselm
):
    """The 2-GPU FSDP run that did not learn: the objective's dataclass output hid its tensors, so
    FSDP never finished a backward and the optimizer's shards never got a gradient."""
    import dataclasses

    from phaselm import distributed

    @dataclasses.dataclass
    class Out:  # a fresh type, registered with no pytree yet
        loss: torch.Tensor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return Out(self.linear(x).square().mean())

    x = torch.randn(3, 4)
    hidden = Net()
    distributed.shard(hidden, torch.device("cpu"))
    shards = trainable(hidden)
    hidden(x).loss.backward()
    assert all(p.grad is None for p in shards)  # what the optimizer steps got nothing
    with raises_phaselm("FSDP did not finish the backward pass"):
        distributed.check_backward_finished(hidden, shards)

    exposed = Net()
    distributed.shard(exposed, torch.device("cpu"), output_types=(Out,))
    shards = trainable(exposed)
    exposed(x).loss.backward()
    distributed.check_backward_finished(exposed, shards)
    assert all(p.grad is not None for p in shards)


def test_sharded_objective_gradients_match_the_unsharded_ones_on_older_torch(
    one_process_group, outputs_found_as_older_torch_finds_them, tiny_model
):
    """train()'s sharding of an objective (StepOutput, tied embeddings): every shard gets the plain
    model's gradient, however this torch's FSDP looks for the outputs."""
    import copy

    from torch.distributed.tensor import DTensor

    from phaselm import distributed
    from phaselm.objectives import LanguageModelObjective, StepOutput

    objective = LanguageModelObjective(tiny_model("gpt2"))
    reference = copy.deepcopy(objective)
    distributed.shard(objective, torch.device("cpu"), output_types=(StepOutput,))
    shards = trainable(objective)
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    objective(x, y).losses["loss"].backward()
    distributed.check_backward_finished(objective, shards)
    reference(x, y).losses["loss"].backward()
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    for name, shard, plain in zip(names, shards, trainable(reference), strict=True):
        assert isinstance(shard.grad, DTensor), name
        assert torch.allclose(distributed.full_tensor(shard.grad), plain.grad, atol=1e-6), name
