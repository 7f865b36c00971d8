"""Intervention kinds, the ``Intervention`` record, and parsing with value checks.

``KINDS`` is the table of what can be done (see the package docstring for each kind);
``Intervention`` says what to do and where, checks its value on construction, and reads and
writes the short forms ``"pin=0.3"``, ``"k_scale=0.5"``, ``"ablate=mamba"``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PhaseLMError
from .geometry import PhaseTransform, arc_transform, check_order_value, subset_transform

ALL_LAYERS = "all"
# Oscillator site kinds (phaselm.interventions.sites): a K-SSM phase bank, a grafted Phase Core,
# the Kuramoto token mixer. Here, not in sites, so that ``Intervention`` can check its ``sites``.
OSCILLATOR_KINDS = ("bank", "core", "mixer")


def check_factor(value, name: str = "k_scale") -> float:
    """``value`` as a finite float ≥ 0 (a factor on K), or a one-line ``PhaseLMError``."""
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise PhaseLMError(
            f"{name} needs a number ≥ 0 (the factor on K; 1 leaves K unchanged), got {value!r}"
        ) from None
    if not math.isfinite(factor) or factor < 0:
        raise PhaseLMError(f"{name} needs a finite factor ≥ 0 (1 leaves K unchanged), got {value}")
    return factor


def check_count(value) -> int:
    """``value`` as a whole number ≥ 1 (oscillators to keep), or a one-line ``PhaseLMError``."""
    try:
        count = float(value)
    except (TypeError, ValueError):
        raise PhaseLMError(f"oscillators needs a whole number of oscillators to keep (≥ 1), got {value!r}") from None
    if not math.isfinite(count) or count != int(count) or count < 1:
        raise PhaseLMError(f"oscillators needs a whole number of oscillators to keep (≥ 1), got {value}")
    return int(count)


def check_branch(value) -> str:
    """``value`` as a stripped, non-empty branch name, or a one-line ``PhaseLMError``."""
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
VALUE_HINTS = {
    "order": "the R to pin, in [0, 1]",
    "factor": "the factor on K, ≥ 0",
    "count": "how many oscillators to keep",
    "branch": "the branch to ablate",
}


@dataclass(frozen=True)
class Kind:
    """How an intervention kind acts.

    ``value`` says what the value is: ``"none"`` (no value), ``"order"`` (R ∈ [0, 1]),
    ``"factor"`` (≥ 0), ``"count"`` (a whole number ≥ 1) or ``"branch"`` (a branch name).
    Phase kinds give ``build(value, n_oscillators)``: the function θ (…, N) → θ (…, N) applied
    after the dynamics and before the readout of every forced site; ``target`` gives the order
    parameter the kind imposes (None if it imposes none). ``act`` names what a kind acts on;
    :data:`phaselm.interventions.install.INSTALLERS` maps each act to its installer. New phase
    kinds plug in by adding a ``Kind`` with a ``build`` here.
    """

    name: str
    needs_value: bool
    build: Callable[[Any, int], PhaseTransform] | None
    target: Callable[[Any], float] | None
    help: str
    value: str = "none"
    act: str = "phases"  # "phases", "coupling", "output", "clamp" or "branch"


KINDS: dict[str, Kind] = {
    "sync": Kind(
        "sync", False, lambda _, n: arc_transform(1.0, n), lambda _: 1.0, "all phases at the mean phase ψ (R = 1)"
    ),
    "disorder": Kind(
        "disorder",
        False,
        lambda _, n: arc_transform(0.0, n),
        lambda _: 0.0,
        "phases spread evenly over the circle (R = 0)",
    ),
    "pin": Kind(
        "pin",
        True,
        lambda v, n: arc_transform(float(v), n),
        lambda v: float(v),
        "phases on an arc centred at ψ with R = value exactly",
        value="order",
    ),
    "oscillators": Kind(
        "oscillators",
        True,
        lambda v, n: subset_transform(int(v), n),
        None,
        "readout and R over value of the N oscillators (evaluation time; value divides N)",
        value="count",
    ),
    "k_scale": Kind(
        "k_scale", True, None, None, "the coupling K multiplied by value (≥ 0)", value="factor", act="coupling"
    ),
    "mean_output": Kind(
        "mean_output",
        False,
        None,
        None,
        "the oscillator output replaced by its mean over calibration positions",
        act="output",
    ),
    "noise_output": Kind(
        "noise_output",
        False,
        None,
        None,
        "the oscillator output replaced by Gaussian noise with its calibration mean and std",
        act="output",
    ),
    "unclamp": Kind(
        "unclamp", False, None, None, "K-SSM: u's clamp switched off (U regulation off, evaluation time)", act="clamp"
    ),
    "ablate": Kind(
        "ablate",
        True,
        None,
        None,
        "the output of branch value zeroed (bank, mixer, mlp, rwkv, mamba, fusion_gate, "
        "phase_core — whatever the model has)",
        value="branch",
        act="branch",
    ),
}


def check_kind(kind: str) -> Kind:
    """The ``Kind`` named ``kind``; an unknown name is a one-line error with a "did you mean"."""
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise PhaseLMError(f"unknown intervention kind {kind!r}; choose one of {', '.join(KINDS)}{hint}")
    return KINDS[kind]


@dataclass(frozen=True)
class Intervention:
    """What to do and where. ``layers`` is a list of layer indices or ``"all"``; an empty list
    is a no-op (nothing is installed, the model stays bit-exact). ``value``: see :data:`KINDS`
    (R for pin, a factor for k_scale, a count for oscillators, a branch name for ablate).
    ``sites``: None (every oscillator site of the model) or one site kind of
    :data:`OSCILLATOR_KINDS` (e.g. ``"mixer"``: the Kuramoto token mixers only); ``layers`` then
    counts the sites of that kind. Not for ``ablate``, which names a branch."""

    kind: str
    value: Any = None
    layers: tuple[int, ...] | str = ALL_LAYERS
    sites: str | None = None

    def __post_init__(self) -> None:
        kind = check_kind(self.kind)
        if kind.needs_value:
            if self.value is None:
                raise PhaseLMError(
                    f"intervention {self.kind!r} needs a value: {VALUE_HINTS.get(kind.value, 'a number')}"
                )
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
            layers = as_layer_tuple(layers)
        object.__setattr__(self, "layers", layers)
        if self.sites is not None:
            if self.sites not in OSCILLATOR_KINDS:
                raise PhaseLMError(
                    f"sites must be one of {', '.join(OSCILLATOR_KINDS)} (or left out for every oscillator site), "
                    f"got {self.sites!r}"
                )
            if kind.act == "branch":
                raise PhaseLMError(
                    f"ablate names a branch ({self.value}), not oscillator sites; drop sites={self.sites!r}"
                )

    @property
    def target_order(self) -> float | None:
        """The R this intervention forces (sync: 1, pin: its value), or None where it sets no R."""
        target = KINDS[self.kind].target
        return None if target is None else target(self.value)

    @property
    def label(self) -> str:
        """A reader's name for tables and plots: ``"pin 0.3 @ layers all"``, ``"k_scale ×2 @ layers 1,3"``."""
        where = "all" if self.layers == ALL_LAYERS else ",".join(map(str, self.layers)) or "none"
        if self.value is None:
            what = self.kind
        elif KINDS[self.kind].value == "factor":
            what = f"{self.kind} ×{self.value:g}"
        elif isinstance(self.value, float):
            what = f"{self.kind} {self.value:g}"
        else:
            what = f"{self.kind} {self.value}"
        return f"{what} @ {self.sites + ' ' if self.sites else ''}layers {where}"

    @property
    def spec(self) -> str:
        """The short form ``parse`` reads back: ``"pin=0.3"``, ``"sync"``, ``"ablate=mamba"``."""
        if self.value is None:
            return self.kind
        return f"{self.kind}={self.value:g}" if isinstance(self.value, float) else f"{self.kind}={self.value}"

    def to_dict(self) -> dict:
        """A JSON-ready form (kind, value, layers; sites where chosen) that :meth:`from_dict` reads back."""
        out = {
            "kind": self.kind,
            "value": self.value,
            "layers": self.layers if self.layers == ALL_LAYERS else list(self.layers),
        }
        if self.sites is not None:
            out["sites"] = self.sites
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Intervention:
        """The intervention :meth:`to_dict` wrote; layers default to all, sites to every site."""
        return cls(data["kind"], data.get("value"), data.get("layers", ALL_LAYERS), data.get("sites"))

    @classmethod
    def parse(
        cls, spec: str, layers: Sequence[int] | str = ALL_LAYERS, default_value: Any = None, sites: str | None = None
    ) -> Intervention:
        """``"sync"``, ``"disorder"``, ``"pin=0.3"`` (or ``"pin"`` with ``default_value``),
        ``"k_scale=0.5"``, ``"oscillators=4"``, ``"mean_output"``, ``"ablate=mamba"``; ``sites``
        as in :class:`Intervention`."""
        name, _, value = str(spec).strip().partition("=")
        name = name.strip()
        kind = check_kind(name)
        value = value.strip()
        if value:
            if not kind.needs_value:
                raise PhaseLMError(f"intervention {name!r} takes no value (got {value!r}); write just {name}")
            if kind.value == "branch":
                return cls(name, value, layers, sites)
            try:
                number = float(value)
            except ValueError:
                raise PhaseLMError(
                    f"bad intervention {spec!r}: {value!r} is not a number; write e.g. {name}=0.3"
                ) from None
            return cls(name, number, layers, sites)
        return cls(name, default_value if kind.needs_value else None, layers, sites)


def as_layer_tuple(layers: Iterable) -> tuple[int, ...]:
    """Layer indices (ints or their strings) as a tuple; a non-integer or a repeat is an error."""
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
    return as_layer_tuple(p for p in text.split(",") if p.strip()) if text else ()
