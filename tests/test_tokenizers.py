"""Tokenizers (phaselm.tokenizers): round trips, save/load, pretrained folders, learning from the training part,
one-line errors."""

from __future__ import annotations

import pytest
import torch

from phaselm import tokenizers
from phaselm.corpora import load_text
from phaselm.data import encode_split
from phaselm.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    PretrainedTokenizer,
    build_tokenizer,
    learn_tokenizer,
    load_tokenizer,
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
    monkeypatch.setattr(tokenizers, "_BPE_CHUNK_CHARS", 50)
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
        assert (folder / tokenizers.META_FILE).is_file()
        again = load_tokenizer(folder)
        assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
        text = shakespeare[:3000]
        assert again.encode(text) == tok.encode(text)
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()


def test_load_tokenizer_errors(tmp_path, raises_phaselm):
    with raises_phaselm("tokenizer_meta.json"):
        load_tokenizer(tmp_path)
    (tmp_path / tokenizers.META_FILE).write_text('{"kind": "wordpiece"}', encoding="utf-8")
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
