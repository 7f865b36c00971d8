"""Corpora, tokenizers, token streams and batches.

Three layers, each small:

* ``load_text``: a corpus name, file, folder or ``hf:`` dataset → one string.
* tokenizers (char, byte-level BPE, pretrained) sharing one protocol, saved as JSON only;
  ``learn_tokenizer`` learns one from a corpus's training part.
* token streams: ``encode_split`` → training and validation 1-D LongTensors (the text split on
  its characters first), ``random_batch`` for training and ``sequential_batches`` for
  deterministic validation (nanoGPT conventions).

Every mistake a user can fix raises :class:`~phaselm.errors.PhaseLMError` with a one-line message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from phaselm.errors import PhaseLMError

EMBEDDED_CORPUS = "tinyshakespeare"
META_FILE = "tokenizer_meta.json"
TOKENIZER_KINDS = ("char", "bpe", "pretrained")

_GUTENBERG_START = "*** START OF"
_GUTENBERG_END = "*** END OF"
_SOURCE_HINT = "pass a text file, a folder of .txt files, 'tinyshakespeare', or hf:NAME"


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """A short single-line reason from an arbitrary exception (library messages span lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and footer, keeping only the book between the markers.

    The markers are whole lines such as ``*** START OF THE PROJECT GUTENBERG EBOOK ... ***``;
    the lines themselves are removed too. Text without a start marker is returned unchanged.
    """
    start = text.find(_GUTENBERG_START)
    if start == -1:
        return text
    # The body begins on the line after the start marker (the marker line ends with "***").
    line_end = text.find("\n", start)
    body = "" if line_end == -1 else text[line_end + 1 :]
    end = body.find(_GUTENBERG_END)
    if end != -1:
        # Cut at the beginning of the end-marker line, not mid-line.
        body = body[: body.rfind("\n", 0, end) + 1]
    return body.strip("\n\r\ufeff")


def _read_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PhaseLMError(
            f"{path} is not UTF-8 text ({_one_line(exc)}); convert it to UTF-8 or pass another file"
        ) from None
    except OSError as exc:
        raise PhaseLMError(f"cannot read {path}: {_one_line(exc)}; check the path and its permissions") from None
    return strip_gutenberg(text) if _GUTENBERG_START in text else text


def _read_folder(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise PhaseLMError(f"no .txt files in folder {folder}; put the corpus in .txt files there or pass a file")
    # Blank files would only add stray separators.
    texts = [t for t in (_read_file(p) for p in files) if t.strip()]
    return "\n\n".join(texts)


def _load_hf(spec: str) -> str:
    """``NAME``, ``NAME/CONFIG`` or ``OWNER/NAME/CONFIG`` → the train split's text column."""
    parts = spec.split("/")
    if not spec or any(not p for p in parts) or len(parts) > 3:
        raise PhaseLMError(
            f"bad Hugging Face corpus 'hf:{spec}'; write hf:NAME, hf:NAME/CONFIG or hf:OWNER/NAME/CONFIG"
        )
    if len(parts) == 1:
        name, config = parts[0], None
    else:
        name, config = "/".join(parts[:-1]), parts[-1]
    try:
        import datasets  # optional dependency: only needed for hf: corpora
    except ImportError:
        raise PhaseLMError(
            f"corpus 'hf:{spec}' needs the 'datasets' package; pip install 'phaselm[datasets]' "
            "or pass a local file or folder instead"
        ) from None
    try:
        dataset = datasets.load_dataset(name, config, split="train")
    except Exception as exc:  # offline, unknown name, bad config: all reported the same way
        raise PhaseLMError(
            f"cannot load dataset '{spec}' from the Hugging Face hub (offline?): {_one_line(exc)}; "
            "pass a local file or folder instead"
        ) from None
    columns = list(getattr(dataset, "column_names", None) or [])
    if "text" not in columns:
        raise PhaseLMError(
            f"dataset '{spec}' has no 'text' column (columns: {', '.join(columns) or 'none'}); "
            "pick a dataset with a text column or pass a local file"
        )
    return "\n".join(t for t in dataset["text"] if t is not None)


def load_text(source: str | os.PathLike | None = None) -> str:
    """Load a training corpus as one string.

    ``source`` is ``None`` or ``"tinyshakespeare"`` (the embedded ~1.1 MB demo corpus), a UTF-8
    text file, a folder (its ``*.txt`` files, recursively, sorted by path, joined by a blank
    line), or ``"hf:NAME[/CONFIG]"`` (a Hugging Face dataset's train split, needs ``datasets``).
    Project Gutenberg headers and footers are stripped automatically.
    """
    if source is None or (isinstance(source, str) and source == EMBEDDED_CORPUS):
        text = resources.files("phaselm.resources").joinpath("tinyshakespeare.txt").read_text(encoding="utf-8")
        where = EMBEDDED_CORPUS
    elif isinstance(source, str) and source.startswith("hf:"):
        text = _load_hf(source[len("hf:") :])
        where = source
    else:
        path = Path(source).expanduser()
        if path.is_file():
            text = _read_file(path)
        elif path.is_dir():
            text = _read_folder(path)
        else:
            raise PhaseLMError(f"corpus not found: {path}; {_SOURCE_HINT}")
        where = str(path)
    if not text.strip():
        raise PhaseLMError(f"corpus {where} is empty (no text after stripping whitespace); {_SOURCE_HINT}")
    return text


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """What training and generation need from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | os.PathLike) -> None: ...


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
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, "model_max_length": 1_000_000}
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
        if not text:
            raise PhaseLMError("cannot build a char tokenizer from empty text; pass a non-empty corpus")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
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
        chars, n = self.chars, len(self.chars)
        ids = _as_int_list(ids)
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise PhaseLMError(f"token id {bad} is outside the char vocabulary (0..{n - 1}); decode ids from this tokenizer")
        return "".join(chars[i] for i in ids)

    def save(self, directory: str | os.PathLike) -> None:
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
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if len(text) <= _BPE_CHUNK_CHARS:
            return self._tok.encode(text, add_special_tokens=False).ids
        encodings = self._tok.encode_batch(_newline_chunks(text, _BPE_CHUNK_CHARS), add_special_tokens=False)
        return [i for enc in encodings for i in enc.ids]

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise PhaseLMError(f"token id {bad} is outside the BPE vocabulary (0..{n - 1}); decode ids from this tokenizer")
        return self._tok.decode(ids, skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        directory = _write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size})
        _write_hf_tokenizer(directory, self._tok)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BPETokenizer:
        from tokenizers import Tokenizer

        path = Path(directory) / cls.FILE
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:
            raise PhaseLMError(f"cannot read BPE tokenizer {path}: {_one_line(exc)}; save the tokenizer again") from None


def looks_like_path(name: str) -> bool:
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
                f"tokenizer folder not found: {self.name}; pass a folder written by save_pretrained or a hub name like 'gpt2'"
            )
        try:
            self._tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else self.name)
        except Exception as exc:
            raise PhaseLMError(
                f"cannot load pretrained tokenizer '{self.name}' (offline or wrong name?): {_one_line(exc)}; "
                "pass a local tokenizer folder or a valid hub name"
            ) from None

    @property
    def vocab_size(self) -> int:
        return len(self._tok)  # includes added tokens, unlike tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        # No BOS/EOS: the corpus is one continuous stream; verbose=False silences the
        # "longer than model_max_length" warning, which does not apply to a whole corpus.
        return self._tok.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(_as_int_list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def save(self, directory: str | os.PathLike) -> None:
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
        raise PhaseLMError(f"{meta_path} is not valid tokenizer metadata ({_one_line(exc)}); save the tokenizer again") from None
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


# --------------------------------------------------------------------------------------------
# Token streams and batches
# --------------------------------------------------------------------------------------------


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


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """First ``1 - val_fraction`` of the characters train, the rest validates."""
    if not 0.0 <= val_fraction < 1.0:
        raise PhaseLMError(f"val_fraction {val_fraction} is out of range; use a value in [0, 1), e.g. 0.1")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def encode_split(tokenizer: Tokenizer, text: str, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and validation token streams of a corpus, split on its characters.

    Splitting the text (not the token stream) lets a tokenizer be learned from the training part
    alone (:func:`learn_tokenizer`), and no token straddles the boundary. For a char tokenizer
    it is the same split as :func:`train_val_split` of the whole stream.
    """
    train_text, val_text = split_text(text, val_fraction)
    train_ids = encode_corpus(tokenizer, train_text)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long) if val_text else torch.zeros(0, dtype=torch.long)
    return train_ids, val_ids


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
