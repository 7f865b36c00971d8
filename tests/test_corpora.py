"""Corpora (phaselm.corpora): the embedded corpus, files, folders, Gutenberg stripping, hf: datasets,
one-line errors."""

from __future__ import annotations

import sys
import types

import pytest

from phaselm.corpora import load_text, strip_gutenberg


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text()


def test_embedded_corpus(shakespeare):
    assert 1_000_000 < len(shakespeare) < 1_200_000
    assert shakespeare.startswith("First Citizen:")
    assert load_text("tinyshakespeare") == shakespeare


def test_file_and_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not a txt", encoding="utf-8")
    assert load_text(tmp_path / "a.txt") == "first"
    assert load_text(str(tmp_path / "a.txt")) == "first"
    # sorted by path: a.txt < b/two.txt; blank files and non-.txt files are skipped
    assert load_text(tmp_path) == "first\n\nsecond"


def test_gutenberg_stripping(tmp_path):
    book = (
        "The Project Gutenberg eBook of Hamlet\nLicense blah\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n\n"
        "ACT I\nWho's there?\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nMore license text\n"
    )
    assert strip_gutenberg(book) == "ACT I\nWho's there?"
    assert strip_gutenberg("no markers here") == "no markers here"
    (tmp_path / "hamlet.txt").write_text(book, encoding="utf-8")
    text = load_text(tmp_path / "hamlet.txt")
    assert text == "ACT I\nWho's there?"
    assert "Gutenberg" not in text and "License" not in text


def test_missing_path(tmp_path, raises_phaselm):
    with raises_phaselm("corpus not found"):
        load_text(tmp_path / "nope.txt")


def test_empty_file_and_folders(tmp_path, raises_phaselm):
    (tmp_path / "empty.txt").write_text(" \n\t\n", encoding="utf-8")
    with raises_phaselm("empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.md").write_text("x", encoding="utf-8")
    with raises_phaselm("no .txt files"):
        load_text(tmp_path / "nothing")


def test_not_utf8(tmp_path, raises_phaselm):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with raises_phaselm("not UTF-8"):
        load_text(tmp_path / "latin1.txt")


def test_hf_without_datasets(monkeypatch, raises_phaselm):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with raises_phaselm("datasets"):
        load_text("hf:wikitext/wikitext-103-raw-v1")


def test_hf_offline(monkeypatch, raises_phaselm):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nTraceback-ish second line\nthird")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with raises_phaselm(r"cannot load dataset 'wikitext/wikitext-103-raw-v1'.*offline"):
        load_text("hf:wikitext/wikitext-103-raw-v1")


def test_hf_train_text_column(monkeypatch, raises_phaselm):
    calls = []

    class FakeSplit(dict):
        column_names = ("text",)

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeSplit(text=["line one", "", "line two"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_text("hf:wikitext/wikitext-2-raw-v1") == "line one\n\nline two"
    assert load_text("hf:tiny") == "line one\n\nline two"
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train"), ("tiny", None, "train")]
    with raises_phaselm("bad Hugging Face corpus"):
        load_text("hf:")
