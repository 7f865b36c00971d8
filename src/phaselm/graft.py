"""Attach a Phase Core to one decoder layer of any Hugging Face causal LM, and detach it.

    handle = graft(model, PhaseCoreConfig(), layer="middle")
    out = model(input_ids)            # layer output now passes through the core
    handle.last.order                 # R per (sample, position) of that call
    handle.remove()                   # the model is exactly as before

The hook replaces the layer's output (the first element when the layer returns a tuple). In
``recurrent`` mode the carried phases belong to the generation cache the model passes to its
layers (a ``transformers.Cache``): they are stored on it and updated in place, so cached
generation continues the phases exactly where the prompt left them, a CUDA graph of a decoding
step (:mod:`phaselm.decoding`) replays them, and a forward pass without a cache always starts fresh.

A :class:`~phaselm.phase_block.PhaseBlock` (``core.kind = "phase-block"``) is grafted inside the
layer instead: the layer's Mamba mixer is routed to PhaseLM's ops (the PyTorch reference on CPU,
:func:`phaselm.fast_mamba.route_mixer`) and the block becomes its ``scan_output_transform``,
acting on the selective scan's output before the gate; ``remove()`` undoes both.

On CUDA, grafting onto a Hugging Face Mamba also routes its mixers to PhaseLM's kernels
(:func:`phaselm.fast_mamba.fast_mamba`) unless they already are; ``remove()`` undoes that too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .errors import PhaseLMError
from .fast_mamba import FastMamba, fast_mamba, route_mixer, routing
from .interventions.sites import Intervenable, Site, SiteMap
from .phase_block import PhaseBlock, PhaseBlockConfig
from .phase_core import PhaseCore, PhaseCoreConfig, PhaseCoreOutput

# Where the decoder layers live, by architecture family; the first path that resolves wins.
LAYER_PATHS = (
    "backbone.layers",  # Mamba, Mamba-2, FalconMamba
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Bloom, Falcon
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi
    "rwkv.blocks",  # RWKV
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


def find_layers(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The model's list of decoder layers and the attribute path it was found at."""
    for path in LAYER_PATHS:
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj, path
    raise PhaseLMError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for "
        f"{', '.join(LAYER_PATHS)}; graft onto a Mamba, GPT-2, Llama-style, RWKV, GPT-NeoX or OPT model"
    )


def resolve_layer(layer: int | str, n_layers: int) -> int:
    """``"middle"`` → n_layers // 2 (layer 32 of 64, as in the seeds); negative ints count back."""
    if layer == "middle":
        return n_layers // 2
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise PhaseLMError(f"layer must be an integer or 'middle', got {layer!r}") from None
    if not -n_layers <= index < n_layers:
        raise PhaseLMError(
            f"layer {index} is out of range: this model has {n_layers} layers (0..{n_layers - 1}); "
            "pick one in range or use 'middle'"
        )
    return index % n_layers


def _find_cache(args: tuple, kwargs: dict):
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value
    return None


@dataclass
class Recording:
    """Detached R of every forward call made while recording, in call order."""

    orders: list[torch.Tensor] = field(default_factory=list)

    def sequence(self) -> torch.Tensor:
        """R along the time axis (B, total positions): prompt then one column per new token."""
        if not self.orders:
            return torch.empty(0, 0)
        return torch.cat(self.orders, dim=1)


def block_mixer(model: nn.Module, layer_index: int) -> nn.Module:
    """The Hugging Face Mamba-1 mixer of decoder layer ``layer_index``, where a PhaseBlock grafts."""
    from transformers.models.mamba.modeling_mamba import MambaMixer

    layers, _ = find_layers(model)
    mixer = getattr(layers[layer_index], "mixer", None)
    if type(mixer) is not MambaMixer:
        raise PhaseLMError(
            f"a PhaseBlock grafts into a Hugging Face Mamba (Mamba-1) mixer; layer {layer_index} of "
            f"{type(model).__name__} has none: use core.kind = 'phase-core' for this model"
        )
    return mixer


class Graft(Intervenable):
    """A Phase Core (on a layer's output) or a PhaseBlock (inside a layer's Mamba mixer) attached
    to one layer of a model. Call ``remove()`` to detach it."""

    def __init__(
        self, model: nn.Module, core: PhaseCore | PhaseBlock, layer_index: int, layer_path: str, freeze: bool
    ):
        self.model = model
        self.core = core
        self.layer_index = layer_index
        self.layer_path = f"{layer_path}.{layer_index}"
        self.last: PhaseCoreOutput | None = None
        self._recordings: list[Recording] = []
        self.fast_path: FastMamba | None = None  # set by graft() when it routed the mixers itself
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        if freeze:
            for p in model.parameters():
                p.requires_grad_(False)
        layers, _ = find_layers(model)
        self._attention_mask: torch.Tensor | None = None
        self.enabled = True
        self._mixer: nn.Module | None = None
        self._mixer_routing: FastMamba | None = None
        if isinstance(core, PhaseBlock):
            self._mixer = block_mixer(model, layer_index)
            self._mixer_routing = route_mixer(self._mixer)
            self._mixer.scan_output_transform = self._transform_scan_output
            self._handles = []
            return
        self._handles = [
            layers[layer_index].register_forward_hook(self._hook, with_kwargs=True),
            # The layers do not all see the 2-D padding mask, so catch it where the model does.
            model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
        ]

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _padding_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The columns of the model-level mask that belong to this call's positions."""
        mask = self._attention_mask
        batch, length = hidden.shape[:2]
        if mask is None or mask.shape[0] != batch or mask.shape[1] < length:
            return None
        return mask[:, -length:].to(hidden.device)

    def _carried(self, cache) -> dict:
        """The phases this graft carries in ``cache`` ({id(graft): (B, N)}), made beam-search aware."""
        carried = cache.__dict__.get("_phaselm_phases")
        if carried is None:
            carried = cache.__dict__["_phaselm_phases"] = {}
            original = cache.reorder_cache

            def reorder_cache(beam_idx, *args, **kwargs):
                result = original(beam_idx, *args, **kwargs)
                for key, phases in carried.items():
                    carried[key] = phases.index_select(0, beam_idx.to(phases.device))
                return result

            cache.reorder_cache = reorder_cache
        return carried

    def _hook(self, module, args, kwargs, output):
        if not self.enabled:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        recurrent = self.core.config.mode == "recurrent"
        cache = _find_cache(args, kwargs) if recurrent else None
        mask = self._padding_mask(hidden) if recurrent else None
        carried = self._carried(cache) if cache is not None else None
        state = carried.get(id(self)) if carried is not None else None
        result = self.core(hidden, state, mask)
        if carried is not None:
            new = result.state.detach()
            if state is not None and state.shape == new.shape:
                state.copy_(new)  # in place: the cache's tensors keep their addresses from step to step
            else:
                carried[id(self)] = new.clone()
        self.last = result
        for recording in self._recordings:
            recording.orders.append(result.order.detach().cpu())
        if isinstance(output, tuple):
            return (result.hidden, *output[1:])
        return result.hidden

    def _transform_scan_output(self, y: torch.Tensor) -> torch.Tensor:
        """The PhaseBlock on the mixer's scan output y (B, T, d_inner), before the gate."""
        if not self.enabled:
            return y
        result = self.core(y)
        self.last = result
        for recording in self._recordings:
            recording.orders.append(result.order.detach().cpu())
        return result.hidden

    @contextlib.contextmanager
    def record(self):
        """Collect R from every forward call inside the block (the "measured" condition)."""
        recording = Recording()
        self._recordings.append(recording)
        try:
            yield recording
        finally:
            self._recordings.remove(recording)

    @contextlib.contextmanager
    def disabled(self):
        """Run the bare backbone inside the block (e.g. perplexity without the core)."""
        previous, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = previous

    def remove(self) -> None:
        """Detach the hook, undo a fast path graft() set up, and restore requires_grad flags."""
        for handle in self._handles:
            handle.remove()
        if self._mixer is not None:
            self._mixer.__dict__.pop("scan_output_transform", None)
            self._mixer = None
        if self.fast_path is not None:
            self.fast_path.remove()
            self.fast_path = None
        if self._mixer_routing is not None:
            self._mixer_routing.remove()
            self._mixer_routing = None
        for name, p in self.model.named_parameters():
            if name in self._requires_grad:
                p.requires_grad_(self._requires_grad[name])
        self.last = None

    def intervention_sites(self) -> SiteMap:
        """The grafted core (or PhaseBlock: one oscillator per inner channel) as the model's
        oscillator site, and ``phase_core`` as its branch (ablating it runs the bare backbone, as
        :meth:`disabled`)."""
        if isinstance(self.core, PhaseBlock):
            site = Site(0, "core", self.core, self.core.config.d_inner)
            return SiteMap(self.model, [site], {"phase_core": [self]}, label="grafted PhaseBlock")
        site = Site(0, "core", self.core, self.core.config.n_oscillators)
        return SiteMap(self.model, [site], {"phase_core": [self]}, label="grafted Phase Core")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def hidden_size_of(model: nn.Module) -> int:
    """The residual-stream width of a transformers model, read from its config (hidden_size, n_embd or d_model)."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise PhaseLMError(f"cannot tell the hidden size of {type(model).__name__}; set core.hidden_size")


def graft(
    model: nn.Module,
    core: PhaseCore | PhaseCoreConfig | PhaseBlock | PhaseBlockConfig | None = None,
    layer: int | str = "middle",
    freeze: bool = True,
) -> Graft:
    """Attach ``core`` (or a new core built from a config; default: the seeds' core) to ``layer``.

    A PhaseBlock (or its config, ``d_inner`` 0: the mixer's width) goes inside the layer's Mamba
    mixer, on the scan output before the gate; everything else below holds for it too.

    The backbone is frozen (only the core trains) unless ``freeze=False``. The core is moved
    to the model's device and kept in float32. On CUDA a Hugging Face Mamba's mixers are routed
    to PhaseLM's kernels (see :mod:`phaselm.fast_mamba`) unless something already routed them.
    """
    layers, path = find_layers(model)
    index = resolve_layer(layer, len(layers))
    if isinstance(core, (PhaseBlock, PhaseBlockConfig)):
        return _graft_block(model, core, index, path, freeze)
    if core is None or isinstance(core, PhaseCoreConfig):
        config = core or PhaseCoreConfig()
        if config.hidden_size <= 0:
            config = replace(config, hidden_size=hidden_size_of(model))
        core = PhaseCore(config)
    expected = hidden_size_of(model)
    if core.config.hidden_size != expected:
        raise PhaseLMError(
            f"core hidden size {core.config.hidden_size} does not match the model's {expected}; "
            "build the core with the backbone's hidden size"
        )
    if core.config.mode == "recurrent" and path == "rwkv.blocks":
        raise PhaseLMError(
            "recurrent core mode needs a model that passes a transformers Cache to its layers; "
            "RWKV does not: use core.mode = 'token'"
        )
    return _attach(model, core, index, path, freeze)


def _attach(model: nn.Module, core: nn.Module, index: int, path: str, freeze: bool) -> Graft:
    """The last step of every graft: the core (Phase Core or PhaseBlock) in float32 on the model's
    device, hooked in; on CUDA the model's Mamba mixers are routed to PhaseLM's kernels."""
    device = next(model.parameters()).device
    core.to(device=device, dtype=torch.float32)
    handle = Graft(model, core, index, path, freeze)
    if device.type == "cuda" and routing(model) is None:
        routed = fast_mamba(model)
        handle.fast_path = routed if routed.modules else None
    return handle


def _graft_block(model: nn.Module, block: PhaseBlock | PhaseBlockConfig, index: int, path: str, freeze: bool) -> Graft:
    """:func:`graft` for a PhaseBlock: checked against the mixer's inner width, float32, on the model's device."""
    width = block_mixer(model, index).intermediate_size
    if isinstance(block, PhaseBlockConfig):
        block = PhaseBlock(block if block.d_inner > 0 else replace(block, d_inner=width))
    if block.config.d_inner != width:
        raise PhaseLMError(
            f"PhaseBlock d_inner {block.config.d_inner} does not match the mixer's inner width {width}; "
            "leave core.d_inner at 0 to take the mixer's"
        )
    return _attach(model, block, index, path, freeze)
