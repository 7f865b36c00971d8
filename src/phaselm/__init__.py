"""PhaseLM: Kuramoto oscillator dynamics inside language models, measured honestly.

The names below are the public API; heavier pieces (training, experiments, CLI) are imported
from their modules.
"""

from . import models  # noqa: F401  registers K-SSM and the fusion models with transformers' Auto classes
from .backbones import load_backbone
from .errors import PhaseLMError
from .generation import generate
from .graft import Graft, graft
from .losses import LossConfig, phase_lm_losses
from .observables import (
    GOLDILOCKS,
    TONES,
    DriftConfig,
    DriftController,
    normalized_entropy,
    summarize,
    tone_of,
)
from .phase_core import PhaseCore, PhaseCoreConfig

__version__ = "0.1.0"

__all__ = [
    "GOLDILOCKS",
    "TONES",
    "DriftConfig",
    "DriftController",
    "Graft",
    "LossConfig",
    "PhaseCore",
    "PhaseCoreConfig",
    "PhaseLMError",
    "generate",
    "graft",
    "load_backbone",
    "normalized_entropy",
    "phase_lm_losses",
    "summarize",
    "tone_of",
]
