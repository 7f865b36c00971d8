"""Training state as a JSON tree plus named tensors: what survives the round trip, what is refused."""

from __future__ import annotations

import json

import pytest
import torch

from phaselm.errors import PhaseLMError
from phaselm.training_state import decode, encode, encode_training_state, prepare_tensors


def test_tuples_int_keys_and_tensors_survive_and_callables_are_dropped():
    moment = torch.arange(6.0).reshape(2, 3)
    state = {"state": {0: {"exp_avg": moment, "step": 3}}, "betas": (0.9, 0.99), "fn": print, "lambdas": [print, 1.5]}
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(encode(state, "optimizer", tensors)))  # must be plain JSON
    back = decode(tree, tensors)
    assert back["betas"] == (0.9, 0.99) and isinstance(back["betas"], tuple)
    assert list(back["state"]) == [0] and back["state"][0]["step"] == 3
    assert torch.equal(back["state"][0]["exp_avg"], moment)
    assert "fn" not in back and back["lambdas"] == [None, 1.5]  # positions kept


def test_shared_and_strided_tensors_are_made_storable():
    base = torch.arange(12.0).reshape(3, 4)
    out = prepare_tensors({"a": base, "b": base, "t": base.t()})
    assert out["t"].is_contiguous() and torch.equal(out["t"], base.t())
    assert out["a"].untyped_storage().data_ptr() != out["b"].untyped_storage().data_ptr()


def test_extra_that_is_not_json_is_a_one_line_error(tmp_path):
    with pytest.raises(PhaseLMError, match="not JSON-serialisable") as exc:
        encode_training_state(tmp_path, None, None, {"bad": object()}, None)
    assert "\n" not in str(exc.value)
    with pytest.raises(PhaseLMError, match="must map names to tensors"):
        encode_training_state(tmp_path, None, None, None, {"gen": [1, 2]})
