"""The fusion family's branches: which token mixers a block may hold, how each is built from a
:class:`phaselm.models.fusion.FusionConfig` and how each is called.

A hybrid block holds two branches, r (the first) and m (the second), fused by the block's
fusion (see :mod:`phaselm.models.fusion`). ``FusionConfig.branches`` names them by kind:

    "rwkv6"     RWKV-6 time mix (phaselm.layers.rwkv6)             first place only
    "mamba2"    Mamba-2 mixer (phaselm.layers.mamba2)              second place only
    "kuramoto"  causal Kuramoto token mixer (phaselm.layers.kuramoto_mixer), in either place

so the default ("rwkv6", "mamba2") is the seed's hybrid, and a Kuramoto branch takes the place
of RWKV-6 or of Mamba-2 (never both: one model holds one Kuramoto branch). Inside a model a
branch goes by its module name (``BRANCH_NAMES``: "rwkv", "mamba", "kuramoto"): the block's
attribute, its cache entry, ``forward(ablate=…)`` and the intervention sites all use it.

RWKV-6 and Mamba-2 carry a fixed-size recurrent state (``RECURRENT``); the Kuramoto mixer keeps
every earlier token's keys and phases instead (a KV cache that grows by one token per token), so
the state measurements of the diagnostics apply to the recurrent branches only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PhaseLMError
from ..layers.kuramoto_mixer import KuramotoMixer
from ..layers.mamba2 import Mamba2Mixer
from ..layers.rwkv6 import RWKV6TimeMix

BRANCH_KINDS = ("rwkv6", "mamba2", "kuramoto")
FIRST_KINDS = ("rwkv6", "kuramoto")  # r: its share is what the gates (gate_init, γ, α) weigh
SECOND_KINDS = ("mamba2", "kuramoto")
DEFAULT_BRANCHES = ("rwkv6", "mamba2")
BRANCH_NAMES = {"rwkv6": "rwkv", "mamba2": "mamba", "kuramoto": "kuramoto"}  # kind → module name
RECURRENT = ("rwkv", "mamba")  # branches whose state has a fixed size


def build_branch(kind: str, config, layer_id: int) -> nn.Module:
    """The branch module of ``kind`` for block ``layer_id`` of a model with ``config`` (a FusionConfig)."""
    d = config.hidden_size
    if kind == "rwkv6":
        return RWKV6TimeMix(
            d,
            head_dim=config.rwkv_head_dim,
            mix_rank=config.rwkv_mix_rank,
            decay_rank=config.rwkv_decay_rank,
            layer_id=layer_id,
            n_layers=config.n_layers,
            backend="fla" if config.scan == "kernels" else config.scan,
            chunk_size=config.rwkv_chunk_size,
        )
    if kind == "mamba2":
        return Mamba2Mixer(
            d,
            state_size=config.mamba_state_size,
            expand=config.mamba_expand,
            head_dim=config.mamba_head_dim,
            conv_kernel=config.mamba_conv_kernel,
            chunk_size=config.mamba_chunk_size,
            scan="fused" if config.scan == "kernels" else config.scan,
        )
    return KuramotoMixer(d, config.kuramoto_config())


def run_branch(
    module: nn.Module, x: torch.Tensor, state, mask: torch.Tensor | None, keep_state: bool
) -> tuple[torch.Tensor, object, torch.Tensor | None]:
    """x (B, T, d) through one branch → (out (B, T, d), its new state, the Kuramoto mixer's R
    (B, T, heads) or None). ``keep_state`` False lets the Kuramoto mixer skip building its cache
    (a forward without a cache, e.g. training); the recurrent branches return theirs anyway."""
    if isinstance(module, KuramotoMixer):
        out, order, new_state = module(x, mask, state, use_cache=keep_state)
        return out, new_state, order
    out, new_state = module(x, state, mask)
    return out, new_state, None


def check_branches(branches, mixer: str) -> tuple[str, str]:
    """``branches`` as a checked (first, second) tuple of branch kinds; a saved config gives a list."""
    if isinstance(branches, str) or not isinstance(branches, (list, tuple)) or len(branches) != 2:
        raise PhaseLMError(
            f"branches must be two branch kinds (first, second), e.g. ['rwkv6', 'kuramoto'], got {branches!r}"
        )
    first, second = (str(kind) for kind in branches)
    if first not in FIRST_KINDS or second not in SECOND_KINDS or first == second:
        raise PhaseLMError(
            f"branches {[first, second]} are not a fusion of two of {', '.join(BRANCH_KINDS)}: the first must be "
            f"one of {', '.join(FIRST_KINDS)}, the second one of {', '.join(SECOND_KINDS)}, not both kuramoto"
        )
    if mixer != "hybrid" and (first, second) != DEFAULT_BRANCHES:
        raise PhaseLMError(f"branches apply to mixer = 'hybrid' only; mixer {mixer!r} has one branch, its own")
    return first, second
