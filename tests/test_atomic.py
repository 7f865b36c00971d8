"""All-or-nothing writes: a replaced file or folder is either the old one or the new one."""

from __future__ import annotations

import os

import pytest

from phaselm import atomic


def test_replace_file_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "summary.json"
    atomic.replace_json(target, {"steps": 4})
    atomic.replace_json(target, {"steps": 8})
    assert target.read_text(encoding="utf-8") == '{\n  "steps": 8\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_replace_directory_swaps_a_folder_and_keeps_the_old_one_if_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    new = atomic.temporary_sibling(target)
    (new / "weights").write_text("new")
    atomic.replace_directory(new, target)
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    newer = atomic.temporary_sibling(target)
    (newer / "weights").write_text("newer")
    real_replace = os.replace

    def fail_on_the_swap(src, dst):
        if str(src) == str(newer):
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_the_swap)
    with pytest.raises(OSError, match="disk gone"):
        atomic.replace_directory(newer, target)
    assert (target / "weights").read_text() == "new"  # the previous folder is back
