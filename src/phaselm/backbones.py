"""Backbones: any Hugging Face causal LM by hub name or local folder, and a small Mamba to pretrain.

Hubs are often unreachable on research clusters, so ``phaselm pretrain`` trains a small
``MambaForCausalLM`` and saves it with ``save_pretrained`` plus its tokenizer; grafting then
loads it through exactly the code path a hub name takes (``from_pretrained``).
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import replace_directory, temporary_sibling
from .errors import PhaseLMError
from .fast_mamba import fast_mamba
from .tokenizers import PretrainedTokenizer, Tokenizer, load_tokenizer, looks_like_path


@dataclass
class MambaSpec:
    """Shape of a Mamba (v1) backbone to pretrain; small defaults fit a CPU demo."""

    hidden_size: int = 64
    n_layers: int = 4
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4

    def __post_init__(self) -> None:
        for name in ("hidden_size", "n_layers", "state_size", "expand", "conv_kernel"):
            if getattr(self, name) < 1:
                raise PhaseLMError(f"model.{name} must be a positive integer, got {getattr(self, name)}")


def build_mamba(spec: MambaSpec, vocab_size: int) -> nn.Module:
    """A freshly initialised transformers ``MambaForCausalLM`` of ``spec``'s shape over ``vocab_size`` tokens."""
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.n_layers,
        state_size=spec.state_size,
        expand=spec.expand,
        conv_kernel=spec.conv_kernel,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    return MambaForCausalLM(config)


MODEL_FOLDER = "model"  # where train-lm and pretrain save the trained model inside their run directory

# Shapes of the published Mamba-1 checkpoints (state-spaces/mamba-*-hf): hidden size and layers;
# all have state 16, expand 2, conv 4, Δ rank ⌈hidden/16⌉ and a 50,280-token vocabulary.
MAMBA_SHAPES = {
    "mamba-130m": (768, 24),
    "mamba-370m": (1024, 48),
    "mamba-790m": (1536, 48),
    "mamba-1.4b": (2048, 48),
    "mamba-2.8b": (2560, 64),
}
MAMBA_VOCAB = 50280


def mamba_of_shape(
    shape: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, vocab_size: int = MAMBA_VOCAB
) -> nn.Module:
    """A ``MambaForCausalLM`` of a published checkpoint's shape with random weights.

    For speed and memory measurements where no hub is reachable (speed does not depend on the
    weights). Built directly on ``device``: a 2.8B model initialises in seconds on a GPU.
    """
    if shape not in MAMBA_SHAPES:
        raise PhaseLMError(f"unknown backbone shape {shape!r}; choose one of {', '.join(MAMBA_SHAPES)}")
    from transformers import MambaConfig, MambaForCausalLM

    hidden, layers = MAMBA_SHAPES[shape]
    config = MambaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, state_size=16, expand=2, conv_kernel=4,
        residual_in_fp32=True, tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    with torch.device(device):
        model = MambaForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _is_local(name: str) -> bool:
    return looks_like_path(name) or Path(name).exists()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub (HF_ENDPOINT or huggingface.co) within ``timeout``?"""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _from_pretrained(cls, name: str, local: bool):
    """``cls.from_pretrained``; a hub id is served from the local cache when it is there, and an
    unreachable hub fails at once instead of after a minute of retries."""
    if local:
        return cls.from_pretrained(name)
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not hub_reachable():
        raise PhaseLMError(
            f"cannot load hub model {name!r}: it is not in the local cache and the hub is unreachable "
            "(offline?); download it elsewhere and pass its local folder"
        )
    return cls.from_pretrained(name)


def load_backbone(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer]:
    """Load a causal LM and its tokenizer from a local folder or a hub name.

    A folder written by ``phaselm pretrain`` carries a PhaseLM tokenizer (tokenizer_meta.json);
    any other folder or hub name uses its own Hugging Face tokenizer.
    """
    if not name:
        raise PhaseLMError("no backbone given; set [backbone] name to a local model folder or a hub name")
    from transformers import AutoModelForCausalLM

    from . import models  # noqa: F401  registers PhaseLM's model types with the Auto classes

    local = _is_local(name)
    if local and not Path(name).is_dir():
        raise PhaseLMError(f"backbone folder {name} does not exist; run `phaselm pretrain` first or fix the path")
    if local and not (Path(name) / "config.json").is_file():
        raise PhaseLMError(
            f"{name} is not a Hugging Face model folder (no config.json); point at a save_pretrained folder"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _from_pretrained(AutoModelForCausalLM, name, local)
    except PhaseLMError:
        raise
    except Exception as exc:  # a user's files: a corrupt header or config is their problem, in one line
        where = "folder" if local else "hub model"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if local else " (offline? download it elsewhere and pass its local folder)"
        raise PhaseLMError(f"cannot load {where} {name!r}: {reason}{hint}") from None
    model.to(device)
    model.eval()
    if torch.device(device).type == "cuda":
        fast_mamba(model)  # a Hugging Face Mamba runs on PhaseLM's kernels (logged; a no-op for other models)
    if local and (Path(name) / "tokenizer_meta.json").is_file():
        tokenizer = load_tokenizer(name)
    else:
        tokenizer = PretrainedTokenizer(name)
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer.vocab_size > vocab:
        raise PhaseLMError(
            f"the tokenizer of {name} has {tokenizer.vocab_size} tokens but the model only {vocab}; "
            "save the tokenizer that the model was trained with beside it"
        )
    return model, tokenizer


def save_backbone(model: nn.Module, tokenizer: Tokenizer, directory: str | os.PathLike, replace: bool = False) -> Path:
    """``save_pretrained`` (safetensors) plus the tokenizer, into a new or empty folder, or with
    ``replace`` over an existing one (an extended run's model).

    The folder is written beside its destination and renamed into place, so it is never seen
    half-written and a failed save leaves the previous one as it was.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise PhaseLMError(f"{directory} is a file, not a folder; choose a new folder")
    if directory.exists() and any(directory.iterdir()) and not replace:
        raise PhaseLMError(f"{directory} already exists and is not empty; choose a new folder")
    tmp = temporary_sibling(directory)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save(tmp)
        replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
