"""Where evals write: output folders, JSON, plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PhaseLMError


def prepare_outputs(out_dir: str | os.PathLike | None, name: str,
                    suffixes: Sequence[str] = (".json", ".png")) -> dict[str, Path] | None:
    """The files an eval will write; refuses (before any work) to overwrite existing ones."""
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PhaseLMError(f"--out {out_dir} is a file; choose a directory")
    files = {s.lstrip("."): out_dir / f"{name}{s}" for s in suffixes}
    existing = [p for p in files.values() if p.exists()]
    if existing:
        raise PhaseLMError(f"{out_dir} already holds {existing[0].name} from an earlier `{name}` eval; choose another "
                           "--out")
    return files


def jsonable(value):
    """A copy fit for json.dump: numpy scalars and arrays as Python values, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_outputs(files: dict[str, Path] | None, result: dict, plot) -> dict:
    """Draw the plot and write the JSON (atomically); returns the final, JSON-clean result."""
    from ..reporting import machine_description

    result["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = machine_description()
    if files is not None:
        files["json"].parent.mkdir(parents=True, exist_ok=True)
        result["files"] = {k: str(v) for k, v in files.items()}
        plot(files["png"])
        if "md" in files:
            files["md"].write_text(result["markdown"] + "\n", encoding="utf-8")
    result = jsonable(result)
    if files is not None:
        tmp = files["json"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, files["json"])
    return result


def eval_progress(enabled: bool):
    """The project's progress bar on stderr (:func:`phaselm.training.progress_bar`), hidden unless ``enabled``."""
    from ..training import progress_bar as project_progress

    return project_progress(enabled)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put the model in eval mode for the block; restore training mode after if it was on."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if getattr(cfg, "model_type", "") == "kssm":
        return cfg.max_position_embeddings if cfg.position_embedding else None
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def check_positions(model: nn.Module, length: int, what: str) -> None:
    """One-line error when ``length`` exceeds the model's position limit, if it has one."""
    limit = _max_positions(model)
    if limit is not None and length > limit:
        raise PhaseLMError(f"{what} needs {length} positions but the model allows {limit}; use fewer tokens")
