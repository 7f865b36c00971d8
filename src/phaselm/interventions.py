"""One intervention API for every PhaseLM model: force, scale, replace or ablate while it runs.

    from phaselm.interventions import Intervention, intervene

    with intervene(model, Intervention("pin", 0.3, layers=[1])) as applied:
        logits = model(ids).logits          # layer 1's phases sit on an arc with R = 0.3 exactly
    # here the model is exactly as before; ``applied.to_json()`` records what was done

``model`` is a K-SSM, a fusion model (RWKV-6 / Mamba-2), any Hugging Face model with grafted
Phase Cores (``phaselm.graft``; the cores are found through their hooks), or a ``Graft``
handle. ``layers`` counts the model's oscillator sites for the oscillator kinds (K-SSM: one
bank per block; a grafted model: its cores, usually just layer 0) and its blocks for ``ablate``.

Kinds (``KINDS``; ``Intervention.parse`` reads ``"pin=0.3"``, ``"k_scale=0.5"``, ``"ablate=mamba"``):

* ``sync``          all phases at the current mean phase ψ: R = 1.
* ``disorder``      phases spread evenly over the whole circle, starting from ψ: R = 0.
* ``pin r``         phases evenly spaced on an arc centred at ψ whose width is solved (bisection)
                    so that the discrete order parameter of the N phases equals r exactly.
                    ``sync`` is ``pin 1`` and ``disorder`` is ``pin 0``.
* ``oscillators m`` the readout (and R) use m of the N oscillators, evenly spaced by index
                    (m must divide N: each kept phase fills N/m slots, so every mean over the N
                    slots is the mean over the m kept). Evaluation time: the coupling step still
                    runs all N, and nothing is retrained with m oscillators.
* ``k_scale f``     the coupling K multiplied by f ≥ 0 (K-SSM: K = 2·sigmoid(u) of each
                    position; a Phase Core: its K × drift scale) before the coupling steps.
* ``mean_output``   the oscillator output replaced by its mean over positions;
* ``noise_output``  … or by Gaussian noise with the same per-channel mean and std.
                    (K-SSM: the bank's contribution to the residual stream; a Phase Core: its
                    modulation h' − h.) The mean and std are taken per channel over every
                    position of calibration text (``intervene(..., calibration=ids)``), never
                    over the positions being predicted, so nothing leaks from later tokens and
                    cached generation sees the same replacement as a full forward pass. Noise
                    is drawn from a generator seeded by ``intervene(..., seed=)``.
* ``unclamp``       K-SSM: u's clamp [u_min, u_max] switched off (the monostable map at
                    evaluation time; "U regulation off"). A grafted core has no clamp.
* ``ablate b``      zero the output of branch b in the chosen blocks; its state still advances.
                    K-SSM: ``bank``, ``mixer``, ``mlp``; fusion: ``rwkv``, ``mamba`` (exactly
                    the model's own ``forward(ablate=…)``), ``fusion_gate`` (the learned fusion
                    replaced by the plain average (r + m)/2), ``mlp``; a grafted model:
                    ``phase_core`` (the bare backbone, as ``Graft.disabled()``).

Phase kinds (sync, disorder, pin, oscillators) replace θ after the dynamics (the coupling step)
and before the readout (the harmonics Z_n of a bank, the modulation of a core), so the forced
phases are what the model reads, in a plain forward pass and in cached generation alike. A
recurrent core's carried state continues from its free dynamics: only the readout is forced.
The readout is a mean over oscillators, so which oscillator gets which slot of the arc does not
change the output; ψ is kept from the free dynamics, so only the spread (R, and with it every
higher harmonic) is forced.

Interventions compose: nested ``intervene`` blocks or several interventions in one call act in
order (the last registered acts last). Everything is validated before anything is installed (a
bad layer, branch or value leaves the model untouched); on exit — also after an exception —
exactly what was installed is removed, and an intervention on no layers installs nothing, so
the model is bit-exact. ``measure(model)`` records R per site and position without changing
anything (the "measured" observer).

Evaluation-time clamp bounds for K-SSM's u (``override_clamp``) live here too: they change
what a trained model computes without retraining, and restore the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

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


def check_factor(value, name: str = "k_scale") -> float:
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise PhaseLMError(f"{name} needs a number ≥ 0 (the factor on K; 1 leaves K unchanged), got {value!r}") from None
    if not math.isfinite(factor) or factor < 0:
        raise PhaseLMError(f"{name} needs a finite factor ≥ 0 (1 leaves K unchanged), got {value}")
    return factor


def check_count(value) -> int:
    try:
        count = float(value)
    except (TypeError, ValueError):
        raise PhaseLMError(f"oscillators needs a whole number of oscillators to keep (≥ 1), got {value!r}") from None
    if not math.isfinite(count) or count != int(count) or count < 1:
        raise PhaseLMError(f"oscillators needs a whole number of oscillators to keep (≥ 1), got {value}")
    return int(count)


def check_branch(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PhaseLMError(f"ablate needs a branch name (e.g. ablate=mamba), got {value!r}")
    return value.strip()


# --------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------

VALUE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "order": check_order_value,
    "factor": check_factor,
    "count": check_count,
    "branch": check_branch,
}
VALUE_HINTS = {"order": "the R to pin, in [0, 1]", "factor": "the factor on K, ≥ 0", "count": "how many oscillators to keep",
               "branch": "the branch to ablate"}


@dataclass(frozen=True)
class Kind:
    """How an intervention kind acts.

    ``value`` says what the value is: ``"none"`` (no value), ``"order"`` (R ∈ [0, 1]),
    ``"factor"`` (≥ 0), ``"count"`` (a whole number ≥ 1) or ``"branch"`` (a branch name).
    Phase kinds give ``build(value, n_oscillators)``: the function θ (…, N) → θ (…, N) applied
    after the dynamics and before the readout of every forced site; ``target`` gives the order
    parameter the kind imposes (None if it imposes none). The other kinds (``act`` names what
    they act on) are installed by :func:`intervene` itself. New phase kinds plug in by adding a
    ``Kind`` with a ``build`` here.
    """

    name: str
    needs_value: bool
    build: Callable[[Any, int], PhaseTransform] | None
    target: Callable[[Any], float] | None
    help: str
    hook: str = "phase_transforms"
    value: str = "none"
    act: str = "phases"  # "phases", "coupling", "output", "clamp" or "branch"


def _arc_transform(r: float, n: int) -> PhaseTransform:
    offsets_by_device: dict = {}

    def transform(theta: torch.Tensor) -> torch.Tensor:
        key = theta.device
        if key not in offsets_by_device:
            offsets_by_device[key] = arc_offsets(n, r, theta.device)
        return mean_phase(theta).unsqueeze(-1) + offsets_by_device[key].to(theta.dtype)

    return transform


def kept_oscillators(n: int, m: int) -> list[int]:
    """The m of N oscillators the ``oscillators`` kind keeps: every (N/m)-th, from 0."""
    if n % m:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise PhaseLMError(
            f"oscillators={m} does not divide the {n} oscillators of this model; keep one of {', '.join(map(str, divisors))}"
        )
    return list(range(0, n, n // m))


def _subset_transform(m: int, n: int) -> PhaseTransform:
    kept = kept_oscillators(n, m)
    index = torch.tensor([kept[j // (n // m)] for j in range(n)])  # each kept phase fills N/m slots
    by_device: dict = {}

    def transform(theta: torch.Tensor) -> torch.Tensor:
        if theta.device not in by_device:
            by_device[theta.device] = index.to(theta.device)
        return theta.index_select(-1, by_device[theta.device])

    return transform


KINDS: dict[str, Kind] = {
    "sync": Kind("sync", False, lambda _, n: _arc_transform(1.0, n), lambda _: 1.0, "all phases at the mean phase ψ (R = 1)"),
    "disorder": Kind("disorder", False, lambda _, n: _arc_transform(0.0, n), lambda _: 0.0, "phases spread evenly over the circle (R = 0)"),
    "pin": Kind("pin", True, lambda v, n: _arc_transform(float(v), n), lambda v: float(v),
                "phases on an arc centred at ψ with R = value exactly", value="order"),
    "oscillators": Kind("oscillators", True, lambda v, n: _subset_transform(int(v), n), None,
                        "readout and R over value of the N oscillators (evaluation time; value divides N)", value="count"),
    "k_scale": Kind("k_scale", True, None, None, "the coupling K multiplied by value (≥ 0)", value="factor", act="coupling"),
    "mean_output": Kind("mean_output", False, None, None, "the oscillator output replaced by its mean over calibration positions",
                        act="output"),
    "noise_output": Kind("noise_output", False, None, None,
                         "the oscillator output replaced by Gaussian noise with its calibration mean and std", act="output"),
    "unclamp": Kind("unclamp", False, None, None, "K-SSM: u's clamp switched off (U regulation off, evaluation time)", act="clamp"),
    "ablate": Kind("ablate", True, None, None, "the output of branch value zeroed (bank, mixer, mlp, rwkv, mamba, fusion_gate, "
                   "phase_core — whatever the model has)", value="branch", act="branch"),
}


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise PhaseLMError(f"unknown intervention kind {kind!r}; choose one of {', '.join(KINDS)}{hint}")
    return KINDS[kind]


@dataclass(frozen=True)
class Intervention:
    """What to do and where. ``layers`` is a list of layer indices or ``"all"``; an empty list
    is a no-op (nothing is installed, the model stays bit-exact). ``value``: see :data:`KINDS`
    (R for pin, a factor for k_scale, a count for oscillators, a branch name for ablate)."""

    kind: str
    value: Any = None
    layers: tuple[int, ...] | str = ALL_LAYERS

    def __post_init__(self) -> None:
        kind = _check_kind(self.kind)
        if kind.needs_value:
            if self.value is None:
                raise PhaseLMError(f"intervention {self.kind!r} needs a value: {VALUE_HINTS.get(kind.value, 'a number')}")
            check = VALUE_CHECKS.get(kind.value)
            if check is not None:
                object.__setattr__(self, "value", check(self.value))
        elif self.value is not None:
            tip = "; use kind 'pin' to set R" if self.kind in ("sync", "disorder") else ""
            raise PhaseLMError(f"intervention {self.kind!r} takes no value (got {self.value}){tip}")
        layers = self.layers
        if isinstance(layers, str):
            if layers != ALL_LAYERS:
                layers = parse_layers(layers)
        elif isinstance(layers, int) and not isinstance(layers, bool):
            layers = (layers,)
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
        if self.value is None:
            what = self.kind
        elif KINDS[self.kind].value == "factor":
            what = f"{self.kind} ×{self.value:g}"
        elif isinstance(self.value, float):
            what = f"{self.kind} {self.value:g}"
        else:
            what = f"{self.kind} {self.value}"
        return f"{what} @ layers {where}"

    @property
    def spec(self) -> str:
        """The short form ``parse`` reads back: ``"pin=0.3"``, ``"sync"``, ``"ablate=mamba"``."""
        if self.value is None:
            return self.kind
        return f"{self.kind}={self.value:g}" if isinstance(self.value, float) else f"{self.kind}={self.value}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "layers": self.layers if self.layers == ALL_LAYERS else list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> Intervention:
        return cls(data["kind"], data.get("value"), data.get("layers", ALL_LAYERS))

    @classmethod
    def parse(cls, spec: str, layers: Sequence[int] | str = ALL_LAYERS, default_value: Any = None) -> Intervention:
        """``"sync"``, ``"disorder"``, ``"pin=0.3"`` (or ``"pin"`` with ``default_value``),
        ``"k_scale=0.5"``, ``"oscillators=4"``, ``"mean_output"``, ``"ablate=mamba"``."""
        name, _, value = str(spec).strip().partition("=")
        name = name.strip()
        kind = _check_kind(name)
        value = value.strip()
        if value:
            if not kind.needs_value:
                raise PhaseLMError(f"intervention {name!r} takes no value (got {value!r}); write just {name}")
            if kind.value == "branch":
                return cls(name, value, layers)
            try:
                number = float(value)
            except ValueError:
                raise PhaseLMError(f"bad intervention {spec!r}: {value!r} is not a number; write e.g. {name}=0.3") from None
            return cls(name, number, layers)
        return cls(name, default_value if kind.needs_value else None, layers)


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
# Where interventions act: oscillator sites and branches
# --------------------------------------------------------------------------------------------


def phase_sites(model: nn.Module) -> list[nn.Module]:
    """K-SSM-style banks whose phases can be forced (modules with a ``phase_transforms`` list),
    in layer order. Grafted Phase Cores are found by :func:`oscillator_sites`."""
    return [m for m in model.modules() if isinstance(getattr(m, "phase_transforms", None), list)]


def has_oscillators(model: nn.Module) -> bool:
    return bool(phase_sites(model))


def require_oscillators(model: nn.Module, what: str = "this eval") -> list[nn.Module]:
    sites = phase_sites(model)
    if not sites:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise PhaseLMError(f"{what} needs a model with oscillators (K-SSM); this is a {name} model without an oscillator bank")
    return sites


def resolve_layers(layers: tuple[int, ...] | str, n_sites: int, what: str = "oscillator layers") -> list[int]:
    if layers == ALL_LAYERS:
        return list(range(n_sites))
    for layer in layers:
        if not 0 <= layer < n_sites:
            raise PhaseLMError(f"layer {layer} is out of range: this model has {n_sites} {what} (0..{n_sites - 1})")
    return list(layers)


def find_grafts(model: nn.Module) -> list:
    """The ``Graft`` handles attached to ``model`` (found through their forward hooks), in layer order."""
    from .graft import Graft

    found = []
    for module in model.modules():
        for hook in list(module._forward_hooks.values()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, Graft) and owner.model is model and owner not in found:
                found.append(owner)
    return sorted(found, key=lambda g: g.layer_index)


@dataclass
class Site:
    """One oscillator site: a K-SSM bank (``kind = "bank"``) or a grafted Phase Core (``"core"``)."""

    layer: int
    kind: str
    module: nn.Module

    @property
    def n_oscillators(self) -> int:
        if self.kind == "core":
            return int(self.module.config.n_oscillators)
        return _n_oscillators(self.module)


@dataclass
class Structure:
    """What a target offers interventions: its oscillator sites and its named branches."""

    model: nn.Module  # what a forward pass is called on (calibration)
    name: str
    sites: list[Site]
    branches: dict[str, list]  # branch → one entry per block (None where that block lacks it)
    grafts: list = field(default_factory=list)


def _model_name(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def structure(target) -> Structure:
    """Sites and branches of a K-SSM, a fusion model, a model with grafted cores, a ``Graft``
    handle, or any module holding K-SSM banks."""
    from .graft import Graft

    if isinstance(target, Graft):
        model, grafts = target.model, [target]
    else:
        model, grafts = target, find_grafts(target)
    blocks = getattr(model, "blocks", None)
    branches: dict[str, list] = {}
    sites: list[Site] = []
    name = _model_name(model)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and all(hasattr(b, "bank") for b in blocks):
        sites = [Site(i, "bank", b.bank) for i, b in enumerate(blocks)]
        branches["bank"] = [b.bank for b in blocks]
        if any(getattr(b, "mixer", None) is not None for b in blocks):
            branches["mixer"] = [getattr(b, "mixer", None) for b in blocks]
        branches["mlp"] = [getattr(b, "mlp", None) for b in blocks]
    elif isinstance(blocks, nn.ModuleList) and len(blocks) and all(hasattr(b, "rwkv") and hasattr(b, "mamba") for b in blocks):
        from .models.fusion import GATED

        for branch in ("rwkv", "mamba"):
            if any(getattr(b, branch) is not None for b in blocks):
                branches[branch] = [getattr(b, branch) for b in blocks]
        if any(b.fusion is not None and b.fusion.kind in GATED for b in blocks):
            branches["fusion_gate"] = [b.fusion if b.fusion is not None and b.fusion.kind in GATED else None for b in blocks]
        branches["mlp"] = [getattr(b, "mlp", None) for b in blocks]
    elif not grafts:
        sites = [Site(i, "bank", m) for i, m in enumerate(phase_sites(model))]
    if grafts:
        name = f"{name} (grafted Phase Core)"
        sites += [Site(len(sites) + i, "core", g.core) for i, g in enumerate(grafts)]
        branches["phase_core"] = list(grafts)
    return Structure(model, name, sites, branches, grafts)


def oscillator_sites(target) -> list[Site]:
    return structure(target).sites


def _n_oscillators(site: nn.Module) -> int:
    cfg = getattr(site, "cfg", None)
    if cfg is not None and hasattr(cfg, "n_oscillators"):
        return int(cfg.n_oscillators)
    return int(site.omega0.numel())


# --------------------------------------------------------------------------------------------
# Output transforms: one forward hook per module runs a list of functions, in order
# --------------------------------------------------------------------------------------------

_SLOT = "_phaselm_output_transforms"
OutputTransform = Callable[[tuple, Any], Any]  # (forward args, output) → output


def _dispatch(module, args, output):
    for transform in list(module.__dict__[_SLOT][0]):
        output = transform(args, output)
    return output


def _add_output_transform(module: nn.Module, transform: OutputTransform) -> Callable[[], None]:
    """Run ``transform`` on ``module``'s output after any earlier ones; returns its remover.

    The hook is registered first among the module's forward hooks, so anything that merely
    observes the module (a recorder, a Graft) sees the transformed output.
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


def _append(hooks: list, fn) -> Callable[[], None]:
    hooks.append(fn)

    def remove() -> None:
        for i in range(len(hooks) - 1, -1, -1):
            if hooks[i] is fn:
                del hooks[i]
                break

    return remove


def _core_phase_transform(core: nn.Module, transform: PhaseTransform) -> OutputTransform:
    from .oscillators import order_parameter
    from .phase_core import PhaseCoreOutput

    def apply(args, out):
        phases = transform(out.phases)
        order = order_parameter(phases)
        return PhaseCoreOutput(core.modulate(args[0], order, phases), order, phases, out.state)

    return apply


def _zero_first(args, out):
    if isinstance(out, tuple):  # mixers return (output, new state): the state still advances
        return (torch.zeros_like(out[0]), *out[1:])
    if dataclasses.is_dataclass(out) and hasattr(out, "out"):  # a K-SSM bank: R and u still reported
        return dataclasses.replace(out, out=torch.zeros_like(out.out))
    return torch.zeros_like(out)


def _average_fusion(args, out):
    r, m = args[0], args[1]
    return 0.5 * (r + m), r.new_tensor(0.5)  # a fixed scalar gate, as WS reports its α


# --------------------------------------------------------------------------------------------
# Calibration of the oscillator output (mean_output, noise_output)
# --------------------------------------------------------------------------------------------


def _site_output(site: Site, args, out) -> torch.Tensor:
    """The oscillator output of a site: a bank's contribution, or a core's modulation h' − h."""
    if site.kind == "bank":
        return out.out.float()
    return out.hidden.float() - args[0].float()


def _as_sequences(ids) -> list[torch.Tensor]:
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


def calibrate(target, ids, layers: Sequence[int] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per-channel mean and std (ddof 0) of the oscillator output of each site over every
    position of ``ids``: {layer: (mean (D,), std (D,), positions)}. Runs the model as it is now
    (inside any enclosing interventions)."""
    return _calibrate(structure(target), ids, layers)


@torch.no_grad()
def _calibrate(info: Structure, ids, layers: Sequence[int] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor, int]]:
    if not info.sites:
        raise PhaseLMError(f"calibrating the oscillator output needs oscillators; this {info.name} model has none")
    chosen = [s for s in info.sites if layers is None or s.layer in layers]
    sums: dict[int, list] = {s.layer: [0.0, 0.0, 0] for s in chosen}

    def recorder(site: Site):
        def record(args, out):
            x = _site_output(site, args, out).flatten(0, -2).double()
            acc = sums[site.layer]
            acc[0] = acc[0] + x.sum(0)
            acc[1] = acc[1] + (x * x).sum(0)
            acc[2] += x.shape[0]
            return out

        return record

    removers = [_add_output_transform(s.module, recorder(s)) for s in chosen]
    device = next(info.model.parameters()).device
    try:
        for seq in _as_sequences(ids):
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


def _output_replacement(site: Site, kind: str, mean: torch.Tensor, std: torch.Tensor, seed: int) -> OutputTransform:
    generators: dict = {}

    def replacement(like: torch.Tensor) -> torch.Tensor:
        m = mean.to(like.device)
        if kind == "mean_output":
            return m.expand_as(like).clone()
        if like.device not in generators:
            generators[like.device] = torch.Generator(device=like.device).manual_seed(seed + site.layer)
        noise = torch.randn(like.shape, generator=generators[like.device], device=like.device, dtype=torch.float32)
        return m + std.to(like.device) * noise

    if site.kind == "bank":
        return lambda args, out: dataclasses.replace(out, out=replacement(out.out.float()).to(out.out.dtype))

    def core(args, out):
        hidden = args[0]
        return dataclasses.replace(out, hidden=(hidden.float() + replacement(hidden.float())).to(hidden.dtype))

    return core


# --------------------------------------------------------------------------------------------
# intervene
# --------------------------------------------------------------------------------------------


@dataclass
class Applied:
    """What ``intervene`` did, for run metadata (``records``: one dict per intervention)."""

    records: list[dict] = field(default_factory=list)
    model: str = ""

    def to_json(self) -> list[dict]:
        return [dict(r) for r in self.records]


def _branch_error(info: Structure, branch: str) -> PhaseLMError:
    if not info.branches:
        return PhaseLMError(
            f"this {info.name} model has no branch PhaseLM can ablate (K-SSM: bank, mixer, mlp; fusion: rwkv, mamba, "
            "fusion_gate, mlp; a grafted model: phase_core)"
        )
    close = difflib.get_close_matches(branch, list(info.branches), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return PhaseLMError(f"this {info.name} model has no branch {branch!r}; its branches are: {', '.join(info.branches)}{hint}")


def _require_sites(info: Structure, item: Intervention) -> None:
    if not info.sites:
        raise PhaseLMError(
            f"intervention {item.kind!r} needs a model with oscillators (K-SSM or a grafted Phase Core); "
            f"this is a {info.name} model without an oscillator bank"
        )


def _plan(info: Structure, item: Intervention, calibration, seed: int, calibrated: dict) -> tuple[dict, list[Callable[[], Callable[[], None]]]]:
    """Validate one intervention and return (its record, installers). Installs nothing."""
    kind = KINDS[item.kind]
    record = item.to_dict()
    steps: list[Callable[[], Callable[[], None]]] = []
    if kind.act == "branch":
        branch = item.value
        if branch not in info.branches:
            raise _branch_error(info, branch)
        entries = info.branches[branch]
        layers = resolve_layers(item.layers, len(entries), "blocks" if branch != "phase_core" else "grafted cores")
        missing = [layer for layer in layers if entries[layer] is None]
        if missing:
            raise PhaseLMError(f"block {missing[0]} of this {info.name} model has no {branch!r} branch; pick other layers")
        record["layers"] = layers
        for layer in layers:
            entry = entries[layer]
            if branch == "phase_core":
                steps.append(lambda g=entry: _disable_graft(g))
            elif branch == "fusion_gate":
                steps.append(lambda m=entry: _add_output_transform(m, _average_fusion))
            else:
                steps.append(lambda m=entry: _add_output_transform(m, _zero_first))
        return record, steps

    _require_sites(info, item)
    layers = resolve_layers(item.layers, len(info.sites))
    record["layers"] = layers
    chosen = [info.sites[layer] for layer in layers]
    if kind.act == "phases":
        if item.target_order is not None:
            record["target_order"] = item.target_order
        if chosen and item.target_order is not None:
            n = chosen[0].n_oscillators
            record.update(n_oscillators=n, arc_width=arc_step(n, item.target_order) * (n - 1))
        for site in chosen:
            transform = kind.build(item.value, site.n_oscillators)  # validates (e.g. m divides N) now
            if item.kind == "oscillators":
                record.setdefault("n_oscillators", site.n_oscillators)
                record.setdefault("kept", kept_oscillators(site.n_oscillators, item.value))
            if site.kind == "core":
                steps.append(lambda s=site, t=transform: _add_output_transform(s.module, _core_phase_transform(s.module, t)))
            else:
                hooks = getattr(site.module, kind.hook, None)
                if not isinstance(hooks, list):
                    raise PhaseLMError(f"intervention {item.kind!r} cannot act on layer {site.layer}: its oscillators have no {kind.hook} hook")
                steps.append(lambda h=hooks, t=transform: _append(h, t))
    elif kind.act == "coupling":
        for site in chosen:
            if site.kind == "core":
                steps.append(lambda s=site: _scale_core(s.module, item.value))
            else:
                hooks = getattr(site.module, "coupling_transforms", None)
                if not isinstance(hooks, list):
                    raise PhaseLMError(f"intervention 'k_scale' cannot act on layer {site.layer}: its bank has no coupling hook")
                factor = item.value
                steps.append(lambda h=hooks: _append(h, lambda k: k * factor))
    elif kind.act == "clamp":
        if any(s.kind != "bank" or not hasattr(getattr(s.module, "cfg", None), "bistable") for s in chosen):
            raise PhaseLMError(
                "intervention 'unclamp' needs K-SSM banks (the clamp of u); a grafted Phase Core has no clamp — "
                "U regulation there is a training-time loss term: compare separately trained runs"
            )
        for site in chosen:
            steps.append(lambda s=site: _unclamp(s.module))
    elif kind.act == "output":
        if chosen and calibration is None:
            raise PhaseLMError(
                f"intervention {item.kind!r} needs calibration text: intervene(..., calibration=ids) with token ids "
                "whose oscillator output gives the mean and std"
            )
        if chosen:
            missing = [s.layer for s in chosen if s.layer not in calibrated]
            if missing:
                calibrated.update(_calibrate(info, calibration, missing))
            record["calibration_positions"] = calibrated[chosen[0].layer][2]
            record["output_std"] = [float(calibrated[s.layer][1].mean()) for s in chosen]
            if item.kind == "noise_output":
                record["seed"] = seed
        for site in chosen:
            mean, std, _ = calibrated[site.layer]
            steps.append(lambda s=site, m=mean, d=std: _add_output_transform(s.module, _output_replacement(s, item.kind, m, d, seed)))
    else:  # pragma: no cover - a Kind with an unknown act
        raise PhaseLMError(f"intervention {item.kind!r} has no installer for {kind.act!r}")
    return record, steps


def _disable_graft(handle) -> Callable[[], None]:
    previous, handle.enabled = handle.enabled, False

    def restore() -> None:
        handle.enabled = previous

    return restore


def _scale_core(core: nn.Module, factor: float) -> Callable[[], None]:
    saved = core.coupling_scale.detach().clone()
    with torch.no_grad():
        core.coupling_scale.mul_(factor)

    def restore() -> None:
        with torch.no_grad():
            core.coupling_scale.copy_(saved)

    return restore


def _unclamp(bank: nn.Module) -> Callable[[], None]:
    previous, bank.cfg.bistable = bank.cfg.bistable, False

    def restore() -> None:
        bank.cfg.bistable = previous

    return restore


@contextlib.contextmanager
def intervene(target, *interventions: Intervention, calibration=None, seed: int = 0) -> Iterator[Applied]:
    """Apply ``interventions`` (in order) to ``target`` for the ``with`` block.

    ``target``: a K-SSM, a fusion model, a model with grafted Phase Cores, a ``Graft`` or a
    module holding K-SSM banks. ``calibration``: token ids (B, T) or a list of sequences, for
    ``mean_output`` / ``noise_output``. ``seed``: the noise generator's seed.
    Everything is validated before anything is installed; exiting (normally or by an
    exception) removes exactly what was installed, in reverse order.
    """
    info = structure(target) if interventions else None
    applied = Applied(model=info.name if info else "")
    plan: list[Callable[[], Callable[[], None]]] = []
    calibrated: dict = {}
    for item in interventions:
        if not isinstance(item, Intervention):
            raise PhaseLMError(f"expected an Intervention, got {type(item).__name__}")
        record, steps = _plan(info, item, calibration, seed, calibrated)
        applied.records.append(record)
        plan.extend(steps)
    undo: list[Callable[[], None]] = []
    try:
        for install in plan:
            undo.append(install())
        yield applied
    finally:
        for remove in reversed(undo):
            remove()


# --------------------------------------------------------------------------------------------
# Measuring R without changing anything (the "measured" observer)
# --------------------------------------------------------------------------------------------


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
    """Record R at every oscillator site during the block; the computation is untouched (the
    recorder only reads the site's output, after any intervention has acted on it)."""
    info = structure(target)
    if not info.sites:
        raise PhaseLMError(f"measuring R needs a model with oscillators; this {info.name} model has none")
    measurement = Measurement({s.layer: [] for s in info.sites})
    handles = []

    def recorder(layer: int):
        def hook(module, args, output):
            measurement.orders[layer].append(output.order.detach().float().cpu())

        return hook

    try:
        for site in info.sites:
            handles.append(site.module.register_forward_hook(recorder(site.layer)))
        yield measurement
    finally:
        for handle in handles:
            handle.remove()


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
