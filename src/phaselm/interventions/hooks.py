"""The two ways an installed intervention reaches a module, each undone by the remover it returns.

* A transform slot: a list that the module's own forward applies in order (an oscillator site's
  ``phase_transforms`` and ``coupling_transforms``: K-SSM's bank and the Phase Core alike).
* An output transform: one forward hook per module runs a list of functions on its output, for
  modules that have no slot (a block's mixer or MLP, a fusion gate) and for the oscillator
  output of a site (``mean_output`` / ``noise_output``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OutputTransform = Callable[[tuple, Any], Any]  # (forward args, output) → output
Remover = Callable[[], None]

_SLOT = "_phaselm_output_transforms"


def append_transform(slot: list, fn: Callable) -> Remover:
    """Append ``fn`` to a transform slot; the remover deletes exactly that entry."""
    slot.append(fn)

    def remove() -> None:
        for i in range(len(slot) - 1, -1, -1):
            if slot[i] is fn:
                del slot[i]
                break

    return remove


def _dispatch(module, args, output):
    for transform in list(module.__dict__[_SLOT][0]):
        output = transform(args, output)
    return output


def add_output_transform(module: nn.Module, transform: OutputTransform) -> Remover:
    """Run ``transform`` on ``module``'s output after any earlier ones; returns its remover.

    The hook is registered first among the module's forward hooks, so anything that merely
    observes the module (a recorder, a Graft) sees the transformed output. The last remover
    takes the hook away, so the module is left exactly as before.
    """
    slot = module.__dict__.get(_SLOT)
    if slot is None:
        slot = ([], module.register_forward_hook(_dispatch, prepend=True))
        module.__dict__[_SLOT] = slot
    slot[0].append(transform)

    def remove() -> None:
        transforms, handle = slot
        for i in range(len(transforms) - 1, -1, -1):
            if transforms[i] is transform:
                del transforms[i]
                break
        if not transforms and module.__dict__.get(_SLOT) is slot:
            handle.remove()
            del module.__dict__[_SLOT]

    return remove


def zero_output(args, out):
    """An output transform that zeroes a branch's output (B, T, D) and keeps the rest."""
    if isinstance(out, tuple):  # mixers return (output, new state): the state still advances
        return (torch.zeros_like(out[0]), *out[1:])
    if dataclasses.is_dataclass(out) and hasattr(out, "out"):  # a K-SSM bank: R and u still reported
        return dataclasses.replace(out, out=torch.zeros_like(out.out))
    return torch.zeros_like(out)


def average_fusion(args, out):
    """An output transform of a fusion module: the branches r, m (B, T, D) averaged, gate 0.5."""
    r, m = args[0], args[1]
    return 0.5 * (r + m), r.new_tensor(0.5)  # a fixed scalar gate, as WS reports its α
