"""The Phase-Mamba training objective, every term returned by name so each can be logged.

total = CE + λ_U·mean|U − U*| − w_presence·mean(1 − Σp²) + w_tonal·mean((R − 0.8)·[R > 0.95])

All terms are per position, then averaged: U, the presence and the tonal penalty are not
computed on batch means (the original gated the tonal penalty on a batch-level tone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .observables import normalized_entropy


@dataclass
class LossConfig:
    """Weights and targets of the Phase-Mamba objective's terms (λ_U, U*, presence, tonal penalty)."""

    uncertainty_weight: float = 0.1  # λ_U (paper §2.3)
    uncertainty_target: float = 0.5  # U*
    presence_weight: float = 0.05  # reward on 1 − Σp² (training log, seed 001)
    tonal_weight: float = 0.5  # penalty 0.5·(R − 0.8) while over-synchronised (seed 001)
    tonal_center: float = 0.8
    tonal_threshold: float = 0.95


def phase_lm_losses(
    logits: torch.Tensor, targets: torch.Tensor, order: torch.Tensor | None, config: LossConfig
) -> dict[str, torch.Tensor]:
    """logits (B, T, V), targets (B, T), order R (B, T) or None (no core) → named scalar terms."""
    logits = logits.float()
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    uncertainty = normalized_entropy(logits)
    u_reg = (uncertainty - config.uncertainty_target).abs().mean()
    presence = (1.0 - torch.softmax(logits, -1).pow(2).sum(-1)).mean()
    if order is None:
        tonal = torch.zeros((), device=logits.device)
    else:
        over = (order > config.tonal_threshold).float()
        tonal = ((order - config.tonal_center) * over).mean()
    total = (
        ce
        + config.uncertainty_weight * u_reg
        - config.presence_weight * presence
        + config.tonal_weight * tonal
    )
    return {
        "loss": total,
        "ce": ce,
        "uncertainty_reg": u_reg,
        "presence": presence,
        "tonal": tonal,
    }
