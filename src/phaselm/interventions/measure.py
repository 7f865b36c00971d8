"""Reading oscillator sites without changing them: calibration of the oscillator output (for
``mean_output`` / ``noise_output``) and R per site and position (the "measured" observer)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import PhaseLMError
from .hooks import add_output_transform
from .sites import Site, Structure, site_order, structure

Calibration = dict[int, tuple[torch.Tensor, torch.Tensor, int]]  # layer → (mean (D,), std (D,), positions)


def site_output(site: Site, args: tuple, out) -> torch.Tensor:
    """The oscillator output (B, T, D) of a site, float32: a bank's contribution to the residual
    stream, a mixer's output, or a core's modulation h' − h."""
    if site.kind == "bank":
        return out.out.float()
    if site.kind == "mixer":
        return out[0].float()
    return out.hidden.float() - args[0].float()


def as_sequences(ids) -> list[torch.Tensor]:
    """Token ids (B, T) or (T,) or a list of sequences → a list of (1 or B, T) long tensors."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.numel() == 0:
            raise PhaseLMError(f"calibration ids must be (batch, positions) token ids, got shape {tuple(ids.shape)}")
        return [ids]
    sequences = [torch.as_tensor(list(s), dtype=torch.long)[None] for s in ids]
    if not sequences or any(s.numel() == 0 for s in sequences):
        raise PhaseLMError("calibration needs at least one non-empty sequence of token ids")
    return sequences


@torch.no_grad()
def calibrate(target, ids, layers: Sequence[int] | None = None) -> Calibration:
    """Per-channel mean and std (ddof 0) of the oscillator output of each site over every
    position of ``ids`` ((B, T) token ids or a list of sequences): {layer: (mean (D,), std (D,),
    positions)}. ``target``: a model or its :class:`Structure`. Runs the model as it is now
    (inside any enclosing interventions)."""
    info = target if isinstance(target, Structure) else structure(target)
    if not info.sites:
        raise PhaseLMError(f"calibrating the oscillator output needs oscillators; this {info.name} model has none")
    chosen = [s for s in info.sites if layers is None or s.layer in layers]
    sums: dict[int, list] = {s.layer: [0.0, 0.0, 0] for s in chosen}

    def recorder(site: Site):
        def record(args, out):
            x = site_output(site, args, out).flatten(0, -2).double()
            acc = sums[site.layer]
            acc[0] = acc[0] + x.sum(0)
            acc[1] = acc[1] + (x * x).sum(0)
            acc[2] += x.shape[0]
            return out

        return record

    removers = [add_output_transform(s.module, recorder(s)) for s in chosen]
    device = next(info.model.parameters()).device
    try:
        for seq in as_sequences(ids):
            info.model(input_ids=seq.to(device))
    finally:
        for remove in reversed(removers):
            remove()
    out = {}
    for layer, (total, squares, count) in sums.items():
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        out[layer] = (mean.float(), var.sqrt().float(), int(count))
    return out


@dataclass
class Measurement:
    """R of every forward call made while measuring, per site: ``orders[layer]`` is a list of
    (B, T) tensors, one per call, on the CPU."""

    orders: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def sequence(self) -> torch.Tensor:
        """(B, sites, total positions): every call's positions in order (prompt, then one per token)."""
        if not self.orders or not any(self.orders.values()):
            return torch.empty(0, 0, 0)
        return torch.stack([torch.cat(calls, dim=1) for _, calls in sorted(self.orders.items())], dim=1)


@contextlib.contextmanager
def measure(target) -> Iterator[Measurement]:
    """Record R (B, T) at every oscillator site during the block (a mixer's: the mean over its
    heads); the computation is untouched (the recorder only reads the site's output, after any
    intervention has acted on it)."""
    info = structure(target)
    if not info.sites:
        raise PhaseLMError(f"measuring R needs a model with oscillators; this {info.name} model has none")
    measurement = Measurement({s.layer: [] for s in info.sites})
    handles = []

    def recorder(site: Site):
        def hook(module, args, output):
            measurement.orders[site.layer].append(site_order(site, output).detach().float().cpu())

        return hook

    try:
        for site in info.sites:
            handles.append(site.module.register_forward_hook(recorder(site)))
        yield measurement
    finally:
        for handle in handles:
            handle.remove()
