"""Writes that are all or nothing: a file or a folder appears complete or not at all.

Data is fsync'd before the rename that publishes it (or a power cut could expose zeros), and a
folder that replaces another one is swapped in by renames, the old one deleted only afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) and fsync it; not atomic by itself (write into a
    temporary folder that is then swapped in, or use :func:`replace_file`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_file(path: Path, text: str) -> None:
    """Atomically make ``path`` hold ``text``: written beside it, fsync'd, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        write_text(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_json(path: Path, data: dict) -> None:
    """Atomically write ``data`` as indented UTF-8 JSON to ``path``."""
    replace_file(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def fsync_file(path: Path) -> None:
    """Flush a file written by another library (safetensors) to disk before it is published."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(target: Path) -> Path:
    """A fresh hidden folder beside ``target`` to build its replacement in (``.NAME.tmp-XXXX``)."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    return tmp


def replace_directory(tmp: Path, target: Path) -> None:
    """Rename the folder ``tmp`` to ``target``; an existing target is moved aside first and
    deleted only once ``tmp`` is in place (put back if the rename fails)."""
    old = None
    if target.exists():
        # os.replace cannot overwrite a non-empty directory, so the old one steps aside first.
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)  # put the previous folder back
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
