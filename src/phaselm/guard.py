"""The numerical guard of the training loop: is a step finite, which module first produced a
NaN or an infinity, and never a checkpoint from weights that are not finite.

The loop checks the loss, the gradient norm and R once per step (:func:`step_is_finite`, one host
sync); only a step that fails is examined further (:func:`nonfinite_report` re-runs its forward
with hooks to name the first module whose output is not finite).
"""

from __future__ import annotations

import torch
from torch import nn

from . import distributed
from .errors import PhaseLMError
from .objectives import Objective, StepOutput


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


def step_is_finite(loss: torch.Tensor, grad_norm: torch.Tensor, order: torch.Tensor | None) -> bool:
    """One host sync per step: the loss, the gradient norm and R all finite?"""
    ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    if order is not None:
        ok = ok & torch.isfinite(order.detach()).all()
    return bool(ok)


def nonfinite_report(objective: Objective, out: StepOutput, x, y, params, autocast) -> tuple[str, str]:
    """(what was not finite, where it came from) for a step that failed :func:`step_is_finite`."""
    loss_bad = not bool(torch.isfinite(out.losses["loss"].detach()))
    r_bad = out.order is not None and not bool(torch.isfinite(out.order).all())
    # Every process takes the same branch: the forward below is collective under FSDP.
    if not distributed.all_agree(not (loss_bad or r_bad), x.device):
        what = "the loss" if loss_bad else "R" if r_bad else "the loss or R of another process"

        def forward():
            with autocast():
                objective(x, y)

        where = first_nonfinite_module(objective, forward)
        if where:
            return what, f"module {where}"
        return what, (
            "the loss terms, or a fault that did not repeat "
            "(every module's output was finite when the step ran again)"
        )
    names = {id(p): n for n, p in objective.named_parameters()}
    bad = next(
        (
            names.get(id(p), "?")
            for p in params
            if p.grad is not None and not bool(torch.isfinite(distributed.local_part(p.grad)).all())
        ),
        None,
    )
    return "a gradient", f"parameter {bad}" if bad else "the gradient norm"


def check_finite_weights(module: nn.Module, step: int, collective: bool = False) -> None:
    """Refuse to checkpoint weights that hold a NaN or an infinity (``collective``: sharded
    weights, checked by every process together)."""
    bad = distributed.first_nonfinite_parameter(module, collective)
    if bad is not None:
        raise PhaseLMError(
            f"step {step}: weight {bad} is not finite, so no checkpoint was written from this state; "
            "lower train.lr or check the recipe, then resume from the last checkpoint or start again"
        )
