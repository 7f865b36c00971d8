"""Phase geometry of the phase kinds: the arc with an exact order parameter, the mean phase, and
the oscillators kept by ``oscillators m``.

The arc: N phases evenly spaced ``s`` apart and centred on the mean phase ψ have the order
parameter |sin(N·s/2) / (N·sin(s/2))| (a Dirichlet kernel), which falls monotonically from 1
(s = 0) to 0 (s = 2π/N, the whole circle); ``pin r`` solves it for s by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import PhaseLMError

PhaseTransform = Callable[[torch.Tensor], torch.Tensor]  # θ (…, N) → θ (…, N)
# A Kuramoto mixer's phase transform: its mean field (Re M, Im M) (…) → the same (the mixer's docstring)
FieldTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_order_value(r) -> float:
    """``r`` as a float in [0, 1] (an order parameter), or a one-line ``PhaseLMError``."""
    try:
        value = float(r)
    except (TypeError, ValueError):
        raise PhaseLMError(f"pinned R must be a number in [0, 1], got {r!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise PhaseLMError(f"pinned R must be in [0, 1], got {r}; R is an order parameter |Z| between 0 and 1")
    return value


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
    """(N,) float32 offsets from the mean phase, evenly spaced and centred on 0, with discrete R = r."""
    step = arc_step(n, r)
    k = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
    return (k * step).to(device=device, dtype=torch.float32)


def mean_phase(theta: torch.Tensor) -> torch.Tensor:
    """ψ = arg mean_j e^{iθ_j} of θ (…, N), shape ``theta.shape[:-1]`` (0 when Z = 0 exactly)."""
    return torch.atan2(torch.sin(theta).mean(-1), torch.cos(theta).mean(-1))


def arc_transform(r: float, n: int) -> PhaseTransform:
    """θ (…, N) → the N phases on the arc centred at θ's mean phase ψ with order parameter ``r``."""
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
        divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
        raise PhaseLMError(f"oscillators={m} does not divide the {n} oscillators of this model; keep one of {divisors}")
    return list(range(0, n, n // m))


def subset_transform(m: int, n: int) -> PhaseTransform:
    """θ (…, N) → θ (…, N) where each of the m kept phases fills N/m slots, so every mean over
    the N slots is the mean over the m kept."""
    kept = kept_oscillators(n, m)
    index = torch.tensor([kept[j // (n // m)] for j in range(n)])
    by_device: dict = {}

    def transform(theta: torch.Tensor) -> torch.Tensor:
        if theta.device not in by_device:
            by_device[theta.device] = index.to(theta.device)
        return theta.index_select(-1, by_device[theta.device])

    return transform


def field_order_transform(r: float) -> FieldTransform:
    """(Re M, Im M) (…) → the field with |M| = ``r`` and its phase ψ = arg M kept (ψ = 0 where
    M = 0): a token-coupled layer's synchrony pinned at r (sync: 1, disorder: 0) — the arc's rule
    "ψ kept, only the spread forced" for the phases a token couples to."""
    check_order_value(r)

    def transform(re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi = torch.atan2(im, re)
        return r * torch.cos(psi), r * torch.sin(psi)

    return transform
