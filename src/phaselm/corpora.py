"""Corpora: a corpus name, file, folder or ``hf:`` dataset → one string, and its split into a
training and a validation part.

Every mistake a user can fix raises :class:`~phaselm.errors.PhaseLMError` with a one-line message.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import PhaseLMError, one_line_reason

EMBEDDED_CORPUS = "tinyshakespeare"

_GUTENBERG_START = "*** START OF"
_GUTENBERG_END = "*** END OF"
_SOURCE_HINT = "pass a text file, a folder of .txt files, 'tinyshakespeare', or hf:NAME"


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
            f"{path} is not UTF-8 text ({one_line_reason(exc)}); convert it to UTF-8 or pass another file"
        ) from None
    except OSError as exc:
        raise PhaseLMError(f"cannot read {path}: {one_line_reason(exc)}; check the path and its permissions") from None
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
            f"cannot load dataset '{spec}' from the Hugging Face hub (offline?): {one_line_reason(exc)}; "
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


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """First ``1 - val_fraction`` of the characters train, the rest validates."""
    if not 0.0 <= val_fraction < 1.0:
        raise PhaseLMError(f"val_fraction {val_fraction} is out of range; use a value in [0, 1), e.g. 0.1")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]
