"""Checkpoints: exact round trips, bit-identical resume, clear errors, crash safety."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import phaselm.checkpoint as ckpt
from phaselm.checkpoint import (
    checkpoint_dir,
    is_checkpoint,
    latest_checkpoint,
    load_config,
    load_module_state,
    load_training_state,
    save_checkpoint,
)
from phaselm.errors import PhaseLMError

CONFIG = {"n_oscillators": 16, "d_model": 8, "name": "tiny"}


def make_model(hidden: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, 4))


def make_training(model: nn.Module, warmup: int = 2, total: int = 10):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    def lr_lambda(step: int) -> float:  # linear warmup, then cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)


def train_step(model, opt, sched, x, y) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    sched.step()


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_roundtrip_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make_model()
    path = save_checkpoint(tmp_path / "ck", model, CONFIG)
    assert is_checkpoint(path)
    assert load_config(path) == CONFIG

    fresh = make_model()
    assert load_module_state(path, fresh, expected_config=CONFIG) == CONFIG
    x = torch.randn(5, 8)
    assert torch.equal(model(x), fresh(x))


def test_shared_and_noncontiguous_tensors(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight  # tied weights share storage
            self.register_buffer("t", torch.arange(12.0).reshape(3, 4).t())  # non-contiguous

    model = Tied()
    save_checkpoint(tmp_path / "ck", model, {})
    fresh = Tied()
    load_module_state(tmp_path / "ck", fresh)
    assert torch.equal(fresh.a.weight, model.a.weight) and torch.equal(fresh.t, model.t)
    assert fresh.a.weight is fresh.b.weight


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(6, 8), torch.randn(6, 4)
    model = make_model()
    opt, sched = make_training(model)
    for _ in range(3):
        train_step(model, opt, sched, x, y)

    gen = torch.Generator().manual_seed(123)
    torch.rand(1, generator=gen)
    random.seed(5)
    np.random.seed(6)
    extra = {"step": 3, "drift_scale": 0.9, "data_generator_state": {"epoch": 1, "offset": [1, 2]}}
    extra_tensors = {"data_gen": gen.get_state()}
    save_checkpoint(tmp_path / "ck", model, CONFIG, opt, sched, extra=extra, extra_tensors=extra_tensors)

    sched_state = sched.state_dict()
    # Uninterrupted run: draws right after the save, then one more step.
    expected_draw = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    train_step(model, opt, sched, x, y)

    # Resumed run: fresh everything, scrambled RNGs, then load.
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    model2 = make_model()
    opt2, sched2 = make_training(model2)
    load_module_state(tmp_path / "ck", model2, expected_config=CONFIG)
    got_extra, got_tensors = load_training_state(tmp_path / "ck", opt2, sched2)
    assert got_extra == extra
    gen2 = torch.Generator()
    gen2.set_state(got_tensors["data_gen"])

    draw = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen2))
    assert torch.equal(draw[0], expected_draw[0])
    assert draw[1] == expected_draw[1] and draw[2] == expected_draw[2]
    assert torch.equal(draw[3], expected_draw[3])

    assert sched2.state_dict() == sched_state

    from safetensors.torch import load_file  # tensors are named as documented

    names = set(load_file(str(tmp_path / "ck" / "training_state.safetensors")))
    assert {"optimizer.state.0.exp_avg", "optimizer.state.0.exp_avg_sq", "optimizer.state.0.step"} <= names

    train_step(model2, opt2, sched2, x, y)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def test_truncated_model_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(PhaseLMError) as exc:
        load_module_state(path, make_model())
    msg = assert_one_line(exc)
    assert "incomplete or truncated" in msg and "model.safetensors" in msg and str(path) in msg
    assert not is_checkpoint(path)


def test_corrupt_model_file_same_size(tmp_path: Path) -> None:
    # The manifest sizes match, so the safetensors parser itself must fail and be translated.
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    f = path / "model.safetensors"
    f.write_bytes(b"\xff" * f.stat().st_size)
    with pytest.raises(PhaseLMError, match=r"model\.safetensors") as exc:
        load_module_state(path, make_model())
    assert_one_line(exc)


def test_missing_complete_marker(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    (path / "COMPLETE").unlink()
    with pytest.raises(PhaseLMError, match="incomplete or truncated") as exc:
        load_config(path)
    assert "COMPLETE" in assert_one_line(exc)


def test_missing_directory_and_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(PhaseLMError, match="no checkpoint at") as exc:
        load_config(tmp_path / "nope")
    assert_one_line(exc)

    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    (path / "config.json").write_text('{"format": "other-v9", "n_oscillators": 1.0}')
    # Keep the manifest consistent so the format check is what fails.
    import hashlib
    import json

    manifest = json.loads((path / "COMPLETE").read_text())
    manifest["files"]["config.json"] = (path / "config.json").stat().st_size
    manifest["sha256"]["config.json"] = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    (path / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(PhaseLMError, match="format") as exc:
        load_config(path)
    assert_one_line(exc)


def test_config_mismatch_names_key(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    asked = {**CONFIG, "n_oscillators": 32, "lr": 0.1}
    with pytest.raises(PhaseLMError) as exc:
        load_module_state(path, make_model(), expected_config=asked, config_keys=["d_model", "n_oscillators"])
    msg = assert_one_line(exc)
    assert "n_oscillators=16" in msg and "asks for 32" in msg and str(path) in msg
    # Only the listed keys are compared: "lr" differs but is not checked.
    load_module_state(path, make_model(), expected_config=asked, config_keys=["d_model"])


def test_shape_mismatch_and_key_mismatch(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", make_model(hidden=16), CONFIG)
    with pytest.raises(PhaseLMError) as exc:
        load_module_state(path, make_model(hidden=32))
    msg = assert_one_line(exc)
    assert "0.weight" in msg and "(16, 8)" in msg and "(32, 8)" in msg

    with pytest.raises(PhaseLMError, match=r"missing tensors 4\.weight") as exc:
        load_module_state(path, nn.Sequential(*make_model(), nn.Linear(4, 4)))
    assert_one_line(exc)


def test_failed_save_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    old_model = make_model()
    target = tmp_path / "ck"
    save_checkpoint(target, old_model, CONFIG)

    def boom(*args, **kwargs):
        assert any(p.name.startswith(".ck.tmp-") for p in tmp_path.iterdir())  # temp dir exists
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, make_model(), {**CONFIG, "n_oscillators": 99})
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # temp dir cleaned up
    fresh = make_model()
    assert load_module_state(target, fresh) == CONFIG
    x = torch.randn(2, 8)
    assert torch.equal(fresh(x), old_model(x))

    # A successful overwrite replaces it and leaves no aside copy behind.
    save_checkpoint(target, make_model(), {**CONFIG, "n_oscillators": 99})
    assert load_config(target)["n_oscillators"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    with pytest.raises(PhaseLMError, match=r"notes\.txt") as exc:
        save_checkpoint(tmp_path / "data", make_model(), CONFIG)
    assert_one_line(exc)
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_weights_only_checkpoint_has_no_training_state(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    with pytest.raises(PhaseLMError, match="no training state") as exc:
        load_training_state(path)
    assert_one_line(exc)


def test_latest_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    model = make_model()
    for step in (5, 120, 40):
        save_checkpoint(checkpoint_dir(run, step), model, CONFIG, extra={"step": step})
    assert checkpoint_dir(run, 120) == run / "checkpoints" / "step-000120"
    assert latest_checkpoint(run) == checkpoint_dir(run, 120)

    # A newer but incomplete checkpoint (no COMPLETE) and stray entries are ignored.
    broken = save_checkpoint(checkpoint_dir(run, 200), model, CONFIG)
    (broken / "COMPLETE").unlink()
    (run / "checkpoints" / ".step-000300.tmp-abc").mkdir()
    (run / "checkpoints" / "notes").mkdir()
    assert latest_checkpoint(run) == checkpoint_dir(run, 120)
    extra, _ = load_training_state(latest_checkpoint(run), restore_rng=False)
    assert extra == {"step": 120}


def test_source_never_deserialises_objects() -> None:
    import phaselm.atomic
    import phaselm.training_state

    for module in (ckpt, phaselm.training_state, phaselm.atomic):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert "torch.load" not in source
        assert "pickle" not in source.lower()


def test_a_same_size_edit_is_caught_by_the_content_hash(tmp_path: Path) -> None:
    """Flipping a tensor header's F32 to I32 keeps the file's size; the SHA-256 catches it."""
    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    data = (path / "model.safetensors").read_bytes()
    assert b'"F32"' in data
    (path / "model.safetensors").write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    assert is_checkpoint(path)  # listing checks sizes only: still looks complete
    with pytest.raises(PhaseLMError, match=r"model\.safetensors changed after it was written") as exc:
        load_module_state(path, make_model(), expected_config=CONFIG)
    assert_one_line(exc)


def test_a_killed_save_leaves_no_temporary_folder_behind_the_next_save(tmp_path: Path) -> None:
    stale = tmp_path / "checkpoints" / ".step-000004.tmp-deadbeef0000"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path / "checkpoints" / "step-000008", make_model(), CONFIG)
    assert not stale.exists() and is_checkpoint(tmp_path / "checkpoints" / "step-000008")


def test_checkpoints_without_hashes_still_load(tmp_path: Path) -> None:
    """Written before content hashes existed: the size check alone applies."""
    import json

    path = save_checkpoint(tmp_path / "ck", make_model(), CONFIG)
    manifest = json.loads((path / "COMPLETE").read_text())
    del manifest["sha256"]
    (path / "COMPLETE").write_text(json.dumps(manifest))
    load_module_state(path, make_model(), expected_config=CONFIG)
