"""Interventions on the oscillators: force the phases of chosen layers while the model runs.

    from phaselm.interventions import Intervention, intervene

    with intervene(model, Intervention("pin", 0.3, layers=[1])) as applied:
        logits = model(ids).logits          # layer 1's phases sit on an arc with R = 0.3 exactly
    # here the model is exactly as before; ``applied`` records what was done (run metadata)

An intervention replaces the oscillator phases θ of a *phase site* after its dynamics (the
coupling step) and before its readout (the harmonics Z_n that feed the rest of the network),
so the forced phases are what the model reads, in every position, in a plain forward pass and
in cached generation alike. Kinds:

* ``sync``      all phases at the current mean phase ψ: R = 1.
* ``disorder``  phases spread evenly over the whole circle, starting from ψ: R = 0.
* ``pin r``     phases evenly spaced on an arc centred at ψ whose width is solved (bisection)
                so that the discrete order parameter of the N phases equals r exactly.
                ``sync`` is ``pin 1`` and ``disorder`` is ``pin 0``.

The readout is a mean over oscillators, so which oscillator gets which slot of the arc does
not change the output; slots are assigned by oscillator index. ψ is kept from the free
dynamics, so only the spread (R, and with it every higher harmonic) is forced.

Phase sites are modules with a ``phase_transforms`` list (K-SSM's ``BistableBank`` has one per
layer); each transform is ``θ (…, N) → θ (…, N)`` and they apply in registration order, so
interventions compose (nested ``intervene`` blocks or several interventions in one call: the
last registered acts last). They are removed on exit, also after an exception, and an
intervention on no layers registers nothing, so the model is bit-exact. New kinds (coupling
scale, output replacement, branch ablation — issue 5) plug in through ``KINDS``.

Evaluation-time clamp bounds for K-SSM's u (``override_clamp``) live here too: they change
what a trained model computes without retraining, and restore the same way.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import PhaseLMError

PhaseTransform = Callable[[torch.Tensor], torch.Tensor]

ALL_LAYERS = "all"


# --------------------------------------------------------------------------------------------
# The arc: N evenly spaced phases whose order parameter is r
# --------------------------------------------------------------------------------------------


def arc_order(n: int, step: float) -> float:
    """R of N phases spaced ``step`` apart: |sin(N·s/2) / (N·sin(s/2))| (a Dirichlet kernel).

    Decreases monotonically from 1 (s = 0) to 0 (s = 2π/N, the whole circle).
    """
    half = step / 2.0
    if abs(math.sin(half)) < 1e-300:
        return 1.0
    return abs(math.sin(n * half) / (n * math.sin(half)))


def arc_step(n: int, r: float, iterations: int = 200) -> float:
    """The spacing s ∈ [0, 2π/N] at which N evenly spaced phases have order parameter ``r``."""
    if n < 2:
        raise PhaseLMError(f"an arc needs at least 2 oscillators, got {n}")
    check_order_value(r)
    lo, hi = 0.0, 2.0 * math.pi / n
    if r >= 1.0:
        return lo
    if r <= 0.0:
        return hi
    for _ in range(iterations):  # R(lo) > r ≥ R(hi) throughout
        mid = 0.5 * (lo + hi)
        if arc_order(n, mid) > r:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def arc_offsets(n: int, r: float, device=None) -> torch.Tensor:
    """N offsets from the mean phase, evenly spaced and centred on 0, with discrete R = r."""
    step = arc_step(n, r)
    k = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
    return (k * step).to(device=device, dtype=torch.float32)


def mean_phase(theta: torch.Tensor) -> torch.Tensor:
    """ψ = arg mean_j e^{iθ_j}, shape ``theta.shape[:-1]`` (0 when Z = 0 exactly)."""
    return torch.atan2(torch.sin(theta).mean(-1), torch.cos(theta).mean(-1))


def check_order_value(r) -> float:
    try:
        value = float(r)
    except (TypeError, ValueError):
        raise PhaseLMError(f"pinned R must be a number in [0, 1], got {r!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise PhaseLMError(f"pinned R must be in [0, 1], got {r}; R is an order parameter |Z| between 0 and 1")
    return value


# --------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How an intervention kind acts.

    ``build(value, n_oscillators)`` makes the function registered on each forced site, in the
    site's list named ``hook`` (``phase_transforms``: θ → θ after the dynamics, before the
    readout). ``target`` gives the order parameter the kind imposes (None if it imposes none).
    New kinds — a coupling scale, the oscillator output replaced by its mean or by noise, a
    branch ablation — add an entry here and, where they act elsewhere, a hook list on the site.
    """

    name: str
    needs_value: bool
    build: Callable[[float | None, int], PhaseTransform]
    target: Callable[[float | None], float] | None
    help: str
    hook: str = "phase_transforms"


def _arc_transform(r: float, n: int) -> PhaseTransform:
    offsets_by_device: dict = {}

    def transform(theta: torch.Tensor) -> torch.Tensor:
        key = theta.device
        if key not in offsets_by_device:
            offsets_by_device[key] = arc_offsets(n, r, theta.device)
        return mean_phase(theta).unsqueeze(-1) + offsets_by_device[key].to(theta.dtype)

    return transform


KINDS: dict[str, Kind] = {
    "sync": Kind("sync", False, lambda _, n: _arc_transform(1.0, n), lambda _: 1.0, "all phases at the mean phase ψ (R = 1)"),
    "disorder": Kind("disorder", False, lambda _, n: _arc_transform(0.0, n), lambda _: 0.0, "phases spread evenly over the circle (R = 0)"),
    "pin": Kind("pin", True, lambda v, n: _arc_transform(float(v), n), lambda v: float(v), "phases on an arc centred at ψ with R = value exactly"),
}


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise PhaseLMError(f"unknown intervention kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


@dataclass(frozen=True)
class Intervention:
    """What to force and where. ``layers`` is a list of layer indices or ``"all"``; an empty
    list is a no-op (nothing is registered, the model stays bit-exact)."""

    kind: str
    value: float | None = None
    layers: tuple[int, ...] | str = ALL_LAYERS

    def __post_init__(self) -> None:
        kind = _check_kind(self.kind)
        if kind.needs_value:
            if self.value is None:
                raise PhaseLMError(f"intervention {self.kind!r} needs a value: the R to pin, in [0, 1]")
            object.__setattr__(self, "value", check_order_value(self.value))
        elif self.value is not None:
            raise PhaseLMError(f"intervention {self.kind!r} takes no value (got {self.value}); use kind 'pin' to set R")
        layers = self.layers
        if isinstance(layers, str):
            if layers != ALL_LAYERS:
                layers = parse_layers(layers)
        else:
            layers = _as_layer_tuple(layers)
        object.__setattr__(self, "layers", layers)

    @property
    def target_order(self) -> float | None:
        target = KINDS[self.kind].target
        return None if target is None else target(self.value)

    @property
    def label(self) -> str:
        where = "all" if self.layers == ALL_LAYERS else ",".join(map(str, self.layers)) or "none"
        what = f"pin {self.value:g}" if self.kind == "pin" else self.kind
        return f"{what} @ layers {where}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "layers": self.layers if self.layers == ALL_LAYERS else list(self.layers)}

    @classmethod
    def parse(cls, spec: str, layers: Sequence[int] | str = ALL_LAYERS, default_value: float | None = None) -> Intervention:
        """``"sync"``, ``"disorder"``, ``"pin=0.3"`` (or ``"pin"`` with ``default_value``)."""
        name, _, value = spec.strip().partition("=")
        name = name.strip()
        _check_kind(name)
        if value.strip():
            try:
                number = float(value)
            except ValueError:
                raise PhaseLMError(f"bad intervention {spec!r}: {value!r} is not a number; write e.g. pin=0.3") from None
            return cls(name, number, layers)
        return cls(name, default_value if KINDS[name].needs_value else None, layers)


def _as_layer_tuple(layers: Iterable) -> tuple[int, ...]:
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            try:
                layer = int(str(layer).strip())
            except ValueError:
                raise PhaseLMError(f"layer {layer!r} is not an integer; give layer indices like 0,1 or 'all'") from None
        if layer in out:
            raise PhaseLMError(f"layer {layer} is listed twice; give each layer once")
        out.append(layer)
    return tuple(out)


def parse_layers(text: str) -> tuple[int, ...] | str:
    """``"all"`` → "all"; ``"0,2"`` → (0, 2); ``""`` → () (no layer: a no-op)."""
    text = text.strip()
    if text == ALL_LAYERS:
        return ALL_LAYERS
    return _as_layer_tuple(p for p in text.split(",") if p.strip()) if text else ()


# --------------------------------------------------------------------------------------------
# Phase sites
# --------------------------------------------------------------------------------------------


def phase_sites(model: nn.Module) -> list[nn.Module]:
    """The modules whose phases can be forced, in layer order (K-SSM: one bank per layer)."""
    return [m for m in model.modules() if isinstance(getattr(m, "phase_transforms", None), list)]


def has_oscillators(model: nn.Module) -> bool:
    return bool(phase_sites(model))


def require_oscillators(model: nn.Module, what: str = "this eval") -> list[nn.Module]:
    sites = phase_sites(model)
    if not sites:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise PhaseLMError(f"{what} needs a model with oscillators (K-SSM); this is a {name} model without an oscillator bank")
    return sites


def resolve_layers(layers: tuple[int, ...] | str, n_sites: int) -> list[int]:
    if layers == ALL_LAYERS:
        return list(range(n_sites))
    for layer in layers:
        if not 0 <= layer < n_sites:
            raise PhaseLMError(f"layer {layer} is out of range: this model has {n_sites} oscillator layers (0..{n_sites - 1})")
    return list(layers)


@dataclass
class Applied:
    """What ``intervene`` did, for run metadata (``records``: one dict per intervention)."""

    records: list[dict] = field(default_factory=list)

    def to_json(self) -> list[dict]:
        return [dict(r) for r in self.records]


@contextlib.contextmanager
def intervene(model: nn.Module, *interventions: Intervention) -> Iterator[Applied]:
    """Apply ``interventions`` (in order) to ``model``'s phase sites for the ``with`` block.

    Everything is validated before anything is registered: a bad layer leaves the model
    untouched. Exiting (normally or by an exception) removes exactly what was registered.
    """
    sites = phase_sites(model) if interventions else []
    if interventions and not sites:
        require_oscillators(model, "an R intervention")
    plan: list[tuple[list, PhaseTransform]] = []
    applied = Applied()
    for item in interventions:
        if not isinstance(item, Intervention):
            raise PhaseLMError(f"expected an Intervention, got {type(item).__name__}")
        kind = KINDS[item.kind]
        layers = resolve_layers(item.layers, len(sites))
        record = {**item.to_dict(), "layers": layers, "target_order": item.target_order}
        if layers and item.target_order is not None:
            n = _n_oscillators(sites[layers[0]])
            record.update(n_oscillators=n, arc_width=arc_step(n, item.target_order) * (n - 1))
        applied.records.append(record)
        for layer in layers:
            hooks = getattr(sites[layer], kind.hook, None)
            if not isinstance(hooks, list):
                raise PhaseLMError(f"intervention {item.kind!r} cannot act on layer {layer}: its oscillators have no {kind.hook} hook")
            plan.append((hooks, kind.build(item.value, _n_oscillators(sites[layer]))))
    registered: list[tuple[list, PhaseTransform]] = []
    try:
        for hooks, transform in plan:
            hooks.append(transform)
            registered.append((hooks, transform))
        yield applied
    finally:
        for hooks, transform in reversed(registered):
            for i in range(len(hooks) - 1, -1, -1):
                if hooks[i] is transform:
                    del hooks[i]
                    break


def _n_oscillators(site: nn.Module) -> int:
    cfg = getattr(site, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_oscillators"):
        return int(cfg.n_oscillators)
    return int(site.omega0.numel())


# --------------------------------------------------------------------------------------------
# Evaluation-time clamp bounds (K-SSM's u)
# --------------------------------------------------------------------------------------------


def check_clamp_bounds(u_min: float, u_max: float, bistable: bool = True) -> tuple[float, float]:
    try:
        lo, hi = float(u_min), float(u_max)
    except (TypeError, ValueError):
        raise PhaseLMError(f"clamp bounds must be numbers, got ({u_min!r}, {u_max!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PhaseLMError(f"clamp bounds must be finite, got ({lo}, {hi})")
    if lo >= hi:
        raise PhaseLMError(f"clamp bounds need u_min < u_max, got u_min={lo:g} ≥ u_max={hi:g}")
    if bistable and lo <= 0:
        raise PhaseLMError(f"clamp bounds of a bistable model need 0 < u_min, got u_min={lo:g}; −log(u) needs u > 0")
    return lo, hi


def _banks(model: nn.Module) -> list[nn.Module]:
    return [m for m in phase_sites(model) if hasattr(getattr(m, "cfg", None), "u_min")]


@contextlib.contextmanager
def override_clamp(model: nn.Module, u_min: float, u_max: float) -> Iterator[dict]:
    """Clamp u to [u_min, u_max] in every K-SSM bank for the ``with`` block (evaluation time).

    A monostable model (trained without a clamp) gets the clamp switched on; its bounds may
    then be ≤ 0. The banks' configs are restored on exit, also after an exception.
    """
    banks = _banks(model)
    if not banks:
        require_oscillators(model, "a clamp sweep")
        raise PhaseLMError("a clamp sweep needs K-SSM bistable banks (with u bounds); this model's oscillators have none")
    trained_bistable = all(b.cfg.bistable for b in banks)
    lo, hi = check_clamp_bounds(u_min, u_max, bistable=trained_bistable)
    saved = [(b.cfg.bistable, b.cfg.u_min, b.cfg.u_max) for b in banks]
    try:
        for b in banks:
            b.cfg.bistable, b.cfg.u_min, b.cfg.u_max = True, lo, hi
        yield {"u_min": lo, "u_max": hi, "trained_bistable": trained_bistable, "layers": len(banks)}
    finally:
        for b, (bistable, old_lo, old_hi) in zip(banks, saved):
            b.cfg.bistable, b.cfg.u_min, b.cfg.u_max = bistable, old_lo, old_hi
