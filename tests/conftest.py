"""Shared fixtures: seeding, tiny randomly initialised Hugging Face models, PhaseLMError checks.

The helpers behind them live in tiny_models.py, which tests import by name (a conftest is
pytest's to load, never imported by a test).
"""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter so the fused ops are still tested
# against their references. Must be set before any kernel is defined (at phaselm import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tiny_models import build_tiny, raises_one_line_phaselm_error, seed_everything


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state, whatever ran before it."""
    seed_everything(0)
    yield


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model("gpt2")`` → a fresh seeded tiny model in eval mode."""
    return build_tiny


@pytest.fixture
def raises_phaselm():
    """``with raises_phaselm("regex"):`` — expects a PhaseLMError with a one-line message."""
    return raises_one_line_phaselm_error


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A 12,000-character slice of Tiny Shakespeare as a corpus file (evals, protocols)."""
    from phaselm.data import load_text

    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(load_text("tinyshakespeare")[:12_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' spin-waiting makes each small op ~20× slower; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
