"""The one training loop of PhaseLM (Accelerate): pretraining a backbone and training a grafted core.

What trains is an :class:`Objective`: a module whose ``forward(x, y)`` returns the named loss
terms, the logits and (when there are oscillators) R per position. The loop owns everything
else: AdamW, warm-up + cosine, gradient clipping, bf16 autocast on CUDA, metrics JSONL,
progress bar, checkpoints and ``resume``, and a numerical guard: a step whose loss, gradient
norm or R is not finite stops the run before it updates the weights, naming the first module
that produced it (``train.on_nonfinite = "skip"`` skips such steps instead), and no checkpoint
is written from weights that are not finite. It runs single-process on a CPU and unchanged under
``accelerate launch`` / ``torchrun``: DDP through Accelerate, or with ``train.distributed =
"fsdp"`` the trainable state sharded over the processes (:mod:`phaselm.distributed`); either way
a checkpoint holds the full weights and optimizer state, so it resumes under either, or on one
process.

The pieces it uses live beside it: :mod:`phaselm.objectives` (what trains),
:mod:`phaselm.guard` (the numerical guard), :mod:`phaselm.run_directory` (creating and resuming a
run directory) and :mod:`phaselm.distributed` (multi-process helpers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .data import check_length, random_batch
from .errors import PhaseLMError
from .guard import check_finite_weights, nonfinite_report, step_is_finite

# The objectives used to live here; scripts and notebooks import them from phaselm.training.
from .objectives import LanguageModelObjective, Objective, PhaseCoreObjective, StepOutput, step_metrics  # noqa: F401  (re-exported)
from .run_directory import prepare_run_dir, truncate_metrics

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """The `[train]` table: steps, batch, schedule, checkpoints, evaluation and the numerical guard."""
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 64
    # micro-batches of batch_size per optimizer step (the step sees batch_size × grad_accum sequences)
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine ends here
    warmup_steps: int = 20
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    checkpoint_every: int = 0  # 0: checkpoint only at the end
    seed: int = 0
    bf16: bool = True  # autocast in bf16 on CUDA; ignored on CPU
    compile: bool = True  # torch.compile the training step on CUDA (2–3× faster); ignored on CPU
    # torch.compile's mode: "reduce-overhead" replays the step as CUDA graphs, which pays where
    # the host cannot issue a small model's many kernels as fast as the GPU runs them.
    compile_mode: str = "default"
    # A step whose loss, gradient norm or R is not finite: "stop" the run (with the module that
    # produced it) or "skip" the step (ten in a row still stop it).
    on_nonfinite: str = "stop"
    # Several processes: "ddp" replicates the model (Accelerate); "fsdp" shards parameters,
    # gradients and optimizer state over them (for a trainable core too big to replicate).
    distributed: str = "ddp"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise PhaseLMError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise PhaseLMError(f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise PhaseLMError(f"train.lr must be > 0 and 0 ≤ train.min_lr ≤ lr, got lr={self.lr}, "
                               f"min_lr={self.min_lr}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise PhaseLMError(f"train.on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise PhaseLMError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, "
                               f"got {self.compile_mode!r}")
        if self.distributed not in distributed.DISTRIBUTED_CHOICES:
            raise PhaseLMError(f"train.distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (≥ 2-D) only, as nanoGPT does.

    Decaying 1-D parameters would pull gains, biases and an SSM's decay rates (A_log, dt_bias)
    and oscillator frequencies toward zero, which is a change of model, not a regulariser.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine down to min_lr at the last step (a LambdaLR factor)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What a finished (or stopped) training run returns: its directory, last step, evaluation, drift actions."""
    run_dir: Path
    step: int
    evaluation: dict
    drift_actions: dict[str, int]
    # Under `accelerate launch` / `torchrun` every process trains; only the main one writes the
    # run's files (metrics, checkpoints, and — in the callers — model, summary and report).
    is_main: bool = True


def progress_bar(enabled: bool):
    """The rich progress bar of training and evaluation, on stderr (stdout stays clean for ``--json``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
        transient=False,
        console=Console(stderr=True),  # stdout stays clean for --json
    )


def train(
    objective: Objective,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    config_text: str,
    resume: bool = False,
    progress: bool = True,
    description: str = "training",
    checkpoint_config: dict | None = None,
) -> TrainResult:
    """Train ``objective`` for ``cfg.steps`` steps, writing metrics and checkpoints to ``run_dir``.

    ``checkpoint_config`` (e.g. the model's config as a dict) is stored with every checkpoint
    and must match on resume, so weights never load into a differently shaped model.
    """
    from accelerate import Accelerator

    check_length(train_ids, cfg.seq_len, "training split")
    check_length(val_ids, cfg.seq_len, "validation split")
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and cfg.bf16 else "no")
    main = accelerator.is_main_process
    run_dir = prepare_run_dir(run_dir, config_text, resume) if main else Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint_config = checkpoint_config or {}

    objective.to(accelerator.device)
    if not any(p.requires_grad for p in objective.parameters()):
        raise PhaseLMError("nothing to train: the objective has no parameter that requires grad")
    sharded = cfg.distributed == "fsdp" and accelerator.num_processes > 1
    if main:
        distributed.log_distribution(cfg.distributed, accelerator.num_processes)
    generator = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)

    start, drift_totals, latest = 0, Counter(), None
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            damaged = sorted((run_dir / "checkpoints").glob("step-*"))
            if damaged:
                ckpt.load_config(damaged[-1])  # raises the precise one-line reason
            raise PhaseLMError(f"cannot resume {run_dir}: it holds no complete checkpoint; start a new run in another "
                               "directory")
        # The full weights go in before sharding, which then cuts them like fresh ones.
        ckpt.load_module_state(latest, objective.saved, expected_config=checkpoint_config)
    replicated = distributed.shard(objective, accelerator.device, output_types=(StepOutput,)) if sharded else []
    # Built after sharding, which replaces every parameter by its shard.
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decay_groups(objective, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    if latest is not None:
        shard_state = (lambda state: distributed.shard_optimizer_state(state, optimizer)) if sharded else None
        extra, tensors = ckpt.load_training_state(latest, optimizer, scheduler, adapt_optimizer_state=shard_state)
        start = int(extra["step"])
        if start >= cfg.steps:
            raise PhaseLMError(f"{run_dir} already finished all {cfg.steps} steps; nothing to resume")
        drift_totals.update(extra.get("drift_actions", {}))
        objective.load_extra_state(extra)
        generator = distributed.resumed_data_generator(tensors, cfg.seed, accelerator.process_index,
                                                       accelerator.num_processes, start, main)
        if main:
            truncate_metrics(metrics_path, start)

    if sharded:
        # Accelerate would wrap the sharded module in DDP; the optimizer needs no wrapper (no loss scaling).
        model, optimizer_acc = objective, optimizer
    else:
        model, optimizer_acc = accelerator.prepare(objective, optimizer)
    graphed = cfg.compile and cuda and cfg.compile_mode == "reduce-overhead"
    if cfg.compile and cuda:
        # The training step only; evaluation and saving use the plain module.
        model = torch.compile(model, **({} if cfg.compile_mode == "default" else {"mode": cfg.compile_mode}))

    saved_steps: set[int] = set()

    def save(step: int) -> None:
        # Every process decides alike whether to save: under FSDP all of them gather the full
        # weights and optimizer state (collective), and the first one alone writes them.
        if step in saved_steps:
            return
        saved_steps.add(step)
        several = accelerator.num_processes > 1
        check_finite_weights(objective.saved, step, collective=several)
        module_state = optimizer_state = None
        if sharded:
            module_state = distributed.gather_full(objective.saved.state_dict(), keep=main)
            optimizer_state = distributed.gather_full(optimizer.state_dict(), keep=main)
        # Every process's data stream, so a resumed process draws what it would have drawn.
        generators = accelerator.gather(generator.get_state().to(accelerator.device)).cpu() if several else None
        if not main:
            return
        streams = {"data_generator": generator.get_state()}
        if generators is not None:
            streams["data_generators"] = generators.reshape(accelerator.num_processes, -1)
        extra = {"step": step, "drift_actions": dict(drift_totals), **objective.extra_state()}
        target = ckpt.checkpoint_dir(run_dir, step)
        if ckpt.is_checkpoint(target):
            return
        ckpt.save_checkpoint(
            target, objective.saved, checkpoint_config, optimizer, scheduler, extra, streams,
            module_state=module_state, optimizer_state=optimizer_state,
        )

    def evaluate(step: int) -> dict:
        objective.eval()
        with accelerator.autocast():
            result = objective.evaluate(val_ids, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
        objective.train()
        result["val_ppl"] = math.exp(min(result["val_ce"], 50.0))
        if main:
            with metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "split": "val", **result}) + "\n")
        return result

    objective.train()
    evaluation: dict = {}
    interval_tokens, interval_start, interval_actions = 0, time.perf_counter(), Counter()
    skipped_in_a_row = 0
    with progress_bar(progress and main) as bar:
        task = bar.add_task(description, total=cfg.steps, completed=start, status="")
        for step in range(start + 1, cfg.steps + 1):
            for micro in range(cfg.grad_accum):
                x, y = random_batch(train_ids, cfg.batch_size, cfg.seq_len, generator)
                x, y = x.to(accelerator.device), y.to(accelerator.device)
                # Gradients are synchronised across processes on the last micro-batch only.
                if micro == cfg.grad_accum - 1:
                    syncing = contextlib.nullcontext()
                else:
                    syncing = distributed.gradient_sync(objective, False) if sharded else accelerator.no_sync(model)
                with syncing:
                    if graphed:  # a new step: the graphs may overwrite the previous step's outputs
                        torch.compiler.cudagraph_mark_step_begin()
                    with accelerator.autocast():
                        out = model(x, y)
                    accelerator.backward(out.losses["loss"] / cfg.grad_accum)
            if sharded:  # a backward FSDP did not finish would leave the shards without gradients
                distributed.check_backward_finished(objective, params)
            distributed.average_gradients(replicated)  # the few parameters FSDP leaves whole (none under DDP)
            # With clipping off, the norm is still computed (max_norm = inf) for the finiteness check.
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = distributed.full_tensor(accelerator.clip_grad_norm_(params, max_norm))
            finite = step_is_finite(out.losses["loss"], torch.as_tensor(grad_norm, device=accelerator.device),
                                    out.order)
            # All processes stop or skip together: a lone one would leave the others waiting on it.
            if not distributed.all_agree(finite, accelerator.device):
                what, where = nonfinite_report(objective, out, x, y, params, accelerator.autocast)
                skipped_in_a_row += 1
                stop = cfg.on_nonfinite == "stop" or skipped_in_a_row >= 10
                if main:
                    with metrics_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": step, "nonfinite": what, "source": where,
                                            "action": "stop" if stop else "skip"}) + "\n")
                if stop:
                    why = "" if cfg.on_nonfinite == "stop" else " in ten steps in a row"
                    raise PhaseLMError(
                        f"step {step}: {what} is not finite{why} (first produced by {where}); the run stopped before "
                        "updating the weights and wrote no checkpoint from this state; lower train.lr or check the "
                        "recipe, or set train.on_nonfinite = \"skip\" to skip such steps"
                    )
                optimizer_acc.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # no optimizer step on purpose: the schedule follows the step count
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                bar.update(task, advance=1, status=f"skipped a non-finite step ({what})")
                continue
            skipped_in_a_row = 0
            lr = scheduler.get_last_lr()[0]
            optimizer_acc.step()
            scheduler.step()
            optimizer_acc.zero_grad(set_to_none=True)
            extra = objective.after_step(out)
            if "drift_action" in extra:
                interval_actions[extra["drift_action"]] += 1
                drift_totals[extra["drift_action"]] += 1
            interval_tokens += y.numel() * cfg.grad_accum * accelerator.num_processes

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - interval_start
                record = {"step": step, **step_metrics(out), **extra, "lr": lr,
                          "tokens_per_s": interval_tokens / max(elapsed, 1e-9)}
                if interval_actions:
                    record["drift_counts"] = dict(interval_actions)
                if main:
                    with metrics_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
                status = f"loss {record['loss']:.3f}" + (f"  R {record['r_mean']:.2f}" if "r_mean" in record else "")
                bar.update(task, status=status)
                interval_tokens, interval_start, interval_actions = 0, time.perf_counter(), Counter()
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                evaluate(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(step)
            bar.update(task, advance=1)

    evaluation = evaluate(cfg.steps)
    save(cfg.steps)
    if sharded:
        distributed.unwrap(objective)  # the callers generate and save with the model's own modules
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, cfg.steps, evaluation, dict(drift_totals), main)
