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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .data import check_length, random_batch, sequential_batches
from .errors import PhaseLMError
from .graft import Graft
from .losses import LossConfig, phase_lm_losses
from .observables import GOLDILOCKS, DriftConfig, DriftController, normalized_entropy, tone_histogram

logger = logging.getLogger("phaselm.training")


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 64
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step (the step sees batch_size × grad_accum sequences)
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
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise PhaseLMError(f"train.lr must be > 0 and 0 ≤ train.min_lr ≤ lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise PhaseLMError(f"train.on_nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        if self.distributed not in distributed.DISTRIBUTED_CHOICES:
            raise PhaseLMError(f"train.distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")


def is_main_process() -> bool:
    """False in every process but the first of a multi-process run (`accelerate launch`, `torchrun`)."""
    return int(os.environ.get("RANK", "0")) == 0


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
class StepOutput:
    losses: dict[str, torch.Tensor]  # "loss" is what is minimised; the rest are logged
    logits: torch.Tensor  # (B, T, V)
    order: torch.Tensor | None = None  # (B, T) R per position, when the model has oscillators
    gate_means: torch.Tensor | None = None  # (n_layers,) fusion gates (RWKV share), when the model has them


class Objective(nn.Module):
    """Base class: subclasses set ``self.saved`` (the module to checkpoint) and define forward."""

    saved: nn.Module

    def after_step(self, out: StepOutput) -> dict:
        """Called once per optimizer step; may act (drift) and returns extra metrics."""
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, val_ids: torch.Tensor, batch_size: int, seq_len: int, max_batches: int) -> dict:
        return {"val_ce": _mean_ce(self, val_ids, batch_size, seq_len, max_batches)}


def _mean_ce(objective: nn.Module, ids, batch_size, seq_len, max_batches) -> float:
    device = next(objective.parameters()).device
    total, count = 0.0, 0
    for i, (x, y) in enumerate(sequential_batches(ids, batch_size, seq_len)):
        if i >= max_batches:
            break
        out = objective(x.to(device), y.to(device))
        total += float(out.losses["ce"]) * y.numel()
        count += y.numel()
    return total / count


class LanguageModelObjective(Objective):
    """Next-token cross-entropy of a causal LM (a backbone, a baseline, or K-SSM).

    A model whose output carries a bank regulariser (``reg``) adds ``reg_weight · reg`` to the
    loss (logged as ``bank_reg``); one that carries R per layer (``orders``) reports R as the
    mean over layers per position; one that carries fusion gates (``gate_means``) logs them per
    layer. Validation always reports pure cross-entropy.
    """

    def __init__(self, lm: nn.Module, reg_weight: float = 0.0):
        super().__init__()
        self.lm = lm
        self.saved = lm
        self.reg_weight = reg_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        out = self.lm(input_ids=x)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        losses = {"loss": ce, "ce": ce}
        reg = getattr(out, "reg", None)
        if reg is not None:
            losses.update(loss=ce + self.reg_weight * reg, bank_reg=reg)
        orders = getattr(out, "orders", None)
        return StepOutput(losses, out.logits, orders.mean(1) if orders is not None else None, getattr(out, "gate_means", None))


class PhaseCoreObjective(Objective):
    """A frozen backbone with a grafted Phase Core, trained on the Phase-Mamba losses.

    The backbone and core are both submodules, so ``accelerate`` wraps one module and gradient
    synchronisation covers the core's parameters (the only ones that require grad).
    """

    def __init__(self, handle: Graft, loss: LossConfig, drift: DriftConfig):
        super().__init__()
        self.handle = handle
        self.backbone = handle.model
        self.core = handle.core
        self.saved = handle.core
        self.loss_config = loss
        self.drift = DriftController(drift) if drift.enabled else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits = self.backbone(input_ids=x).logits
        order = self.handle.last.order
        return StepOutput(phase_lm_losses(logits, y, order, self.loss_config), logits, order)

    def after_step(self, out: StepOutput) -> dict:
        metrics = {"coupling_scale": float(self.core.coupling_scale)}
        if self.drift is not None:
            action = self.drift.step(float(out.order.detach().mean()))
            # Acts on the next step: K_eff = K · scale.
            self.core.coupling_scale.fill_(self.drift.scale)
            metrics["drift_action"] = action
        return metrics

    def extra_state(self) -> dict:
        return {"drift_scale": self.drift.scale if self.drift else 1.0}

    def load_extra_state(self, state: dict) -> None:
        if self.drift is not None:
            self.drift.scale = float(state.get("drift_scale", 1.0))

    @torch.no_grad()
    def evaluate(self, val_ids, batch_size, seq_len, max_batches) -> dict:
        with_core = _mean_ce(self, val_ids, batch_size, seq_len, max_batches)
        with self.handle.disabled():
            without_core = _mean_ce(self, val_ids, batch_size, seq_len, max_batches)
        return {
            "val_ce": with_core,
            "val_ce_without_core": without_core,
            "val_ppl_without_core": math.exp(min(without_core, 50.0)),
        }


def step_metrics(out: StepOutput) -> dict:
    """Observables of one training batch, per token (never on batch means)."""
    with torch.no_grad():
        metrics = {k: float(v) for k, v in out.losses.items()}
        u = normalized_entropy(out.logits.detach())
        metrics["u_mean"] = float(u.mean())
        if out.order is not None:
            r = out.order.detach().float()
            metrics.update(
                r_mean=float(r.mean()),
                r_min=float(r.min()),
                r_max=float(r.max()),
                ru_mean=float((r * u).mean()),
                tones=tone_histogram(r),
                goldilocks_residence=GOLDILOCKS.residence(r, u),
            )
        if out.gate_means is not None:  # the fusion gates over training, one value per layer
            metrics["gate_rwkv_share"] = [round(float(g), 5) for g in out.gate_means]
    return metrics


# --------------------------------------------------------------------------------------------
# run directory
# --------------------------------------------------------------------------------------------


# Files that make a directory a run; a new run refuses a directory holding any of them. Other
# content (a backbone folder the demo pretrains beside, a user's notes) is left alone.
RUN_MARKERS = ("config.toml", "metrics.jsonl", "checkpoints", "summary.json", "report.md")


def holds_run(directory: Path) -> bool:
    return any((directory / name).exists() for name in RUN_MARKERS)


def _differ_only_in_resumable_keys(old_text: str, new_text: str) -> bool:
    """Do the two recipes differ in ``train.steps`` (an integer in the new one) and
    ``train.distributed`` alone? Neither changes the model or what a checkpoint holds (a
    recipe written before ``distributed`` existed lacks the key)."""
    from .config import tomllib

    try:
        old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        return False
    if "kind" in new and "kind" not in old:  # a run written before runs recorded their kind
        old = {"kind": new["kind"], **old}
    old_train, new_train = dict(old.get("train", {})), dict(new.get("train", {}))
    for train_section in (old_train, new_train):
        train_section.pop("distributed", None)
    old_train.pop("steps", None)
    steps = new_train.pop("steps", None)
    return isinstance(steps, int) and {**old, "train": old_train} == {**new, "train": new_train}


def prepare_run_dir(run_dir: str | os.PathLike, config_text: str, resume: bool) -> Path:
    """Create a fresh run directory, or check the one being resumed. Never overwrites a run.

    A resumed run must have the same recipe, except that ``train.steps`` may change (extending
    a finished run) and ``train.distributed`` may (an FSDP run resumes under DDP or on one
    process, and vice versa): config.toml then records the new recipe. The cosine schedule follows the
    new length from the resumed step on, so the learning rate moves at the resume.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if resume:
        if not config_file.is_file():
            raise PhaseLMError(f"cannot resume {run_dir}: it holds no config.toml; start a new run without --resume")
        stored = config_file.read_text(encoding="utf-8")
        if stored != config_text:
            if not _differ_only_in_resumable_keys(stored, config_text):
                raise PhaseLMError(
                    f"cannot resume {run_dir}: its config.toml differs from this recipe in more than train.steps and "
                    "train.distributed; resume with the same recipe (those two may change) or start a new run in another directory"
                )
            config_file.write_text(config_text, encoding="utf-8")
        return run_dir
    if run_dir.exists() and (not run_dir.is_dir() or holds_run(run_dir)):
        raise PhaseLMError(f"run directory {run_dir} already holds a run; pass --resume to continue it or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(config_text, encoding="utf-8")
    except OSError as exc:
        raise PhaseLMError(f"cannot create run directory {run_dir}: {exc.strerror or exc}; choose another --out") from None
    return run_dir


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records logged after the checkpoint being resumed, so no step appears twice; a line
    cut short by a kill during its write is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by an interrupted write
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "values") and callable(value.values):  # ModelOutput, dict
        for item in value.values():
            yield from _tensors(item)


@torch.no_grad()
def first_nonfinite_module(root: nn.Module, run) -> str | None:
    """The first module (in execution order, innermost first) whose output holds a NaN or an
    infinity while ``run()`` runs ``root``'s forward; None if every output is finite."""
    found: list[str] = []

    def watch(name):
        def hook(module, args, output):
            if not found and any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(output)):
                found.append(name)

        return hook

    handles = [m.register_forward_hook(watch(name)) for name, m in root.named_modules() if name]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _step_is_finite(loss: torch.Tensor, grad_norm: torch.Tensor, order: torch.Tensor | None) -> bool:
    """One host sync per step: the loss, the gradient norm and R all finite?"""
    ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    if order is not None:
        ok = ok & torch.isfinite(order.detach()).all()
    return bool(ok)


def _nonfinite_report(objective: "Objective", out: StepOutput, x, y, params, autocast) -> tuple[str, str]:
    """(what was not finite, where it came from) for a step that failed :func:`_step_is_finite`."""
    loss_bad = not bool(torch.isfinite(out.losses["loss"].detach()))
    r_bad = out.order is not None and not bool(torch.isfinite(out.order).all())
    # Every process takes the same branch: the forward below is collective under FSDP.
    if not distributed.all_agree(not (loss_bad or r_bad), x.device):
        what = "the loss" if loss_bad else "R" if r_bad else "the loss or R of another process"

        def forward():
            with autocast():
                objective(x, y)

        where = first_nonfinite_module(objective, forward)
        return what, f"module {where}" if where else "the loss terms, or a fault that did not repeat (every module's output was finite when the step ran again)"
    names = {id(p): n for n, p in objective.named_parameters()}
    bad = next(
        (names.get(id(p), "?") for p in params if p.grad is not None and not bool(torch.isfinite(distributed.local_part(p.grad)).all())),
        None,
    )
    return "a gradient", f"parameter {bad}" if bad else "the gradient norm"


def _check_finite_weights(module: nn.Module, step: int, collective: bool = False) -> None:
    """Refuse to checkpoint weights that hold a NaN or an infinity (``collective``: sharded
    weights, checked by every process together)."""
    bad = distributed.first_nonfinite_parameter(module, collective)
    if bad is not None:
        raise PhaseLMError(
            f"step {step}: weight {bad} is not finite, so no checkpoint was written from this state; "
            "lower train.lr or check the recipe, then resume from the last checkpoint or start again"
        )


def _resumed_generator(tensors: dict, seed: int, rank: int, processes: int, step: int, main: bool) -> torch.Generator:
    """This process's data generator as the checkpoint left it.

    A checkpoint holds every process's stream (``data_generators``, one row per process; older
    ones only the first's). A process with no saved stream (more processes than when saving)
    starts a fresh one seeded by seed, rank and step, so no two processes draw alike.
    """
    generator = torch.Generator()
    streams = tensors.get("data_generators")
    if streams is not None and rank < streams.shape[0]:
        generator.set_state(streams[rank].clone())  # a row of its own: set_state reads from the storage start
    elif rank == 0:
        generator.set_state(tensors["data_generator"])
    else:
        generator.manual_seed(seed + rank + 1_000_003 * step)
    saved = streams.shape[0] if streams is not None else 1
    if main and saved != processes:
        logger.info(
            f"resuming {saved}-process data streams on {processes} processes: "
            + ("the extra processes start fresh ones" if processes > saved else "the streams of the missing processes are dropped")
        )
    return generator


def _note_distribution(choice: str, processes: int) -> None:
    """Say once which multi-process path runs (never silently)."""
    if choice == "fsdp" and processes == 1:
        logger.info("train.distributed = 'fsdp' on one process: nothing to shard, so training runs unsharded as with 'ddp'")
    elif choice == "fsdp":
        logger.info(f"FSDP: parameters, gradients and optimizer state sharded over {processes} processes (torch fully_shard)")
    elif processes > 1:
        logger.info(f"DDP over {processes} processes (Accelerate)")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    evaluation: dict
    drift_actions: dict[str, int]
    # Under `accelerate launch` / `torchrun` every process trains; only the main one writes the
    # run's files (metrics, checkpoints, and — in the callers — model, summary and report).
    is_main: bool = True


def _progress(enabled: bool):
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
        _note_distribution(cfg.distributed, accelerator.num_processes)
    generator = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)

    start, drift_totals, latest = 0, Counter(), None
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            damaged = sorted((run_dir / "checkpoints").glob("step-*"))
            if damaged:
                ckpt.load_config(damaged[-1])  # raises the precise one-line reason
            raise PhaseLMError(f"cannot resume {run_dir}: it holds no complete checkpoint; start a new run in another directory")
        # The full weights go in before sharding, which then cuts them like fresh ones.
        ckpt.load_module_state(latest, objective.saved, expected_config=checkpoint_config)
    replicated = distributed.shard(objective, accelerator.device) if sharded else []
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
        generator = _resumed_generator(tensors, cfg.seed, accelerator.process_index, accelerator.num_processes, start, main)
        if main:
            _truncate_metrics(metrics_path, start)

    if sharded:
        # Accelerate would wrap the sharded module in DDP; the optimizer needs no wrapper (no loss scaling).
        model, optimizer_acc = objective, optimizer
    else:
        model, optimizer_acc = accelerator.prepare(objective, optimizer)
    if cfg.compile and cuda:
        model = torch.compile(model)  # the training step only; evaluation and saving use the plain module

    saved_steps: set[int] = set()

    def save(step: int) -> None:
        # Every process decides alike whether to save: under FSDP all of them gather the full
        # weights and optimizer state (collective), and the first one alone writes them.
        if step in saved_steps:
            return
        saved_steps.add(step)
        several = accelerator.num_processes > 1
        _check_finite_weights(objective.saved, step, collective=several)
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
    with _progress(progress and main) as bar:
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
                    with accelerator.autocast():
                        out = model(x, y)
                    accelerator.backward(out.losses["loss"] / cfg.grad_accum)
            distributed.average_gradients(replicated)  # the few parameters FSDP leaves whole (none under DDP)
            # With clipping off, the norm is still computed (max_norm = inf) for the finiteness check.
            grad_norm = distributed.full_tensor(accelerator.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
            finite = _step_is_finite(out.losses["loss"], torch.as_tensor(grad_norm, device=accelerator.device), out.order)
            # All processes stop or skip together: a lone one would leave the others waiting on it.
            if not distributed.all_agree(finite, accelerator.device):
                what, where = _nonfinite_report(objective, out, x, y, params, accelerator.autocast)
                skipped_in_a_row += 1
                stop = cfg.on_nonfinite == "stop" or skipped_in_a_row >= 10
                if main:
                    with metrics_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": step, "nonfinite": what, "source": where, "action": "stop" if stop else "skip"}) + "\n")
                if stop:
                    why = "" if cfg.on_nonfinite == "stop" else " in ten steps in a row"
                    raise PhaseLMError(
                        f"step {step}: {what} is not finite{why} (first produced by {where}); the run stopped before "
                        "updating the weights and wrote no checkpoint from this state; lower train.lr or check the recipe, "
                        "or set train.on_nonfinite = \"skip\" to skip such steps"
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
                record = {"step": step, **step_metrics(out), **extra, "lr": lr, "tokens_per_s": interval_tokens / max(elapsed, 1e-9)}
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
