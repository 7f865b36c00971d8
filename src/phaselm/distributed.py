"""Multi-process training helpers: FSDP sharding (``train.distributed = "fsdp"``), full-state
gathering for checkpoints, and decisions every process must take together.

Why torch's FSDP2 (``fully_shard``) and not Accelerate's ``FullyShardedDataParallelPlugin``:
Accelerate (1.x) switches to its FSDP path only on GPU-like devices; a CPU run under torchrun
stays DDP whatever plugin it is given, so the CPU (gloo) tests could never run the sharded
code. ``fully_shard`` runs the same code on gloo and NCCL. It also keeps the original
parameters (what FSDP1 needs ``use_orig_params=True`` for), so a frozen backbone and the grafted
Phase Core that trains inside it shard side by side despite their mixed ``requires_grad``.

The whole objective is one FSDP unit: at rest each process holds 1/N of every parameter, of
its gradient and of the optimizer state (AdamW's two moments, the bulk of a big core's
training memory); for each step the parameters are gathered whole, so peak memory for the
weights themselves is not reduced.

Every function that gathers or agrees is collective: all processes must call it, in the same
order, even where only the first one writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import PhaseLMError

DISTRIBUTED_CHOICES = ("ddp", "fsdp")

logger = logging.getLogger("phaselm.distributed")


def world_size() -> int:
    """Processes in this run (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) tensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, _dtensor_type()) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (collective: all-gathers it); any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, _dtensor_type()) else tensor


def shard(module: nn.Module, device: torch.device, output_types: tuple[type, ...] = ()) -> list[nn.Parameter]:
    """Shard ``module``'s parameters over all processes in place (FSDP2 ``fully_shard``).

    ``output_types``: the dataclasses ``module``'s forward returns (an objective's StepOutput),
    made visible to FSDP by :func:`expose_to_fsdp`. Returns the parameters left whole in every
    process: the 0-d ones (K-SSM's ``spread``), which ``fully_shard`` refuses; their gradients
    are averaged by :func:`average_gradients`. Build the optimizer afterwards: sharding replaces
    every other parameter by its shard.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    for output_type in output_types:
        expose_to_fsdp(output_type)
    replicated = [p for p in module.parameters() if p.dim() == 0]
    fully_shard(module, mesh=init_device_mesh(device.type, (world_size(),)), ignored_params=set(replicated))
    return replicated


def expose_to_fsdp(output_type: type) -> None:
    """Let every torch's FSDP2 find the tensors inside ``output_type``, a dataclass a sharded module returns.

    FSDP2 finishes a backward (reduce-scatters the gradients into the sharded parameters and
    re-registers those) from a hook it puts on the forward's outputs. torch 2.13 looks inside
    dataclasses for them; older releases (the 2.11 on the GPU machine) look with torch's pytree,
    to which a plain dataclass is one opaque leaf: no hook, so after backward the module keeps
    the gathered parameters with this process's unreduced gradients, the optimizer's shards get
    none, and nothing but the 0-d parameters ever trains (issue 16: FSDP did not learn on GPUs).
    Registering the dataclass with torch's pytree (global, idempotent) makes its tensors visible.
    """
    from torch.utils import _pytree as pytree  # torch's own pytree, what FSDP2 reads; torch has no public one

    if output_type not in pytree.SUPPORTED_NODES:
        pytree.register_dataclass(output_type)


def check_backward_finished(module: nn.Module, sharded_params: list[nn.Parameter]) -> None:
    """Raise unless FSDP finished the last backward of ``module``: its trainable parameters are
    again ``sharded_params`` (the shards the optimizer steps), as they are after a finished one.

    A backward FSDP never saw ends with the gathered copies still registered, holding the
    gradients, while the optimizer's shards get none: the run would go on without learning.
    Every process fails alike (no communication), so none waits on another.
    """
    current = [p for p in module.parameters() if p.requires_grad]
    if len(current) != len(sharded_params) or any(a is not b for a, b in zip(current, sharded_params)):
        raise PhaseLMError(
            "FSDP did not finish the backward pass (the gradients never reached the sharded parameters, "
            f"torch {torch.__version__}): the objective's output hides its tensors from fully_shard; "
            'use train.distributed = "ddp"'
        )


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of parameters that sharding left whole (collective; all processes)."""
    for param in params:
        if param.requires_grad:
            if param.grad is None:  # unused in this step here, maybe not elsewhere: take part anyway
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world_size())


def unwrap(module: nn.Module) -> None:
    """Undo :func:`shard` in place (collective): every parameter whole again in every process,
    as a plain parameter, and the FSDP hooks and class gone.

    After training, callers use the model's own modules (generation, ``save_pretrained``); FSDP
    would re-shard every module's weights on its next ``state_dict()`` and leave its submodules'
    forward working on shards. torch 2.13's FSDP2 has no public way back, so this removes what
    ``fully_shard`` added, by its internal names; tests/test_distributed.py catches a change.
    """
    from torch.distributed.fsdp import FSDPModule

    state = module._get_fsdp_state()
    group = state._fsdp_param_group
    for fsdp_param in group.fsdp_params:
        sharded = fsdp_param.sharded_param  # what the optimizer stepped: the current weights
        whole = nn.Parameter(sharded.full_tensor().detach().clone(), requires_grad=sharded.requires_grad)
        info = fsdp_param._module_info
        for owner, name in [(info.module, info.param_name), *zip(info.shared_modules, info.shared_param_names)]:
            owner._parameters[name] = whole  # one object for tied weights, as before sharding
        fsdp_param._post_load_hook_handle.remove()
    for handle in [
        *group._module_to_pre_save_state_dict_hook_handle.values(),
        *group._module_to_pre_load_state_dict_hook_handle.values(),
    ]:
        handle.remove()
    state._pre_forward_hook_handle.remove()
    state._post_forward_hook_handle.remove()
    module.__class__ = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    # fully_shard also marks every module it manages; transformers' generate() reads that mark as
    # "FSDP: keep the processes in step" and all-reduces once per token, so a generation in the
    # first process alone (a Phase Core run's sample) waits forever on the others (NCCL) or fails (gloo).
    for managed in module.modules():
        for mark in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            managed.__dict__.pop(mark, None)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Skip the gradient reduce-scatter of a sharded module on micro-batches that are not the last."""
    module.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def gather_full(tree: Any, keep: bool) -> Any:
    """``tree`` (a state dict, possibly nested) with every sharded tensor gathered whole, on CPU.

    Collective: every process must call it on a tree of the same structure (a module's or an
    optimizer's state dict is). Only where ``keep`` is the result built; elsewhere each gathered
    tensor is dropped at once and None is returned, so only one full tensor at a time is held.
    """
    if isinstance(tree, torch.Tensor):
        whole = full_tensor(tree)
        return whole.detach().cpu() if keep else None
    if isinstance(tree, dict):
        out = {key: gather_full(value, keep) for key, value in tree.items()}
        return out if keep else None
    if isinstance(tree, (list, tuple)):
        items = [gather_full(value, keep) for value in tree]
        return type(tree)(items) if keep else None
    return tree if keep else None


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full (unsharded) optimizer state dict → the same with this process's shards.

    ``state`` is numbered as ``optimizer.state_dict()`` numbers parameters (in order through
    the parameter groups). A per-parameter tensor shaped like its sharded parameter's full
    shape is cut as that parameter is; anything else (AdamW's step count) stays as it is. Every
    process has read the same checkpoint, so each cuts its own part without communication.
    """
    from torch.distributed.tensor import distribute_tensor

    DTensor = _dtensor_type()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param = {}
    for index, values in state.get("state", {}).items():
        param = params[index] if isinstance(index, int) and 0 <= index < len(params) else None
        if not isinstance(param, DTensor) or not isinstance(values, dict):
            per_param[index] = values  # a mismatch is reported by load_state_dict
            continue
        per_param[index] = {
            key: distribute_tensor(
                value.to(local_part(param).device), param.device_mesh, param.placements, src_data_rank=None
            )
            if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(param.shape)
            else value
            for key, value in values.items()
        }
    return {**state, "state": per_param}


def first_nonfinite_parameter(module: nn.Module, collective: bool) -> str | None:
    """The first parameter of ``module`` holding a NaN or an infinity, or None.

    With ``collective`` (sharded weights) each process checks its shards and all agree on the
    answer, so they stop together.
    """
    named = list(module.named_parameters())
    first = next(
        (i for i, (_, p) in enumerate(named) if not bool(torch.isfinite(local_part(p).detach()).all())), len(named)
    )
    if collective and world_size() > 1 and named:
        found = torch.tensor(first, device=local_part(named[0][1]).device)
        dist.all_reduce(found, op=dist.ReduceOp.MIN)
        first = int(found)
    return named[first][0] if first < len(named) else None


def all_agree(ok: bool, device: torch.device) -> bool:
    """True only if ``ok`` holds in every process (collective; one tiny all-reduce).

    A decision that leads to different collectives (stop, skip, re-run the forward) must be the
    same everywhere, or the processes wait on each other forever.
    """
    if world_size() == 1:
        return ok
    flag = torch.tensor(int(ok), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def is_main_process() -> bool:
    """False in every process but the first of a multi-process run (`accelerate launch`, `torchrun`)."""
    return int(os.environ.get("RANK", "0")) == 0


def resumed_data_generator(
    tensors: dict, seed: int, rank: int, processes: int, step: int, main: bool
) -> torch.Generator:
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
            + (
                "the extra processes start fresh ones"
                if processes > saved
                else "the streams of the missing processes are dropped"
            )
        )
    return generator


def log_distribution(choice: str, processes: int) -> None:
    """Say once which multi-process path runs (never silently)."""
    if choice == "fsdp" and processes == 1:
        logger.info(
            "train.distributed = 'fsdp' on one process: "
            "nothing to shard, so training runs unsharded as with 'ddp'"
        )
    elif choice == "fsdp":
        logger.info(
            f"FSDP: parameters, gradients and optimizer state sharded over {processes} processes "
            "(torch fully_shard)"
        )
    elif processes > 1:
        logger.info(f"DDP over {processes} processes (Accelerate)")
