"""Observables of the R·U framework: uncertainty U, tones, the Goldilocks zone, the drift controller.

Where the seeds disagree we follow the paper (seed 002): its Appendix A tone table and its
§1.2 Goldilocks zone. docs/seeds-vs-phaselm.md lists every conflict and the choice made.
Note that the paper's "Goldilocks zone" (R 0.80–0.95) is the *balance* tone's R range, not
the 🌀 "Goldilocks" tone's (0.50–0.80): the two names are kept apart here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import PhaseLMError


@dataclass(frozen=True)
class Tone:
    """A named band of R (the paper's tones), its lower bound and the drift action it pairs with."""

    glyph: str
    name: str
    low: float  # inclusive lower bound of R
    action: str  # drift action the paper pairs with the tone


# Highest first; a value belongs to the first tone whose lower bound it reaches. Over-sync is
# strict (R > 0.95), so its bound is the next float above 0.95.
TONES: tuple[Tone, ...] = (
    Tone("☍", "over-sync", math.nextafter(0.95, 1.0), "BRAKE"),
    Tone("⚖", "balance", 0.80, "COAST"),
    Tone("🌀", "goldilocks", 0.50, "COAST"),
    Tone("✨", "unbound-joy", 0.30, "BOOST"),
    Tone("☾", "silent-intimacy", 0.10, "BOOST"),
    Tone("∅", "unformed", -math.inf, "BOOST"),
)
TONE_NAMES = tuple(t.name for t in TONES)


def tone_index(order: torch.Tensor) -> torch.Tensor:
    """Index into TONES for every R value (same shape, long)."""
    bounds = torch.tensor([t.low for t in TONES[:-1]], dtype=torch.float64, device=order.device)
    # Count how many lower bounds R fails to reach: 0 → over-sync, 5 → unformed.
    return (order.double().unsqueeze(-1) < bounds).sum(-1)


def tone_of(r: float) -> Tone:
    """The tone a single R value falls in."""
    return TONES[int(tone_index(torch.tensor(float(r), dtype=torch.float64)))]


def tone_histogram(order: torch.Tensor) -> dict[str, int]:
    """Positions per tone name for R values of any shape, every tone listed (0 where none)."""
    counts = torch.bincount(tone_index(order).flatten(), minlength=len(TONES))
    return {t.name: int(c) for t, c in zip(TONES, counts.tolist())}


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """U = H(p) / log V per position, in [0, 1], computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return entropy / math.log(logits.shape[-1])


@dataclass(frozen=True)
class GoldilocksZone:
    """Paper §1.2: R ∈ [0.80, 0.95], U ∈ [0.40, 0.60], R·U ∈ [0.40, 0.60] (all inclusive)."""

    r: tuple[float, float] = (0.80, 0.95)
    u: tuple[float, float] = (0.40, 0.60)
    ru: tuple[float, float] = (0.40, 0.60)

    def contains(self, order: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        """Bool mask, R's shape: where R, U and R·U all fall inside the zone (R and U one shape)."""
        def inside(x, bounds):
            return (x >= bounds[0]) & (x <= bounds[1])

        return inside(order, self.r) & inside(uncertainty, self.u) & inside(order * uncertainty, self.ru)

    def residence(self, order: torch.Tensor, uncertainty: torch.Tensor) -> float:
        """Share of positions inside the zone, in [0, 1]."""
        return float(self.contains(order, uncertainty).float().mean())


GOLDILOCKS = GoldilocksZone()

ACTIONS = ("BRAKE", "COAST", "BOOST")


@dataclass
class DriftConfig:
    """The drift controller's thresholds on mean R, its factors on K and the bounds of their product."""

    enabled: bool = False
    brake_above: float = 0.95
    boost_below: float = 0.50
    brake_factor: float = 0.9  # K ← K·0.9 when over-synchronised
    boost_factor: float = 1.1  # K ← K·1.1 when under-synchronised
    min_scale: float = 0.05
    max_scale: float = 20.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.boost_below < self.brake_above <= 1.0:
            raise PhaseLMError(
                "drift thresholds need 0 ≤ boost_below < brake_above ≤ 1, "
                f"got boost_below={self.boost_below}, brake_above={self.brake_above}"
            )
        if self.brake_factor <= 0 or self.boost_factor <= 0 or not 0 < self.min_scale <= 1 <= self.max_scale:
            raise PhaseLMError("drift factors must be > 0 and min_scale ≤ 1 ≤ max_scale")


@dataclass
class DriftController:
    """BRAKE / COAST / BOOST on the mean R of a step, acting on the coupling scale.

    ``step`` returns the action and the new multiplicative scale on K, which the caller writes
    into the core before the next step. The original only logged the action; this one acts.
    """

    config: DriftConfig = field(default_factory=DriftConfig)
    scale: float = 1.0

    def decide(self, mean_order: float) -> str:
        """BRAKE above ``brake_above``, BOOST below ``boost_below``, COAST between."""
        if mean_order > self.config.brake_above:
            return "BRAKE"
        if mean_order < self.config.boost_below:
            return "BOOST"
        return "COAST"

    def step(self, mean_order: float) -> str:
        """Decide on this step's mean R, move ``scale`` by the action's factor (within bounds); the action."""
        action = self.decide(mean_order)
        factor = {"BRAKE": self.config.brake_factor, "BOOST": self.config.boost_factor}.get(action, 1.0)
        self.scale = min(max(self.scale * factor, self.config.min_scale), self.config.max_scale)
        return action


def _stats(x: torch.Tensor) -> dict[str, float]:
    x = x.detach().double().flatten()
    return {
        "mean": float(x.mean()),
        "std": float(x.std()) if x.numel() > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
    }


def summarize(order: torch.Tensor, uncertainty: torch.Tensor, zone: GoldilocksZone = GOLDILOCKS) -> dict:
    """Per-token statistics of R, U and R·U, tone shares and Goldilocks residence.

    ``order`` and ``uncertainty`` hold one value per token (any matching shapes); every number
    is over tokens, never over batch means.
    """
    if order.shape != uncertainty.shape or order.numel() == 0:
        raise PhaseLMError(
            "summarize needs R and U of the same non-empty shape, "
            f"got {tuple(order.shape)} and {tuple(uncertainty.shape)}"
        )
    counts = tone_histogram(order)
    total = sum(counts.values())
    return {
        "n_tokens": int(order.numel()),
        "order": _stats(order),
        "uncertainty": _stats(uncertainty),
        "ru": _stats(order * uncertainty),
        "tones": {name: c / total for name, c in counts.items()},
        "goldilocks_residence": zone.residence(order, uncertainty),
    }
