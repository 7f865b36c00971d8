"""Cached decoding without launch overhead: one-token steps replayed from a CUDA graph.

A decoding step of a 2.8B Mamba is about a thousand small kernels (norms, projections, the
convolution and scan updates of 64 layers); launched one by one from Python, their launch
cost is larger than the work. :class:`StepDecoder` prefills the prompt eagerly, then captures
one step — model forward for one token per sequence, cache updated in place — in a CUDA graph
and replays it for every further token, so a step costs about what its kernels cost.

It needs a cache whose tensors keep their addresses from step to step (Hugging Face's Mamba and
Mamba-2 caches do: their states are updated with ``copy_``), and a step that never synchronises
with the host (PhaseLM's fast Mamba path and a grafted Phase Core qualify; measured generation,
which copies R to the host every step, does not). Elsewhere — on a CPU, or with ``graph=False``
— the same object steps eagerly, so results can be compared path against path.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .errors import PhaseLMError


def _cache_argument(model: nn.Module) -> str:
    """Hugging Face Mamba models take ``cache_params``; most others ``past_key_values``."""
    return "cache_params" if "cache_params" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output) -> object:
    cache = getattr(output, "cache_params", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def state_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a cache holds (per-layer dicts, lists and attributes), in a stable order."""
    found: list[torch.Tensor] = []

    def visit(value, depth=0):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif depth > 4:
            return
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, depth + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, (nn.Module, torch.device, torch.dtype)):
            for key in sorted(vars(value)):
                visit(vars(value)[key], depth + 1)

    visit(cache)
    return found


class StepDecoder:
    """Prefill ``prompt_ids`` (B, T), then produce next-token logits one step at a time.

    ``step(ids)`` takes the tokens just chosen, ids (B, 1), and returns logits (B, V) for the
    next position. With ``graph=True`` on CUDA the step is a CUDA-graph replay and the returned
    tensor is a static buffer, overwritten by the next step (clone it to keep it).
    """

    def __init__(self, model: nn.Module, prompt_ids: torch.Tensor, graph: bool = True, warmup: int = 2):
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
            raise PhaseLMError(f"prompt ids must be (batch, length ≥ 1), got {tuple(prompt_ids.shape)}")
        self.model = model
        self.argument = _cache_argument(model)
        with torch.no_grad():
            out = model(input_ids=prompt_ids, use_cache=True)
        self.cache = _cache_of(out)
        if self.cache is None:
            raise PhaseLMError(
                f"{type(model).__name__} returned no cache; cached decoding needs use_cache=True support"
            )
        self.first_logits = out.logits[:, -1].float()
        self._graph = None  # set when the step is captured (graph=True on CUDA)
        if graph and prompt_ids.is_cuda:
            self._capture(prompt_ids.shape[0], prompt_ids.device, warmup)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, use_cache=True, **{self.argument: self.cache})
        return out.logits[:, -1].float()

    def _capture(self, batch: int, device: torch.device, warmup: int) -> None:
        states = state_tensors(self.cache)
        saved = [t.clone() for t in states]
        self._ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        # Warm-up runs compile kernels and create library handles outside the capture; they
        # advance the cache, so its tensors are put back before capturing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                self._forward(self._ids)
        torch.cuda.current_stream().wait_stream(side)
        after = state_tensors(self.cache)
        if len(after) != len(states) or any(a.data_ptr() != b.data_ptr() for a, b in zip(after, states)):
            raise PhaseLMError(
                f"{type(self.model).__name__}'s cache replaces its tensors between steps, so a CUDA graph cannot "
                "replay a step; decode with graph=False"
            )
        for tensor, value in zip(states, saved):
            tensor.copy_(value)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            self._logits = self._forward(self._ids)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids (B, 1); → logits (B, V) float32 of the next position."""
        if self._graph is None:
            return self._forward(ids)
        self._ids.copy_(ids)
        self._graph.replay()
        return self._logits


@torch.no_grad()
def greedy_decode(model: nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int, graph: bool = True) -> torch.Tensor:
    """Greedy continuation (B, max_new_tokens) of prompt_ids (B, T) through :class:`StepDecoder`."""
    decoder = StepDecoder(model, prompt_ids, graph=graph)
    token = decoder.first_logits.argmax(-1, keepdim=True)
    tokens = [token]
    for _ in range(max_new_tokens - 1):
        token = decoder.step(token).argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)
