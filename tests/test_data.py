"""Corpora, tokenizers and batches (phaselm.data): loading, round-trips, one-line errors."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from phaselm import data
from phaselm.data import (
    BPETokenizer,
    CharTokenizer,
    PretrainedTokenizer,
    build_tokenizer,
    check_length,
    encode_corpus,
    encode_split,
    learn_tokenizer,
    load_text,
    load_tokenizer,
    random_batch,
    sequential_batches,
    strip_gutenberg,
    train_val_split,
)

UNICODE = "héllo wörld — ∮ E⋅da = Q 🐍🚀 日本語\t tabs\r\n  leading spaces\x00 nul ﬁ e\u0301 <|endoftext|>"
SAMPLE = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
) * 40  # ~7 KB


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text()


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(SAMPLE + UNICODE, vocab_size=300)


# ---- corpora -------------------------------------------------------------------------------


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
        column_names = ["text"]

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeSplit(text=["line one", "", "line two"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_text("hf:wikitext/wikitext-2-raw-v1") == "line one\n\nline two"
    assert load_text("hf:tiny") == "line one\n\nline two"
    assert calls == [("wikitext", "wikitext-2-raw-v1", "train"), ("tiny", None, "train")]
    with raises_phaselm("bad Hugging Face corpus"):
        load_text("hf:")


# ---- tokenizers ----------------------------------------------------------------------------


def test_char_round_trip(shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    assert tok.kind == "char" and tok.vocab_size == 65  # nanoGPT shakespeare_char
    assert tok.chars == sorted(tok.chars)
    s = shakespeare[:5000]
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(torch.tensor(tok.encode(s))) == s


def test_char_unknown(raises_phaselm):
    tok = CharTokenizer.from_text("abc\n")
    with raises_phaselm(r"'🐍'.*retrain the tokenizer on a corpus that contains it"):
        tok.encode("ab🐍")
    with raises_phaselm("outside the char vocabulary"):
        tok.decode([0, 99])


def test_bpe_round_trip(bpe):
    assert bpe.kind == "bpe"
    assert 257 <= bpe.vocab_size <= 300
    for s in (SAMPLE, UNICODE, "", " ", "\n\n\n", "zzz never seen: ∀x∃y 🧪", " leading", "trailing  "):
        assert bpe.decode(bpe.encode(s)) == s
    # merges actually compress the training text
    assert len(bpe.encode(SAMPLE)) < 0.75 * len(SAMPLE.encode("utf-8"))


def test_bpe_long_text_chunks(bpe, monkeypatch):
    monkeypatch.setattr(data, "_BPE_CHUNK_CHARS", 50)
    text = SAMPLE[:700] + UNICODE + "x" * 130  # forces newline cuts and one mid-line cut
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_vocab_too_small(raises_phaselm):
    with raises_phaselm("too small"):
        BPETokenizer.train(SAMPLE, vocab_size=100)


def test_save_load_round_trip(tmp_path, bpe, shakespeare):
    char = CharTokenizer.from_text(shakespeare)
    for tok in (char, bpe):
        folder = tmp_path / tok.kind
        tok.save(folder)
        assert (folder / data.META_FILE).is_file()
        again = load_tokenizer(folder)
        assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
        text = shakespeare[:3000]
        assert again.encode(text) == tok.encode(text)
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()


def test_load_tokenizer_errors(tmp_path, raises_phaselm):
    with raises_phaselm("tokenizer_meta.json"):
        load_tokenizer(tmp_path)
    (tmp_path / data.META_FILE).write_text('{"kind": "wordpiece"}', encoding="utf-8")
    with raises_phaselm("unknown tokenizer kind"):
        load_tokenizer(tmp_path)


def test_pretrained_missing_path(tmp_path, raises_phaselm):
    with raises_phaselm("not found"):
        PretrainedTokenizer(tmp_path / "no_such_tokenizer")
    with raises_phaselm("not found"):
        PretrainedTokenizer(str(tmp_path / "no_such_tokenizer"))


def test_pretrained_local_folder(tmp_path, bpe):
    # A local save_pretrained folder, built offline from the BPE tokenizer above.
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=bpe._tok).save_pretrained(tmp_path / "hf")
    tok = PretrainedTokenizer(tmp_path / "hf")
    assert tok.kind == "pretrained" and tok.vocab_size == bpe.vocab_size
    assert tok.encode(SAMPLE[:500]) == bpe.encode(SAMPLE[:500])
    assert tok.decode(tok.encode(SAMPLE[:500])) == SAMPLE[:500]
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, PretrainedTokenizer) and again.encode(UNICODE) == tok.encode(UNICODE)


def test_build_tokenizer(raises_phaselm):
    assert build_tokenizer("char", "abc").vocab_size == 3
    assert build_tokenizer("bpe", SAMPLE, vocab_size=280).kind == "bpe"
    with raises_phaselm(r"unknown tokenizer kind 'word'.*char, bpe, pretrained"):
        build_tokenizer("word", SAMPLE)
    with raises_phaselm("needs a name or folder"):
        build_tokenizer("pretrained", SAMPLE)


# ---- streams and batches -------------------------------------------------------------------


def test_encode_corpus():
    tok = CharTokenizer.from_text("hello")
    ids = encode_corpus(tok, "hello")
    assert ids.dtype == torch.long and ids.dim() == 1 and ids.tolist() == tok.encode("hello")


def test_split_proportions():
    ids = torch.arange(1000)
    train, val = train_val_split(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert train.dtype == torch.long and train.dim() == 1
    assert torch.equal(torch.cat([train, val]), ids)  # train first, val is the tail
    train, val = train_val_split(ids, 0.25)
    assert (len(train), len(val)) == (750, 250)


def test_split_bad_fraction(raises_phaselm):
    with raises_phaselm("val_fraction"):
        train_val_split(torch.arange(10), 1.0)
    with raises_phaselm("val_fraction"):
        encode_split(CharTokenizer.from_text("ab"), "abab", -0.1)


def test_text_split_equals_the_stream_split_for_chars(shakespeare):
    tokenizer = learn_tokenizer("char", shakespeare[:5000], 0.1)
    train, val = encode_split(tokenizer, shakespeare[:5000], 0.1)
    old_train, old_val = train_val_split(encode_corpus(tokenizer, shakespeare[:5000]), 0.1)
    assert torch.equal(train, old_train) and torch.equal(val, old_val)
    train, val = encode_split(tokenizer, shakespeare[:5000], 0.0)
    assert len(train) == 5000 and val.numel() == 0 and val.dtype == torch.long


def test_bpe_learns_from_the_training_text_only():
    """A word that occurs only in the validation part gets no merges of its own."""
    train_part = "the cat sat on the mat. " * 200
    text = train_part + "zyxwvq " * 40  # the validation tenth: one made-up word, many times
    cut = len(train_part)
    val_fraction = 1 - cut / len(text)
    learned = learn_tokenizer("bpe", text, val_fraction, vocab_size=300)
    leaky = build_tokenizer("bpe", text, vocab_size=300)
    assert len(leaky.encode(" zyxwvq")) <= 2 < len(learned.encode(" zyxwvq"))
    train, val = encode_split(learned, text, val_fraction)
    assert learned.decode(train) == train_part and learned.decode(val) == text[cut:]
    char = learn_tokenizer("char", text, val_fraction)
    assert set("zyxwvq") <= set(char.decode(range(char.vocab_size)))  # the alphabet is the whole text's


def test_check_length(raises_phaselm):
    check_length(torch.arange(9), 8)  # exactly seq_len + 1: fine
    with raises_phaselm(r"the training split has 8 tokens.*9.*smaller seq_len"):
        check_length(torch.arange(8), 8)
    with raises_phaselm("the validation split has 3 tokens"):
        check_length(torch.arange(3), 8, what="validation split")


def test_random_batch():
    ids = torch.randint(0, 50, (500,))
    gen = torch.Generator().manual_seed(1)
    x, y = random_batch(ids, 4, 16, gen)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.arange(500) * 3  # distinct values: each row's start is recoverable
    x, y = random_batch(stream, 8, 10, torch.Generator().manual_seed(2))
    for row_x, row_y in zip(x, y):
        s = int(row_x[0]) // 3
        assert torch.equal(row_x, stream[s : s + 10]) and torch.equal(row_y, stream[s + 1 : s + 11])
    # same seed, same batch
    a = random_batch(ids, 4, 16, torch.Generator().manual_seed(7))
    b = random_batch(ids, 4, 16, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0])


def test_random_batch_too_short(raises_phaselm):
    with raises_phaselm("fewer than one sequence"):
        random_batch(torch.arange(5), 2, 8, torch.Generator())


def test_sequential_batches():
    stream = torch.arange(43)
    batches = list(sequential_batches(stream, batch_size=3, seq_len=5))
    # (43 - 1) // 5 = 8 windows → batches of 3, 3, 2
    assert [b[0].shape[0] for b in batches] == [3, 3, 2]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(xs.reshape(-1), stream[:40])
    assert torch.equal(ys.reshape(-1), stream[1:41])
    assert xs.dtype == torch.long


def test_sequential_batches_too_short(raises_phaselm):
    with raises_phaselm("validation split has 4 tokens"):
        list(sequential_batches(torch.arange(4), 2, 8))
