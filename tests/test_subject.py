"""Subject.generate / readings / score: the one sampling loop's batching, readings that match a
full forward pass, and scores that match log-probabilities computed by hand."""

from __future__ import annotations

import string

import pytest
import torch
import torch.nn.functional as F

from phaselm.data import CharTokenizer
from phaselm.generation import generate
from phaselm.graft import graft
from phaselm.phase_core import PhaseCoreConfig
from phaselm.subject import Subject
from tiny_models import VOCAB

TOKENIZER = CharTokenizer((string.ascii_letters + string.digits + " .")[:VOCAB])


@pytest.fixture(params=["gpt2", "mamba"])
def grafted(request, tiny_model):
    model = tiny_model(request.param)
    handle = graft(model, PhaseCoreConfig(mode="recurrent", alpha_init=2.0, coupling=1.0))
    yield Subject(model, TOKENIZER, handle)
    handle.remove()


def test_generate_is_generation_generate_with_its_readings(grafted):
    (c,) = grafted.generate(["To be"], 6, temperature=1.0, seed=3, batch_size=1, stop_at_eos=True)
    reference = generate(grafted.model, TOKENIZER, "To be", 6, temperature=1.0, seed=3, measured=True)
    assert c.ids == [r.id for r in reference.readings]
    assert c.mean_r == pytest.approx([r.r for r in reference.readings], abs=1e-6)
    assert c.u == pytest.approx([r.u for r in reference.readings], abs=1e-6)


def test_left_padding_continues_each_prompt_as_alone(grafted):
    prompts = ["To be", "or", "not to"]
    padded = grafted.generate(prompts, 5, temperature=0.0, pad=True, batch_size=3)
    alone = [grafted.generate([p], 5, temperature=0.0)[0] for p in prompts]
    assert [c.ids for c in padded] == [c.ids for c in alone]
    for a, b in zip(padded, alone):
        assert torch.allclose(a.r, b.r, atol=1e-5)


def test_readings_and_score_match_a_full_forward(grafted):
    prompts, continuations = [[1, 2, 3], [4, 5], [6, 7, 8]], [[9, 10], [11, 12, 13], [14]]
    full = [p + c for p, c in zip(prompts, continuations)]
    readings = grafted.readings(full, batch_size=2)
    scores = grafted.score(prompts, continuations)
    for seq, reading, score, p, c in zip(full, readings, scores, prompts, continuations):
        grafted.handle.last = None
        with torch.no_grad():
            logits = grafted.model(input_ids=torch.tensor([seq])).logits[0].float()
        assert torch.allclose(reading.logits, logits, atol=1e-5)
        assert torch.allclose(reading.r[0], grafted.handle.last.order[0].float(), atol=1e-6)
        assert len(reading.tones) == len(seq) and reading.u.shape == (len(seq),)
        logp = F.log_softmax(logits[len(p) - 1 : -1], -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        assert torch.allclose(score.logprobs, logp, atol=1e-5)
        assert score.perplexity == pytest.approx(float(torch.exp(-logp.mean())), rel=1e-5)
    with grafted.handle.disabled():  # the core switched off: no R to read
        assert grafted.readings([full[0]])[0].r is None


def test_a_model_without_oscillators_has_no_r(tiny_model, raises_phaselm):
    subject = Subject(tiny_model("gpt2"), TOKENIZER)
    (c,) = subject.generate(["ab"], 4)
    assert c.r is None and c.mean_r is None and len(c.u) == 4
    assert subject.readings([[1, 2, 3]])[0].r is None
    with raises_phaselm("one continuation per prompt"):
        subject.score([[1]], [])
