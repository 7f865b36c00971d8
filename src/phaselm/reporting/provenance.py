"""Provenance: software versions and git commit, recorded when a run writes its report."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import PhaseLMError
from .common import VERSION_PACKAGES


def machine_description() -> str:
    """Platform, CPU count, Python and torch versions, and the CUDA device if there is one."""
    parts = [platform.platform(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"CUDA device: {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no CUDA device")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of phaselm and the libraries it computes with."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        import torch

        versions["torch"] = torch.__version__  # carries the build tag (+cpu, +cu126)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return versions


def git_commit(where: str | os.PathLike | None = None) -> dict | None:
    """{"commit", "dirty"} of the git checkout holding ``where`` (default: phaselm's own source),
    or None when it is not in a checkout or git is not installed."""
    import subprocess

    where = str(where or Path(__file__).resolve().parent)

    def git(*args: str):
        try:
            done = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance_record(title: str | None, commands: list[str] | None) -> dict:
    """What provenance.json holds: title, commands, time written, machine, software, git commit."""
    return {
        "title": title,
        "commands": list(commands or []),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "software": software_versions(),
        "git": git_commit(),
    }


def read_json(path: Path) -> Any:
    """The JSON value in a UTF-8 file."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_optional_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None when there is no file; PhaseLMError when it is not an object."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PhaseLMError(f"{path}: not valid JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise PhaseLMError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
