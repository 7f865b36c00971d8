"""Shared by the protocol tests: one K-SSM run and one GPT run on the small corpus, built once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"kssm": make_run(root, "kssm", corpus=corpus), "gpt": make_run(root, "gpt", arch="gpt2", corpus=corpus)}
