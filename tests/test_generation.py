"""Blind vs measured generation: same computation, per-token readings that match a full forward."""

from __future__ import annotations

import string

import pytest
import torch

from phaselm.data import CharTokenizer
from phaselm.generation import generate
from phaselm.graft import graft
from phaselm.observables import normalized_entropy, tone_of
from phaselm.phase_core import PhaseCoreConfig
from tiny_models import VOCAB

TOKENIZER = CharTokenizer((string.ascii_letters + string.digits + " .")[:VOCAB])


@pytest.fixture(params=["token", "recurrent"])
def grafted(request, tiny_model):
    model = tiny_model("mamba")
    handle = graft(model, PhaseCoreConfig(mode=request.param, alpha_init=2.0, coupling=1.0))
    yield model, handle
    handle.remove()


def test_measured_equals_blind_for_the_same_seed(grafted):
    model, handle = grafted
    blind = generate(model, TOKENIZER, "To be", 12, temperature=1.0, seed=3, handle=handle, measured=False)
    measured = generate(model, TOKENIZER, "To be", 12, temperature=1.0, seed=3, handle=handle, measured=True)
    assert blind.text == measured.text and blind.readings is None
    assert len(measured.readings) == 12
    other_seed = generate(model, TOKENIZER, "To be", 12, temperature=1.0, seed=4, handle=handle)
    assert other_seed.text != blind.text  # the seed matters, so equality above is not vacuous


def test_readings_match_a_full_forward_pass(grafted):
    model, handle = grafted
    prompt = "Hello"
    result = generate(model, TOKENIZER, prompt, 8, temperature=0.0, handle=handle, measured=True)
    ids = torch.tensor([TOKENIZER.encode(prompt + result.text)])
    with torch.no_grad():
        logits = model(ids).logits[0]
    order = handle.last.order[0]
    p = len(TOKENIZER.encode(prompt))
    for i, reading in enumerate(result.readings):
        assert reading.id == ids[0, p + i]
        assert reading.r == pytest.approx(float(order[p - 1 + i]), abs=1e-5)
        assert reading.u == pytest.approx(float(normalized_entropy(logits[p - 1 + i])), abs=1e-4)
        assert reading.ru == pytest.approx(reading.r * reading.u)
        assert reading.tone == tone_of(reading.r).name
    assert result.to_json()["mode"] == "measured" and len(result.to_json()["tokens"]) == 8


def test_a_bare_model_reports_u_without_r(tiny_model):
    result = generate(tiny_model("mamba"), TOKENIZER, "ab", 4, measured=True)
    assert all(r.r is None and r.tone is None and 0 <= r.u <= 1 for r in result.readings)


def test_generation_does_not_disturb_the_global_rng(grafted):
    model, handle = grafted
    state = torch.get_rng_state()
    generate(model, TOKENIZER, "ab", 4, temperature=1.0, seed=9, handle=handle)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "no tokens"),
        (dict(prompt="ab", max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="ab", temperature=-1.0), "temperature"),
    ],
)
def test_bad_generation_arguments(tiny_model, raises_phaselm, kwargs, match):
    with raises_phaselm(match):
        generate(tiny_model("mamba"), TOKENIZER, **kwargs)
