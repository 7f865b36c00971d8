"""Hugging Face Mamba and Mamba-2 on our own kernels, without editing transformers.

Without mamba_ssm and causal_conv1d (CUDA source packages that cannot be built everywhere),
transformers runs Mamba's selective scan and convolution as Python loops over positions: a
2.8B model forwards a few hundred tokens per second on an H100. :func:`fast_mamba` routes every
``MambaMixer`` of a model to :mod:`phaselm.ops.selective_scan` and
:mod:`phaselm.ops.causal_conv1d` (training, prefill and cached decoding) and every
``Mamba2Mixer`` to :mod:`phaselm.ops.ssd`, by giving each mixer instance its own ``forward``;
``handle.remove()`` deletes those attributes, so the model is exactly as before.

    handle = fast_mamba(model)        # "auto": our kernels on CUDA; nothing to do on CPU or with mamba_ssm
    handle.path                       # which path runs: "phaselm-triton", "mamba_ssm", "transformers", ...
    handle.remove()

A routed ``MambaMixer`` has one hook point that transformers' forward lacks: a callable
``mixer.scan_output_transform`` (y (B, T, d_inner) → y) applied to the selective scan's output
before the gate, ``out_proj(transform(y) · silu(gate))`` (the PhaseBlock graft uses it; see
:func:`route_mixer`). Without it the gate stays fused into the scan.

``load_backbone`` and ``graft`` call it on CUDA, so a user with a GPU gets the fast path without
asking; the choice is logged on the ``phaselm`` logger and recorded in run metadata.

The replacement forwards follow transformers' own mixer forwards step for step (padding mask,
cache reads and writes through the ``Cache`` API), and the CPU tests hold them to equal logits,
gradients and cached generation.
"""

from __future__ import annotations

import importlib.util
import logging
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PhaseLMError
from .ops.causal_conv1d import causal_conv1d, causal_conv1d_reference, causal_conv1d_step
from .ops.rms_norm import rms_norm
from .ops.selective_scan import selective_scan, selective_state_step
from .ops.ssd import ssd, ssd_step

logger = logging.getLogger("phaselm")
BACKENDS = ("auto", "triton", "reference")
_ATTRIBUTE = "_phaselm_fast_mamba"


def mamba_ssm_installed() -> bool:
    """transformers uses mamba_ssm's and causal_conv1d's CUDA kernels itself when both import."""
    return importlib.util.find_spec("mamba_ssm") is not None and importlib.util.find_spec("causal_conv1d") is not None


@dataclass
class FastMamba:
    """Which path a model's Mamba mixers run, and the means to undo the routing."""

    model: nn.Module
    path: str  # "phaselm-triton", "phaselm-reference", "mamba_ssm", "transformers", "none"
    modules: list[nn.Module] = field(default_factory=list)  # the mixers (and Mamba-1 blocks) routed

    def remove(self) -> None:
        """Give every routed module back its class's forward."""
        for module in self.modules:
            for name in ("forward", "_phaselm_ops", "_phaselm_constants"):
                module.__dict__.pop(name, None)
        self.modules = []
        if getattr(self.model, _ATTRIBUTE, None) is self:
            delattr(self.model, _ATTRIBUTE)


def _mixer_kinds():
    """The module classes routed, each with its replacement forward (Mamba-1 blocks too: their
    RMSNorm runs as one kernel where no gradient flows)."""
    kinds = {}
    try:
        from transformers.models.mamba.modeling_mamba import MambaBlock, MambaMixer

        kinds[MambaMixer] = _mamba_forward
        kinds[MambaBlock] = _mamba_block_forward
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

        kinds[Mamba2Mixer] = _mamba2_forward
    except ImportError:  # pragma: no cover
        pass
    return kinds


def fast_mamba(model: nn.Module, backend: str = "auto", device: str | torch.device | None = None) -> FastMamba:
    """Route the model's Hugging Face Mamba/Mamba-2 mixers to PhaseLM's kernels; returns the handle.

    ``backend``: "auto" (our Triton kernels on CUDA unless mamba_ssm is installed, which
    transformers then uses itself; on CPU transformers' own path, since kernels would not help),
    "triton" (our kernels; also on CPU under ``TRITON_INTERPRET=1``, for tests) or "reference"
    (our plain PyTorch ops, for checks). Calling it again on a routed model returns the same
    handle. A model without Mamba mixers gets a handle with path "none". ``device``: where the
    model will run, when it is not there yet (a model built on the CPU that training then moves
    to the GPU); by default where its parameters are.
    """
    if backend not in BACKENDS:
        raise PhaseLMError(f"fast Mamba backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    existing = routing(model)
    if existing is not None:
        return existing
    kinds = _mixer_kinds()
    routed = [m for m in model.modules() if type(m) in kinds]
    if not routed:
        return FastMamba(model, "none")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if backend == "auto":
        if device.type != "cuda":
            return FastMamba(model, "transformers")
        if mamba_ssm_installed():
            logger.info("Mamba mixers: transformers runs them on mamba_ssm's kernels (installed)")
            return FastMamba(model, "mamba_ssm")
        backend = "triton"
    for module in routed:
        module._phaselm_ops = backend
        module.forward = types.MethodType(kinds[type(module)], module)
    handle = FastMamba(model, f"phaselm-{backend}", routed)
    setattr(model, _ATTRIBUTE, handle)
    mixers = sum(1 for m in routed if "Mixer" in type(m).__name__)
    logger.info(
        "Mamba mixers: %d routed to PhaseLM's %s ops (selective scan / SSD, causal conv1d, RMSNorm)", mixers, backend
    )
    return handle


def route_mixer(mixer: nn.Module) -> FastMamba | None:
    """Route one Mamba-1 mixer to PhaseLM's ops (Triton on CUDA, the PyTorch reference elsewhere)
    so it honours ``scan_output_transform``; the handle undoes it, or None where it already was
    routed (by :func:`fast_mamba`, which then undoes it)."""
    from transformers.models.mamba.modeling_mamba import MambaMixer

    if type(mixer) is not MambaMixer:
        raise PhaseLMError(f"only a Hugging Face MambaMixer can be routed here, got {type(mixer).__name__}")
    if "forward" in mixer.__dict__:
        return None
    backend = "triton" if mixer.A_log.is_cuda else "reference"
    mixer._phaselm_ops = backend
    mixer.forward = types.MethodType(_mamba_forward, mixer)
    logger.info("Mamba mixer %s routed alone to PhaseLM's %s ops (for its scan-output hook)", mixer.layer_idx, backend)
    return FastMamba(mixer, f"phaselm-{backend}", [mixer])


def routing(model: nn.Module) -> FastMamba | None:
    """The handle of the routing :func:`fast_mamba` applied to this model, or None."""
    return getattr(model, _ATTRIBUTE, None)


def scan_path(model: nn.Module) -> str:
    """The path a model's Mamba mixers run now (what run metadata and the bench record)."""
    handle = routing(model)
    if handle is not None:
        return handle.path
    if not any(type(m) in _mixer_kinds() for m in model.modules()):
        return "none"
    return "mamba_ssm" if mamba_ssm_installed() and next(model.parameters()).is_cuda else "transformers"


def _mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded positions, as transformers does before and after the convolution."""
    if attention_mask is None:
        return hidden
    return (hidden * attention_mask[:, :, None]).to(hidden.dtype)


def _cache_states(mixer, cache) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """(conv window (B, C, K), SSM state, recording past?) of the mixer's layer; Nones before a prefill.

    transformers ≥ 5.2x reads them through ``Cache.get_conv_state``; 5.0–5.1x (the GPU image's
    5.17) through ``has_previous_state(layer)`` and the layer's state dicts.
    """
    if cache is None:
        return None, None, False
    index = mixer.layer_idx
    if hasattr(cache, "get_conv_state"):
        return cache.get_conv_state(index), cache.get_recurrent_state(index), cache.is_recording_past(index)
    layer = cache.layers[index]
    if cache.has_previous_state(index):
        return layer.conv_states[0], layer.recurrent_states[0], layer.record_past
    return None, None, getattr(layer, "record_past", False)


def _convolve(mixer, inputs, weight, bias, cache, conv_state, decoding: bool) -> torch.Tensor:
    """Causal depthwise conv + SiLU of inputs (B, T, C), keeping the cache's window current."""
    ops = mixer._phaselm_ops
    if decoding:  # conv_state (B, C, K) shifts in place
        return causal_conv1d_step(inputs[:, 0], conv_state, weight, bias, silu=True, backend=ops)[:, None]
    previous = None
    if conv_state is not None:  # a multi-token call after a cached prefix: the window continues
        previous = conv_state[..., 1:].clone()
    if cache is not None:
        cache.update_conv_state(inputs.transpose(1, 2), mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    if previous is not None:
        return causal_conv1d_reference(inputs, weight, bias, silu=True, initial_state=previous)
    return causal_conv1d(inputs, weight, bias, silu=True, backend=ops)


def _float_constants(mixer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A = −exp(A_log), D and the Δ bias in float32, computed once per change of the parameters.

    A decoding step would otherwise spend several small kernels per layer recomputing them,
    as many as its own scan; the cache follows in-place updates through the tensors' versions.
    """
    bias = mixer.dt_proj.bias
    key = tuple((p.data_ptr(), p._version) for p in (mixer.A_log, mixer.D) + ((bias,) if bias is not None else ()))
    cached = mixer.__dict__.get("_phaselm_constants")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            values = (-torch.exp(mixer.A_log.float()), mixer.D.float(), bias.float() if bias is not None else None)
        mixer._phaselm_constants = cached = (key, values)
    return cached[1]


def _mamba_block_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """transformers' ``MambaBlock.forward``: hidden (B, T, d) → (B, T, d); its RMSNorm runs as one
    kernel (:mod:`phaselm.ops.rms_norm`, same roundings) where no gradient flows."""
    residual = hidden_states
    norm = self.norm
    if torch.is_grad_enabled() and (hidden_states.requires_grad or norm.weight.requires_grad):
        normed = norm(hidden_states.to(dtype=norm.weight.dtype))
    else:
        normed = rms_norm(hidden_states, norm.weight, norm.variance_epsilon, backend=self._phaselm_ops)
    if self.residual_in_fp32:
        residual = residual.to(torch.float32)
    return residual + self.mixer(normed, cache_params=cache_params, attention_mask=attention_mask)


def _mamba_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """transformers' ``MambaMixer.forward`` on PhaseLM's ops: hidden (B, T, d) → (B, T, d)."""
    length = hidden_states.shape[1]
    dtype = hidden_states.dtype
    conv_state, ssm_state, recording = _cache_states(self, cache_params)
    decoding = conv_state is not None and ssm_state is not None and length == 1 and not recording
    x, z = self.in_proj(_mask(hidden_states, attention_mask)).chunk(2, dim=-1)  # (B, T, D) views, no copy
    bias = self.conv1d.bias if self.use_conv_bias else None
    x = _mask(
        _convolve(self, x, self.conv1d.weight.squeeze(1), bias, cache_params, conv_state, decoding), attention_mask
    )
    dt, B, C = torch.split(self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
    dt = F.linear(dt, self.dt_proj.weight)  # the bias joins inside the scan, before the softplus
    transform = self.__dict__.get("scan_output_transform")
    gate = z if transform is None else None  # fused into the scan unless y is transformed first
    if decoding:  # no gradient flows here: constants computed once
        A, D, dt_bias = _float_constants(self)
        y = selective_state_step(
            ssm_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, None if gate is None else gate[:, 0], dt_bias,
            backend=self._phaselm_ops,
        )
        y = y[:, None]
    else:
        A = -torch.exp(self.A_log.float())
        dt_bias = self.dt_proj.bias.float() if self.dt_proj.bias is not None else None
        y, final = selective_scan(
            x, dt, A, B, C, self.D.float(), gate, dt_bias, initial_state=ssm_state, backend=self._phaselm_ops
        )
        if cache_params is not None:
            cache_params.update_recurrent_state(final, self.layer_idx)
    if transform is not None:
        y = transform(y) * F.silu(z.to(y.dtype))
    return self.out_proj(y.to(dtype))


def _mamba2_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """transformers' ``Mamba2Mixer.forward`` on PhaseLM's SSD scan: hidden (B, T, d) → (B, T, d)."""
    batch, length, _ = hidden_states.shape
    dtype = hidden_states.dtype
    conv_state, ssm_state, recording = _cache_states(self, cache_params)
    decoding = conv_state is not None and ssm_state is not None and length == 1 and not recording
    projected = self.in_proj(_mask(hidden_states, attention_mask))
    gate, xbc, dt = projected.split([self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
    xbc = _mask(
        _convolve(self, xbc, self.conv1d.weight.squeeze(1), self.conv1d.bias, cache_params, conv_state, decoding),
        attention_mask,
    )
    groups, n, heads, p = self.n_groups, self.ssm_state_size, self.num_heads, self.head_dim
    x, B, C = torch.split(xbc, [self.intermediate_size, groups * n, groups * n], dim=-1)
    dt = F.softplus(dt.float() + self.dt_bias.float())
    if not decoding:  # transformers clamps Δ in the chunked scan only
        dt = dt.clamp(self.time_step_limit[0], self.time_step_limit[1])
    log_decay = -torch.exp(self.A_log.float()) * dt  # (B, T, H)
    x = x.reshape(batch, length, heads, p)
    # Each group's B and C serve heads // groups consecutive heads.
    B = B.reshape(batch, length, groups, n).float().repeat_interleave(heads // groups, dim=2)
    C = C.reshape(batch, length, groups, n).float().repeat_interleave(heads // groups, dim=2)
    x_dt = x.float() * dt[..., None]
    with torch.autocast(hidden_states.device.type, enabled=False):
        if decoding:
            y, new_state = ssd_step(ssm_state.float(), x_dt[:, 0], log_decay[:, 0], B[:, 0], C[:, 0])
            ssm_state.copy_(new_state)
            y = y[:, None]
        else:
            backend = "reference" if self._phaselm_ops == "reference" else "auto"
            y, final = ssd(
                x_dt,
                log_decay,
                B,
                C,
                None if ssm_state is None else ssm_state.float(),
                backend=backend,
                chunk_size=self.chunk_size,
            )
            if cache_params is not None:
                cache_params.update_recurrent_state(final, layer_idx=self.layer_idx)
    y = y + x.float() * self.D.float()[:, None]
    y = self.norm(y.reshape(batch, length, -1), gate)
    return self.out_proj(y.to(dtype))
