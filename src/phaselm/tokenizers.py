"""Tokenizers: character-level, byte-level BPE (trained locally) and pretrained (Hugging Face),
sharing one protocol and saved as JSON only; :func:`learn_tokenizer` learns one from the training
part of a corpus.

(``from tokenizers import …`` below is the Hugging Face library: imports here are absolute.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .corpora import split_text
from .errors import PhaseLMError, one_line_reason

META_FILE = "tokenizer_meta.json"
TOKENIZER_KINDS = ("char", "bpe", "pretrained")


@runtime_checkable
class Tokenizer(Protocol):
    """What training and generation need from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int:
        """Number of ids: every id the tokenizer produces is in 0..vocab_size − 1."""

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, with no special tokens added."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list, or a tensor of any shape, read flat)."""

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer into ``directory`` as JSON (ours plus Hugging Face's files)."""


def _as_int_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    return ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]


def _write_meta(directory: str | os.PathLike, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


HF_TOKENIZER_FILE = "tokenizer.json"


def _write_hf_tokenizer(directory: Path, tokenizer) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json``: the folder opens with Hugging Face's
    ``AutoTokenizer`` (a ``PreTrainedTokenizerFast``) and ``pipeline``, with the same ids as ours."""
    tokenizer.save(str(directory / HF_TOKENIZER_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


class CharTokenizer:
    """One id per character: the sorted set of the corpus's characters (nanoGPT shakespeare_char)."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        if not self.chars or any(len(c) != 1 for c in self.chars) or len(set(self.chars)) != len(self.chars):
            raise PhaseLMError("a char tokenizer needs a non-empty list of distinct single characters; retrain it")
        self._stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """One id per distinct character of ``text``, in sorted order."""
        if not text:
            raise PhaseLMError("cannot build a char tokenizer from empty text; pass a non-empty corpus")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """One id per character of ``text``; a character outside the vocabulary is a PhaseLMError."""
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as exc:
            ch = exc.args[0]
            raise PhaseLMError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the char tokenizer's vocabulary "
                f"({self.vocab_size} characters); retrain the tokenizer on a corpus that contains it"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The characters of ``ids`` (a list, or a tensor of any shape, read flat)."""
        chars, n = self.chars, len(self.chars)
        ids = _as_int_list(ids)
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise PhaseLMError(
                f"token id {bad} is outside the char vocabulary (0..{n - 1}); "
                "decode ids from this tokenizer"
            )
        return "".join(chars[i] for i in ids)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the character list and an equivalent Hugging Face ``tokenizer.json`` into ``directory``."""
        directory = _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars})
        _write_hf_tokenizer(directory, self.as_hf())

    def as_hf(self):
        """The same tokenizer as a ``tokenizers.Tokenizer``: every character its own word-level token."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self.chars)}, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok


# Long texts are encoded in newline-aligned chunks, in parallel: one giant encode is slow and
# memory-hungry. Byte-level BPE without a prefix space decodes the chunk concatenation exactly.
_BPE_CHUNK_CHARS = 1 << 16


def _newline_chunks(text: str, size: int) -> list[str]:
    chunks, start = [], 0
    while start < len(text):
        stop = start + size
        if stop < len(text):
            cut = text.rfind("\n", start, stop)
            stop = cut + 1 if cut >= start else stop  # no newline in range: cut mid-line
        chunks.append(text[start:stop])
        start = stop
    return chunks


class BPETokenizer:
    """Byte-level BPE trained locally with the ``tokenizers`` library; saved as ``tokenizer.json``.

    Every string round-trips exactly: ``decode(encode(s)) == s`` (bytes, no prefix space, no
    special tokens that could swallow text).
    """

    kind = "bpe"
    FILE = HF_TOKENIZER_FILE

    def __init__(self, tokenizer):  # a tokenizers.Tokenizer
        self._tok = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 16000) -> BPETokenizer:
        """A byte-level BPE of ``vocab_size`` ids (at least 257) learned from ``text``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise PhaseLMError(
                f"BPE vocab_size {vocab_size} is too small: byte-level BPE needs at least 257 (256 bytes + merges)"
            )
        if not text:
            raise PhaseLMError("cannot train a BPE tokenizer on empty text; pass a non-empty corpus")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(_newline_chunks(text, _BPE_CHUNK_CHARS), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes plus the learned merges."""
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a long text is encoded in chunks cut after newlines."""
        if len(text) <= _BPE_CHUNK_CHARS:
            return self._tok.encode(text, add_special_tokens=False).ids
        encodings = self._tok.encode_batch(_newline_chunks(text, _BPE_CHUNK_CHARS), add_special_tokens=False)
        return [i for enc in encodings for i in enc.ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list, or a tensor of any shape, read flat); exact inverse of encode."""
        ids = _as_int_list(ids)
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise PhaseLMError(
                f"token id {bad} is outside the BPE vocabulary (0..{n - 1}); "
                "decode ids from this tokenizer"
            )
        return self._tok.decode(ids, skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` (and its Hugging Face config) into ``directory``."""
        directory = _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size})
        _write_hf_tokenizer(directory, self._tok)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BPETokenizer:
        """The BPE tokenizer :meth:`save` wrote into ``directory``."""
        from tokenizers import Tokenizer

        path = Path(directory) / cls.FILE
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:
            raise PhaseLMError(
                f"cannot read BPE tokenizer {path}: {one_line_reason(exc)}; "
                "save the tokenizer again"
            ) from None


def looks_like_path(name: str) -> bool:
    """Is ``name`` meant as a folder rather than a hub id ("name" or "owner/name")?"""
    # Hub ids are "name" or "owner/name"; anything else with path syntax is meant as a folder.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


class PretrainedTokenizer:
    """A Hugging Face tokenizer (``AutoTokenizer.from_pretrained``): a hub name or a local folder."""

    kind = "pretrained"

    def __init__(self, path_or_name: str | os.PathLike):
        from transformers import AutoTokenizer

        self.name = str(path_or_name)
        local = Path(self.name).expanduser()
        # A path-like name that does not exist would otherwise be sent to the hub and fail slowly
        # with a confusing repo-id error.
        if not local.exists() and (isinstance(path_or_name, os.PathLike) or looks_like_path(self.name)):
            raise PhaseLMError(
                f"tokenizer folder not found: {self.name}; "
                "pass a folder written by save_pretrained or a hub name like 'gpt2'"
            )
        try:
            self._tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else self.name)
        except Exception as exc:
            raise PhaseLMError(
                f"cannot load pretrained tokenizer '{self.name}' (offline or wrong name?): {one_line_reason(exc)}; "
                "pass a local tokenizer folder or a valid hub name"
            ) from None

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return len(self._tok)  # includes added tokens, unlike tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS."""
        # No BOS/EOS: the corpus is one continuous stream; verbose=False silences the
        # "longer than model_max_length" warning, which does not apply to a whole corpus.
        return self._tok.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (a list, or a tensor of any shape, read flat), special tokens kept."""
        return self._tok.decode(_as_int_list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def save(self, directory: str | os.PathLike) -> None:
        """Write our metadata and the Hugging Face files (``save_pretrained``) into ``directory``."""
        directory = _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size, "name": self.name})
        self._tok.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> CharTokenizer | BPETokenizer | PretrainedTokenizer:
    """Read back a tokenizer written by any ``save(directory)``."""
    directory = Path(directory).expanduser()
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise PhaseLMError(f"no {META_FILE} in {directory}; pass a folder written by a tokenizer's save()")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PhaseLMError(
            f"{meta_path} is not valid tokenizer metadata ({one_line_reason(exc)}); "
            "save the tokenizer again"
        ) from None
    if kind == "char":
        if not isinstance(meta.get("chars"), list):
            raise PhaseLMError(f"{meta_path} has no 'chars' list; save the char tokenizer again")
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return BPETokenizer.load(directory)
    if kind == "pretrained":
        return PretrainedTokenizer(directory)
    raise PhaseLMError(f"unknown tokenizer kind {kind!r} in {meta_path}; expected one of {', '.join(TOKENIZER_KINDS)}")


def build_tokenizer(
    kind: str, text: str, vocab_size: int = 16000, pretrained: str | None = None
) -> CharTokenizer | BPETokenizer | PretrainedTokenizer:
    """Make a tokenizer of ``kind`` ("char", "bpe" or "pretrained") for ``text``."""
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size=vocab_size)
    if kind == "pretrained":
        if not pretrained:
            raise PhaseLMError("tokenizer kind 'pretrained' needs a name or folder; set pretrained (e.g. 'gpt2')")
        return PretrainedTokenizer(pretrained)
    raise PhaseLMError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def learn_tokenizer(
    kind: str, text: str, val_fraction: float = 0.1, vocab_size: int = 16000, pretrained: str | None = None
) -> CharTokenizer | BPETokenizer | PretrainedTokenizer:
    """:func:`build_tokenizer` for a corpus that :func:`encode_split` will split.

    BPE merges are learned from the training part only, so the validation text never shapes the
    vocabulary. A char tokenizer takes the alphabet of the whole text: a character that occurs
    only in the validation part must still be encodable, and an alphabet carries no statistics.
    """
    learn_from = text if kind == "char" else split_text(text, val_fraction)[0]
    return build_tokenizer(kind, learn_from, vocab_size, pretrained)
