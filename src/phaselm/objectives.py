"""What the training loop trains: an :class:`Objective` returns the named loss terms, the
logits and (when there are oscillators) R per position for a batch ``(x, y)``.

:class:`LanguageModelObjective` is next-token cross-entropy of a causal LM (a backbone, a baseline,
K-SSM, the fusion models); :class:`PhaseCoreObjective` trains a Phase Core grafted onto a frozen
backbone with the Phase-Mamba losses and the drift controller. :func:`step_metrics` turns one
step's output into the logged observables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import sequential_batches
from .graft import Graft
from .losses import LossConfig, phase_lm_losses
from .observables import GOLDILOCKS, DriftConfig, DriftController, normalized_entropy, tone_histogram
from .phase_block import PhaseBlock


@dataclass
class StepOutput:
    """What an objective returns for a batch: the named losses, logits (B, T, V) and optionally R and gates."""

    losses: dict[str, torch.Tensor]  # "loss" is what is minimised; the rest are logged
    logits: torch.Tensor  # (B, T, V)
    order: torch.Tensor | None = None  # (B, T) R per position, when the model has oscillators
    gate_means: torch.Tensor | None = None  # (n_layers,) fusion gates (RWKV share), when the model has them
    # (B, T) the Kuramoto token mixer's R, mean over layers and heads, when the model has that mixer
    mixer_order: torch.Tensor | None = None


class Objective(nn.Module):
    """Base class: subclasses set ``self.saved`` (the module to checkpoint) and define forward."""

    saved: nn.Module

    def after_step(self, out: StepOutput) -> dict:
        """Called once per optimizer step; may act (drift) and returns extra metrics."""
        return {}

    def extra_state(self) -> dict:
        """State outside the module's parameters that a checkpoint must keep (none here)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned (nothing here)."""

    @torch.no_grad()
    def evaluate(self, val_ids: torch.Tensor, batch_size: int, seq_len: int, max_batches: int) -> dict:
        """``{"val_ce": ...}``: mean cross-entropy over the first batches of the 1-D id stream ``val_ids``."""
        return {"val_ce": mean_ce(self, val_ids, batch_size, seq_len, max_batches)}


def mean_ce(objective: nn.Module, ids: torch.Tensor, batch_size: int, seq_len: int, max_batches: int) -> float:
    """Token-weighted mean cross-entropy of ``objective`` over the first ``max_batches`` sequential
    batches of the 1-D stream ``ids`` (windows of ``seq_len``, ``batch_size`` at a time)."""
    device = next(objective.parameters()).device
    total, count = 0.0, 0
    for i, (x, y) in enumerate(sequential_batches(ids, batch_size, seq_len)):
        if i >= max_batches:
            break
        out = objective(x.to(device), y.to(device))
        total += float(out.losses["ce"]) * y.numel()
        count += y.numel()
    return total / count


class LanguageModelObjective(Objective):
    """Next-token cross-entropy of a causal LM (a backbone, a baseline, or K-SSM).

    A model whose output carries a bank regulariser (``reg``) adds ``reg_weight · reg`` to the
    loss (logged as ``bank_reg``); one that carries R per layer (``orders``) reports R as the
    mean over layers per position; one that carries fusion gates (``gate_means``) logs them per
    layer; one with the Kuramoto token mixer (``mixer_orders``: K-SSM's mixer or a fusion branch)
    reports its R as the mean over layers and heads per position (logged as ``mixer_r_mean``).
    Validation always reports pure cross-entropy.
    """

    def __init__(self, lm: nn.Module, reg_weight: float = 0.0):
        super().__init__()
        self.lm = lm
        self.saved = lm
        self.reg_weight = reg_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """x, y (B, T) ids and next ids → CE (+ reg_weight·reg where the model has one), logits, R (B, T) if any."""
        out = self.lm(input_ids=x)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        losses = {"loss": ce, "ce": ce}
        reg = getattr(out, "reg", None)
        if reg is not None:
            losses.update(loss=ce + self.reg_weight * reg, bank_reg=reg)
        orders = getattr(out, "orders", None)
        order = orders.mean(1) if orders is not None else None
        mixer_orders = getattr(out, "mixer_orders", None)  # (B, n_layers, T, heads)
        mixer_order = mixer_orders.mean((1, 3)) if mixer_orders is not None else None
        return StepOutput(losses, out.logits, order, getattr(out, "gate_means", None), mixer_order)


class PhaseCoreObjective(Objective):
    """A frozen backbone with a grafted Phase Core, trained on the Phase-Mamba losses.

    The backbone and core are both submodules, so ``accelerate`` wraps one module and gradient
    synchronisation covers the core's parameters (the only ones that require grad). A grafted
    PhaseBlock runs its own drift controller inside its forward; its batch action is logged.
    """

    def __init__(self, handle: Graft, loss: LossConfig, drift: DriftConfig):
        super().__init__()
        self.handle = handle
        self.backbone = handle.model
        self.core = handle.core
        self.saved = handle.core
        self.loss_config = loss
        self.drift = DriftController(drift) if drift.enabled and not isinstance(self.core, PhaseBlock) else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """x, y (B, T) ids and next ids → the Phase-Mamba losses, logits (B, T, V) and the core's R (B, T)."""
        logits = self.backbone(input_ids=x).logits
        order = self.handle.last.order
        return StepOutput(phase_lm_losses(logits, y, order, self.loss_config), logits, order)

    def after_step(self, out: StepOutput) -> dict:
        """Let the drift controller act on this step's mean R; the coupling scale (and the action) to log."""
        metrics = {"coupling_scale": float(self.core.coupling_scale)}
        if self.drift is not None:
            action = self.drift.step(float(out.order.detach().mean()))
            # Acts on the next step: K_eff = K · scale.
            self.core.coupling_scale.fill_(self.drift.scale)
            metrics["drift_action"] = action
        elif isinstance(self.core, PhaseBlock) and self.core.last_action is not None:
            metrics["drift_action"] = self.core.last_action
        return metrics

    def extra_state(self) -> dict:
        """The drift controller's scale on K, which a resumed run must continue from."""
        return {"drift_scale": self.drift.scale if self.drift else 1.0}

    def load_extra_state(self, state: dict) -> None:
        """Restore the drift scale that :meth:`extra_state` saved (1 where it is missing)."""
        if self.drift is not None:
            self.drift.scale = float(state.get("drift_scale", 1.0))

    @torch.no_grad()
    def evaluate(self, val_ids, batch_size, seq_len, max_batches) -> dict:
        """Validation CE with the core, and CE and perplexity without it, over the 1-D id stream ``val_ids``."""
        with_core = mean_ce(self, val_ids, batch_size, seq_len, max_batches)
        with self.handle.disabled():
            without_core = mean_ce(self, val_ids, batch_size, seq_len, max_batches)
        return {
            "val_ce": with_core,
            "val_ce_without_core": without_core,
            "val_ppl_without_core": math.exp(min(without_core, 50.0)),
        }


def step_metrics(out: StepOutput) -> dict:
    """Observables of one training batch, per token (never on batch means)."""
    with torch.no_grad():
        metrics = {k: float(v) for k, v in out.losses.items()}
        u = normalized_entropy(out.logits.detach())
        metrics["u_mean"] = float(u.mean())
        if out.order is not None:
            r = out.order.detach().float()
            metrics.update(
                r_mean=float(r.mean()),
                r_min=float(r.min()),
                r_max=float(r.max()),
                ru_mean=float((r * u).mean()),
                tones=tone_histogram(r),
                goldilocks_residence=GOLDILOCKS.residence(r, u),
            )
        if out.mixer_order is not None:  # the Kuramoto mixer's synchrony, apart from a bank's R
            mixer_r = out.mixer_order.detach().float()
            metrics.update(mixer_r_mean=float(mixer_r.mean()), mixer_r_min=float(mixer_r.min()),
                           mixer_r_max=float(mixer_r.max()))
        if out.gate_means is not None:  # the fusion gates over training, one value per layer
            metrics["gate_rwkv_share"] = [round(float(g), 5) for g in out.gate_means]
    return metrics
