"""Training checkpoints stored as safetensors + JSON only.

Nothing here deserialises arbitrary Python objects: every tensor lives in a safetensors file
and everything else is plain JSON, so opening a checkpoint from someone else can never run
their code.

A checkpoint is a directory::

    model.safetensors          the module's state_dict
    config.json                the caller's config plus {"format": "phaselm-checkpoint-v1"}
    training_state.safetensors optimizer / scheduler / RNG / caller tensors   (optional)
    training_state.json        the non-tensor rest, tensors referenced by name (optional)
    COMPLETE                   written last: JSON manifest of the files above, their sizes and SHA-256

Saves go to a hidden temporary sibling that is renamed into place only once ``COMPLETE`` is
written, so an interrupted save leaves the previous checkpoint untouched; a temporary folder
left by a killed save is removed by the next save. Sizes are checked whenever a checkpoint is
listed; the SHA-256 of each file is checked before it is read, so an edit that keeps a file's
size (a changed tensor header, flipped bytes) is refused instead of resuming from corrupted
weights. Checkpoints written before hashes were recorded load with the size check alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import fsync_dir, fsync_file, replace_directory, temporary_sibling, write_text
from .errors import PhaseLMError
from .training_state import FORMAT, decode, encode_training_state, json_text, prepare_tensors, restore_rng_states

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_TENSORS_FILE = "training_state.safetensors"
STATE_JSON_FILE = "training_state.json"
COMPLETE_FILE = "COMPLETE"
_KNOWN_FILES = {MODEL_FILE, CONFIG_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE, COMPLETE_FILE}
_STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint for ``step`` of a run lives: ``run_dir/checkpoints/step-000120``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise PhaseLMError(f"checkpoint step must be a non-negative integer, got {step!r}; pass the training step")
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds a complete checkpoint (manifest and file sizes check out)."""
    try:
        _require_complete(Path(directory))
    except PhaseLMError:
        return False
    return True


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete ``run_dir/checkpoints/step-N`` with the highest N, or None if there is none.

    Incomplete directories are skipped so a crash during a save falls back to the one before.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and is_checkpoint(entry):
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, entry)
    return best[1] if best else None


def save_checkpoint(
    directory: str | os.PathLike,
    module: nn.Module,
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    *,
    module_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Atomically write a checkpoint of ``module`` (plus optional training state) to ``directory``.

    The training state (optimizer, scheduler, RNG states, ``extra``, ``extra_tensors``) is
    written when any of optimizer / scheduler / extra / extra_tensors is given; RNG states are
    captured with it. ``module_state`` / ``optimizer_state``, when given, are written instead of
    ``module.state_dict()`` / ``optimizer.state_dict()`` (the full state gathered from sharded
    training, so the checkpoint is the same as an unsharded run's). Returns the checkpoint path.
    """
    target = Path(directory)
    _check_target(target)

    # Encode everything before touching the disk, so bad input never leaves debris behind.
    if not isinstance(config, dict):
        raise PhaseLMError(
            f"checkpoint config for {target} must be a dict, got {type(config).__name__}; "
            "pass the model config as a dict"
        )
    if "format" in config:
        raise PhaseLMError(
            f"checkpoint config for {target} must not contain the reserved key 'format'; "
            "rename that key"
        )
    config_text = json_text({"format": FORMAT, **config}, f"config for {target}")
    model_tensors = prepare_tensors(module_state if module_state is not None else module.state_dict())

    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    with_state = any(x is not None for x in (optimizer_state, scheduler, extra, extra_tensors))
    if with_state:
        state_json, state_tensors = encode_training_state(target, optimizer_state, scheduler, extra, extra_tensors)
        state_text = json_text(state_json, f"training state for {target}")

    target.parent.mkdir(parents=True, exist_ok=True)
    # One process writes a run's checkpoints, so a temporary folder already here was left by a
    # save that was killed: nothing will ever finish it.
    for stale in target.parent.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = temporary_sibling(target)
    try:
        save_file(model_tensors, str(tmp / MODEL_FILE))
        fsync_file(tmp / MODEL_FILE)
        write_text(tmp / CONFIG_FILE, config_text)
        if with_state:
            save_file(state_tensors, str(tmp / STATE_TENSORS_FILE))
            fsync_file(tmp / STATE_TENSORS_FILE)
            write_text(tmp / STATE_JSON_FILE, state_text)
        # Sizes catch a truncation before any file is parsed; hashes catch any other change.
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        hashes = {name: _sha256(tmp / name) for name in files}
        write_text(tmp / COMPLETE_FILE, json.dumps({"format": FORMAT, "files": files, "sha256": hashes}, indent=2))
        fsync_dir(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_config(directory: str | os.PathLike) -> dict:
    """The caller's config saved with the checkpoint (without the format marker).

    Checks first that the checkpoint is complete and in the expected format.
    """
    return _require_complete(Path(directory))


def load_module_state(
    directory: str | os.PathLike,
    module: nn.Module,
    expected_config: dict | None = None,
    config_keys: Iterable[str] | None = None,
) -> dict:
    """Load the saved weights into ``module`` (strictly) and return the saved config.

    With ``expected_config``, the values of ``config_keys`` (default: every key of
    ``expected_config``) must equal the saved ones; the first difference is reported.
    """
    path = Path(directory)
    config = _require_complete(path)

    if expected_config is not None:
        keys = list(config_keys) if config_keys is not None else list(expected_config)
        for key in keys:
            if key not in expected_config:
                continue  # nothing to compare against
            want = _json_normalise(expected_config[key])
            if key not in config:
                raise PhaseLMError(
                    f"checkpoint {path} was saved without {key} but the config asks for {_show(want)}; "
                    "use the matching recipe or a new output directory"
                )
            if config[key] != want:
                raise PhaseLMError(
                    f"checkpoint {path} was saved with {key}={_show(config[key])} but the config asks for "
                    f"{_show(want)}; use the matching recipe or a new output directory"
                )

    saved = _load_safetensors(path, MODEL_FILE)
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_names(unexpected)}")
        raise PhaseLMError(
            f"checkpoint {path} does not match the model ({'; '.join(parts)}); "
            "build the model from the checkpoint's config or use a new output directory"
        )
    for name, tensor in expected.items():
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise PhaseLMError(
                f"checkpoint {path} stores tensor {name} with shape {tuple(saved[name].shape)} but the model "
                f"expects {tuple(tensor.shape)}; "
                "build the model from the checkpoint's config or use a new output directory"
            )
    module.load_state_dict(saved, strict=True)
    return config


def load_training_state(
    directory: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    adapt_optimizer_state: Callable[[dict], dict] | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore optimizer / scheduler / RNG states; return ``(extra, extra_tensors)``.

    Load the module weights first (``load_module_state``) so the optimizer's state is cast to
    the parameters' device and dtype. ``adapt_optimizer_state`` maps the saved (full) optimizer
    state dict before it is loaded, e.g. to this process's shards under sharded training.
    """
    path = Path(directory)
    _require_complete(path)
    manifest = _read_manifest(path)
    if STATE_JSON_FILE not in manifest or STATE_TENSORS_FILE not in manifest:
        raise PhaseLMError(
            f"checkpoint {path} has no training state ({STATE_JSON_FILE}); it holds weights only: "
            "start a fresh run from it or resume from a full checkpoint"
        )
    try:
        _verify_content(path, STATE_JSON_FILE)
        state = json.loads((path / STATE_JSON_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise _incomplete(path, STATE_JSON_FILE) from None
    if not isinstance(state, dict):
        raise _incomplete(path, STATE_JSON_FILE)
    tensors = _load_safetensors(path, STATE_TENSORS_FILE)
    try:
        decoded = decode(state, tensors)
    except KeyError:
        raise _incomplete(path, STATE_TENSORS_FILE) from None

    if optimizer is not None:
        if decoded.get("optimizer") is None:
            raise PhaseLMError(
                f"checkpoint {path} was saved without optimizer state; "
                "resume without an optimizer or from another checkpoint"
            )
        saved_state = decoded["optimizer"]
        try:
            optimizer.load_state_dict(adapt_optimizer_state(saved_state) if adapt_optimizer_state else saved_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise PhaseLMError(
                f"checkpoint {path} holds optimizer state that does not fit this optimizer ({_one_line(exc)}); "
                "build the optimizer over the same parameters as when saving"
            ) from None
    if scheduler is not None:
        if decoded.get("scheduler") is None:
            raise PhaseLMError(
                f"checkpoint {path} was saved without scheduler state; "
                "resume without a scheduler or from another checkpoint"
            )
        scheduler.load_state_dict(decoded["scheduler"])
    if restore_rng:
        restore_rng_states(decoded.get("rng") or {})
    return decoded.get("extra") or {}, decoded.get("extra_tensors") or {}


# --------------------------------------------------------------------------------------------
# saving helpers
# --------------------------------------------------------------------------------------------


def _check_target(target: Path) -> None:
    """Refuse to replace anything that is not a checkpoint: the swap deletes the old directory."""
    if target.exists() and not target.is_dir():
        raise PhaseLMError(f"cannot save a checkpoint to {target}: it is a file; pick a directory path")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in _KNOWN_FILES)
        if foreign:
            raise PhaseLMError(
                f"cannot save a checkpoint to {target}: it holds files that are not part of a checkpoint "
                f"({_names(foreign)}); pick another directory"
            )


# --------------------------------------------------------------------------------------------
# loading helpers
# --------------------------------------------------------------------------------------------


def _incomplete(path: Path, file: str) -> PhaseLMError:
    return PhaseLMError(
        f"checkpoint {path} is incomplete or truncated ({file}): "
        "re-save it or pick an earlier checkpoint"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path, hashes: bool = False) -> dict:
    """The manifest's {file: size}, or with ``hashes`` its {file: sha256} ({} for old checkpoints)."""
    try:
        manifest = json.loads((path / COMPLETE_FILE).read_text(encoding="utf-8"))
        files = manifest.get("sha256", {}) if hashes else manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise _incomplete(path, COMPLETE_FILE) from None
    return files


def _verify_content(path: Path, file: str) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded when it was written."""
    expected = _read_manifest(path, hashes=True).get(file)
    if expected is not None and _sha256(path / file) != expected:
        raise PhaseLMError(
            f"checkpoint {path}: {file} changed after it was written (its SHA-256 no longer matches); "
            "restore it, or resume from an earlier checkpoint"
        )


def _require_complete(path: Path) -> dict:
    """Check marker, manifest sizes and format; return the caller's config."""
    if not path.exists():
        raise PhaseLMError(f"no checkpoint at {path}; check the path or train a model first")
    if not path.is_dir():
        raise PhaseLMError(
            f"no checkpoint at {path}: it is a file, not a checkpoint directory; "
            "pass the checkpoint directory"
        )
    for file, size in _read_manifest(path).items():
        actual = path / file
        if not actual.is_file() or actual.stat().st_size != size:
            raise _incomplete(path, file)
    for file in (MODEL_FILE, CONFIG_FILE):
        if not (path / file).is_file():
            raise _incomplete(path, file)
    _verify_content(path, CONFIG_FILE)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise _incomplete(path, CONFIG_FILE) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise PhaseLMError(
            f"checkpoint {path} has format {found!r}, expected {FORMAT!r} in {CONFIG_FILE}; "
            "re-save it with this version of phaselm"
        )
    config = dict(config)
    del config["format"]
    return config


def _load_safetensors(path: Path, file: str) -> dict[str, torch.Tensor]:
    _verify_content(path, file)
    # safetensors raises its own error type for corrupt headers; any failure means a bad file.
    try:
        return load_file(str(path / file), device="cpu")
    except Exception:
        raise _incomplete(path, file) from None


def _json_normalise(value: Any) -> Any:
    """What ``value`` looks like after a JSON round trip (tuples -> lists), for comparisons."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    text = _one_line(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _one_line(obj: Any) -> str:
    return " ".join(str(obj).split())
