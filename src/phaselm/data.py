"""Token streams and batches (nanoGPT conventions).

``encode_split`` → training and validation 1-D LongTensors (the text split on its characters
first), ``random_batch`` for training and ``sequential_batches`` for deterministic validation.
Corpora live in :mod:`phaselm.corpora`, tokenizers in :mod:`phaselm.tokenizers`.

Every mistake a user can fix raises :class:`~phaselm.errors.PhaseLMError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Corpora and tokenizers used to live here; scripts and notebooks import them from phaselm.data.
from .corpora import EMBEDDED_CORPUS, load_text, split_text, strip_gutenberg  # noqa: F401  (re-exported)
from .errors import PhaseLMError
from .tokenizers import (  # noqa: F401  (re-exported)
    HF_TOKENIZER_FILE,
    META_FILE,
    TOKENIZER_KINDS,
    BPETokenizer,
    CharTokenizer,
    PretrainedTokenizer,
    Tokenizer,
    build_tokenizer,
    learn_tokenizer,
    load_tokenizer,
    looks_like_path,
)


def encode_corpus(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """The whole corpus as one 1-D LongTensor of token ids."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if ids.numel() == 0:
        raise PhaseLMError("the corpus encodes to no tokens; pass a non-empty corpus")
    return ids


def _check_stream(ids: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise PhaseLMError("token ids must be a 1-D tensor; build them with encode_corpus()")


def train_val_split(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``1 - val_fraction`` of the stream trains, the rest validates (nanoGPT convention).

    A contiguous tail rather than random windows keeps validation text unseen in training.
    """
    _check_stream(ids)
    if not 0.0 <= val_fraction < 1.0:
        raise PhaseLMError(f"val_fraction {val_fraction} is out of range; use a value in [0, 1), e.g. 0.1")
    ids = ids.long()
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


def encode_split(tokenizer: Tokenizer, text: str, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and validation token streams of a corpus, split on its characters.

    Splitting the text (not the token stream) lets a tokenizer be learned from the training part
    alone (:func:`learn_tokenizer`), and no token straddles the boundary. For a char tokenizer
    it is the same split as :func:`train_val_split` of the whole stream.
    """
    train_text, val_text = split_text(text, val_fraction)
    train_ids = encode_corpus(tokenizer, train_text)
    if val_text:
        val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    else:
        val_ids = torch.zeros(0, dtype=torch.long)
    return train_ids, val_ids


def check_length(ids: torch.Tensor, seq_len: int, what: str = "training split") -> None:
    """Fail clearly when ``ids`` cannot hold one input/target window of ``seq_len + 1`` tokens."""
    if seq_len < 1:
        raise PhaseLMError(f"seq_len {seq_len} must be at least 1; set a positive seq_len")
    if len(ids) < seq_len + 1:
        raise PhaseLMError(
            f"the {what} has {len(ids)} tokens, fewer than one sequence of seq_len+1 = {seq_len + 1}; "
            "use a longer corpus or a smaller seq_len"
        )


def random_batch(
    ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: ``x = ids[s : s+T]``, ``y = ids[s+1 : s+T+1]``, shape (B, T)."""
    _check_stream(ids)
    check_length(ids, seq_len)
    if batch_size < 1:
        raise PhaseLMError(f"batch_size {batch_size} must be at least 1; set a positive batch_size")
    starts = torch.randint(len(ids) - seq_len, (batch_size,), generator=generator, device=generator.device)
    window = starts.to(ids.device)[:, None] + torch.arange(seq_len + 1, device=ids.device)
    chunk = ids[window].long()
    return chunk[:, :-1], chunk[:, 1:]


def sequential_batches(
    ids: torch.Tensor, batch_size: int, seq_len: int, what: str = "validation split"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows over the stream, in order, ``batch_size`` at a time.

    Deterministic, so validation losses are comparable between runs. The last batch may hold
    fewer windows; a tail shorter than one window is dropped.
    """
    _check_stream(ids)
    check_length(ids, seq_len, what=what)
    if batch_size < 1:
        raise PhaseLMError(f"batch_size {batch_size} must be at least 1; set a positive batch_size")
    n_windows = (len(ids) - 1) // seq_len  # each window needs one extra token for its last target
    used = n_windows * seq_len
    x_all = ids[:used].long().reshape(n_windows, seq_len)
    y_all = ids[1 : used + 1].long().reshape(n_windows, seq_len)
    for start in range(0, n_windows, batch_size):
        yield x_all[start : start + batch_size], y_all[start : start + batch_size]
