"""Token streams and batches (phaselm.data): encoding, splits, windows, one-line errors."""

from __future__ import annotations

import pytest
import torch

from phaselm.corpora import load_text
from phaselm.data import check_length, encode_corpus, encode_split, random_batch, sequential_batches, train_val_split
from phaselm.tokenizers import CharTokenizer, learn_tokenizer


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text()


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
