"""Tones, uncertainty U, the Goldilocks zone and the drift controller."""

from __future__ import annotations

import math

import pytest
import torch

from phaselm.errors import PhaseLMError
from phaselm.observables import (
    GOLDILOCKS,
    TONE_NAMES,
    TONES,
    DriftConfig,
    DriftController,
    GoldilocksZone,
    normalized_entropy,
    tone_histogram,
    tone_index,
    tone_of,
)

# (R, tone name, glyph, action) — paper Appendix A; over-sync is strictly R > 0.95.
TABLE = [
    (1.00, "over-sync", "☍", "BRAKE"),
    (0.96, "over-sync", "☍", "BRAKE"),
    (0.95, "balance", "⚖", "COAST"),
    (0.80, "balance", "⚖", "COAST"),
    (0.79, "goldilocks", "🌀", "COAST"),
    (0.50, "goldilocks", "🌀", "COAST"),
    (0.49, "unbound-joy", "✨", "BOOST"),
    (0.30, "unbound-joy", "✨", "BOOST"),
    (0.29, "silent-intimacy", "☾", "BOOST"),
    (0.10, "silent-intimacy", "☾", "BOOST"),
    (0.09, "unformed", "∅", "BOOST"),
    (0.00, "unformed", "∅", "BOOST"),
]


def test_tone_table_order_glyphs_and_actions():
    assert [t.glyph for t in TONES] == ["☍", "⚖", "🌀", "✨", "☾", "∅"]
    assert [t.action for t in TONES] == ["BRAKE", "COAST", "COAST", "BOOST", "BOOST", "BOOST"]
    assert TONE_NAMES == ("over-sync", "balance", "goldilocks", "unbound-joy", "silent-intimacy", "unformed")


@pytest.mark.parametrize("r, name, glyph, action", TABLE)
def test_tone_of_table_boundaries(r, name, glyph, action):
    tone = tone_of(r)
    assert (tone.name, tone.glyph, tone.action) == (name, glyph, action)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tone_index_on_tensors_at_boundaries(dtype):
    order = torch.tensor([row[0] for row in TABLE], dtype=dtype).reshape(3, 4)
    expected = torch.tensor([TONE_NAMES.index(row[1]) for row in TABLE]).reshape(3, 4)
    got = tone_index(order)
    assert got.shape == (3, 4) and got.dtype == torch.long
    assert torch.equal(got, expected)


def test_tone_of_is_exact_for_python_floats_next_to_a_boundary():
    """R values computed in float64 (e.g. a mean over a run) must not be rounded to float32 first.

    0.7999999999 is below 0.80 (🌀 goldilocks) and 0.9500000001 is above 0.95 (☍ over-sync),
    but both round onto the boundary in float32.
    """
    assert tone_index(torch.tensor([0.7999999999], dtype=torch.float64)).item() == TONE_NAMES.index("goldilocks")
    assert tone_of(0.7999999999).name == "goldilocks"
    assert tone_of(0.9500000001).name == "over-sync"
    assert tone_of(0.4999999999).name == "unbound-joy"


def test_tone_histogram_counts():
    order = torch.tensor([[0.99, 0.96, 0.9, 0.85], [0.6, 0.05, 0.2, 0.97]])
    hist = tone_histogram(order)
    assert list(hist) == list(TONE_NAMES)
    assert hist == {
        "over-sync": 3,
        "balance": 2,
        "goldilocks": 1,
        "unbound-joy": 0,
        "silent-intimacy": 1,
        "unformed": 1,
    }
    assert sum(tone_histogram(torch.rand(7, 13)).values()) == 91


# ---------------------------------------------------------------- normalized entropy U


def entropy64(logits: torch.Tensor) -> torch.Tensor:
    x = logits.double()
    x = x - x.max(-1, keepdim=True).values
    p = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return h / math.log(logits.shape[-1])


def test_normalized_entropy_uniform_is_one_and_peaked_is_zero():
    uniform = torch.full((2, 3, 50), 1.7)
    torch.testing.assert_close(normalized_entropy(uniform), torch.ones(2, 3), atol=1e-6, rtol=0)
    peaked = torch.zeros(4, 50)
    peaked[torch.arange(4), torch.tensor([0, 7, 49, 3])] = 100.0
    u = normalized_entropy(peaked)
    assert u.shape == (4,)
    assert (u >= 0).all() and (u < 1e-6).all()


def test_normalized_entropy_matches_float64_reference():
    logits = torch.randn(3, 5, 11) * 3
    u = normalized_entropy(logits)
    assert u.dtype == torch.float32 and u.shape == (3, 5)
    torch.testing.assert_close(u.double(), entropy64(logits), atol=1e-6, rtol=0)
    u_bf = normalized_entropy(logits.bfloat16())
    assert u_bf.dtype == torch.float32
    torch.testing.assert_close(u_bf.double(), entropy64(logits.bfloat16()), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- Goldilocks zone


@pytest.mark.parametrize(
    "r, u, inside",
    [
        (0.80, 0.50, True),  # R·U = 0.40, all three on their lower bound
        (0.95, 0.60, True),  # R·U = 0.57
        (0.90, 0.45, True),
        (0.85, 0.40, False),  # R·U = 0.34 < 0.40 although R and U are in range
        (0.80, 0.45, False),  # R·U = 0.36
        (0.79, 0.55, False),  # R below
        (0.96, 0.55, False),  # R above
        (0.90, 0.39, False),  # U below
        (0.90, 0.61, False),  # U above
        (0.95, 0.40, False),  # R·U = 0.38
    ],
)
def test_goldilocks_zone_membership(r, u, inside):
    order = torch.tensor([r], dtype=torch.float64)
    unc = torch.tensor([u], dtype=torch.float64)
    assert bool(GOLDILOCKS.contains(order, unc)) is inside


def test_goldilocks_residence_is_share_of_positions_inside():
    order = torch.tensor([[0.9, 0.9, 0.5, 0.85, 0.99], [0.82, 0.9, 0.9, 0.1, 0.9]])
    unc = torch.tensor([[0.5, 0.7, 0.5, 0.55, 0.5], [0.55, 0.45, 0.6, 0.5, 0.2]])
    # Inside: (0,0), (0,3), (1,0), (1,1), (1,2) → 5 of 10.
    mask = GOLDILOCKS.contains(order, unc)
    expected_mask = torch.tensor([[1, 0, 0, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected_mask)
    assert GOLDILOCKS.residence(order, unc) == pytest.approx(0.5)
    assert GoldilocksZone(r=(0.0, 1.0), u=(0.0, 1.0), ru=(0.0, 1.0)).residence(order, unc) == pytest.approx(1.0)


# ---------------------------------------------------------------- drift controller


def test_drift_controller_brake_boost_coast():
    ctrl = DriftController(DriftConfig(enabled=True))
    assert ctrl.step(0.97) == "BRAKE"
    assert ctrl.scale == pytest.approx(0.9)
    assert ctrl.step(0.95) == "COAST"  # BRAKE is strictly above 0.95
    assert ctrl.scale == pytest.approx(0.9)
    assert ctrl.step(0.70) == "COAST"
    assert ctrl.step(0.50) == "COAST"  # BOOST is strictly below 0.50
    assert ctrl.scale == pytest.approx(0.9)
    assert ctrl.step(0.49) == "BOOST"
    assert ctrl.scale == pytest.approx(0.9 * 1.1)
    assert ctrl.step(0.0) == "BOOST"
    assert ctrl.scale == pytest.approx(0.9 * 1.1 * 1.1)


def test_drift_controller_clamps_scale():
    ctrl = DriftController(DriftConfig(brake_factor=0.5, boost_factor=2.0, min_scale=0.2, max_scale=3.0))
    for _ in range(10):
        ctrl.step(0.99)
    assert ctrl.scale == pytest.approx(0.2)
    for _ in range(10):
        ctrl.step(0.01)
    assert ctrl.scale == pytest.approx(3.0)


def test_drift_controller_thresholds_are_configurable():
    ctrl = DriftController(DriftConfig(brake_above=0.85, boost_below=0.80, brake_factor=0.5, boost_factor=3.0))
    assert ctrl.decide(0.90) == "BRAKE"
    assert ctrl.decide(0.85) == "COAST"
    assert ctrl.decide(0.82) == "COAST"
    assert ctrl.decide(0.79) == "BOOST"
    assert ctrl.step(0.90) == "BRAKE" and ctrl.scale == pytest.approx(0.5)
    assert ctrl.step(0.70) == "BOOST" and ctrl.scale == pytest.approx(1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"brake_above": 0.5, "boost_below": 0.6},
        {"brake_above": 0.5, "boost_below": 0.5},
        {"brake_above": 1.2},
        {"boost_below": -0.1},
        {"brake_factor": 0.0},
        {"boost_factor": -1.0},
        {"min_scale": 0.0},
        {"min_scale": 2.0},
        {"max_scale": 0.5},
    ],
)
def test_bad_drift_config_raises(kwargs, raises_phaselm):
    with raises_phaselm():
        DriftConfig(**kwargs)
    assert issubclass(PhaseLMError, Exception)
