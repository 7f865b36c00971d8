"""A run directory: create a fresh one, check the one being resumed, and trim its metrics to the
resumed checkpoint. A run is never overwritten; a resumed recipe may change only what leaves the
model and the checkpoints as they are (``train.steps``, ``train.distributed``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import PhaseLMError

# Files that make a directory a run; a new run refuses a directory holding any of them. Other
# content (a backbone folder the demo pretrains beside, a user's notes) is left alone.
RUN_MARKERS = ("config.toml", "metrics.jsonl", "checkpoints", "summary.json", "report.md")


def holds_run(directory: Path) -> bool:
    """Does ``directory`` hold any file or folder a run writes (config.toml, metrics, checkpoints, ...)?"""
    return any((directory / name).exists() for name in RUN_MARKERS)


HOW_A_STEP_RUNS = ("distributed", "compile", "compile_mode")


def _differ_only_in_resumable_keys(old_text: str, new_text: str) -> bool:
    """Do the two recipes differ in ``train.steps`` (an integer in the new one), and in how the
    step runs (``train.distributed``, ``train.compile``, ``train.compile_mode``) alone? None of
    these changes the model or what a checkpoint holds (an older recipe may lack the keys)."""
    from .config import tomllib

    try:
        old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        return False
    if "kind" in new and "kind" not in old:  # a run written before runs recorded their kind
        old = {"kind": new["kind"], **old}
    old_train, new_train = dict(old.get("train", {})), dict(new.get("train", {}))
    for train_section in (old_train, new_train):
        for key in HOW_A_STEP_RUNS:
            train_section.pop(key, None)
    old_train.pop("steps", None)
    steps = new_train.pop("steps", None)
    return isinstance(steps, int) and {**old, "train": old_train} == {**new, "train": new_train}


def prepare_run_dir(run_dir: str | os.PathLike, config_text: str, resume: bool) -> Path:
    """Create a fresh run directory, or check the one being resumed. Never overwrites a run.

    A resumed run must have the same recipe, except that ``train.steps`` may change (extending
    a finished run) and so may how the step runs (``train.distributed``: an FSDP run resumes
    under DDP or on one process, and vice versa; ``train.compile``, ``train.compile_mode``):
    config.toml then records the new recipe. The cosine schedule follows the
    new length from the resumed step on, so the learning rate moves at the resume.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if resume:
        if not config_file.is_file():
            raise PhaseLMError(f"cannot resume {run_dir}: it holds no config.toml; start a new run without --resume")
        stored = config_file.read_text(encoding="utf-8")
        if stored != config_text:
            if not _differ_only_in_resumable_keys(stored, config_text):
                raise PhaseLMError(
                    f"cannot resume {run_dir}: its config.toml differs from this recipe in more than "
                    "train.steps and how the step runs (train.distributed, train.compile, train.compile_mode); resume "
                    "with the same recipe (those may change) "
                    "or start a new run in another directory"
                )
            config_file.write_text(config_text, encoding="utf-8")
        return run_dir
    if run_dir.exists() and (not run_dir.is_dir() or holds_run(run_dir)):
        raise PhaseLMError(
            f"run directory {run_dir} already holds a run; "
            "pass --resume to continue it or choose another --out"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file.write_text(config_text, encoding="utf-8")
    except OSError as exc:
        raise PhaseLMError(
            f"cannot create run directory {run_dir}: {exc.strerror or exc}; "
            "choose another --out"
        ) from None
    return run_dir


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records logged after the checkpoint being resumed, so no step appears twice; a line
    cut short by a kill during its write is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by an interrupted write
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
