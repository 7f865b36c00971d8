"""``phaselm demo``: the whole Phase-Mamba pipeline on the embedded corpus, sized for a 2-core CPU.

1. pretrain a small HF Mamba (char-level Tiny Shakespeare) → ``OUT/backbone/model``
2. load it back with ``from_pretrained``, graft a Phase Core at its middle layer
3. train the core with the Phase-Mamba losses and the drift controller on
4. observe R/U on validation text, generate blind and measured samples
5. write ``OUT/{config.toml, metrics.jsonl, summary.json, plots/*.png, report.md}``
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..backbones import MambaSpec
from ..errors import PhaseLMError
from ..run_directory import holds_run
from ..training import TrainConfig
from .phase_mamba import BackboneConfig, PhaseMambaRecipe, PretrainRecipe, pretrain, train_core

# Measured on a 2-core CPU: ~1 s per pretraining step and ~0.6 s per core step at these shapes
# (HF Mamba runs its reference scan without mamba_ssm), about 5 minutes in all.
DEMO_PRETRAIN = PretrainRecipe(
    model=MambaSpec(hidden_size=64, n_layers=4),
    train=TrainConfig(steps=360, batch_size=16, seq_len=64, lr=3e-3, min_lr=3e-4, warmup_steps=20, log_every=10),
)
DEMO_CORE_TRAIN = TrainConfig(steps=120, batch_size=16, seq_len=64, lr=1e-2, min_lr=1e-3, warmup_steps=10, log_every=5)


def demo_recipes(out: Path, quick: bool = False) -> tuple[PretrainRecipe, PhaseMambaRecipe]:
    """The demo's two recipes (pretrain a small Mamba, train a core on it under ``out``); toy-sized if ``quick``."""
    pre, core_train = DEMO_PRETRAIN, DEMO_CORE_TRAIN
    if quick:  # a smoke test of the whole pipeline in seconds
        pre = replace(
            pre,
            model=MambaSpec(hidden_size=16, n_layers=2),
            train=replace(pre.train, steps=6, batch_size=4, seq_len=32, log_every=2, eval_batches=2),
        )
        core_train = replace(core_train, steps=6, batch_size=4, seq_len=32, log_every=2, eval_batches=2)
    core = PhaseMambaRecipe(backbone=BackboneConfig(name=str(out / "backbone" / "model")), train=core_train)
    if quick:
        core = replace(core, sample=replace(core.sample, max_new_tokens=20))
    return pre, core


def run_demo(out: str | os.PathLike = "runs/demo", quick: bool = False, progress: bool = True) -> dict:
    """Pretrain the demo backbone into ``out/backbone``, train a core on it into ``out``; the core run's summary."""
    out = Path(out)
    if out.exists() and (holds_run(out) or (out / "backbone").exists()):
        raise PhaseLMError(f"{out} already holds a demo run; remove it (rm -r {out}) or pass --out to another folder")
    pre, core = demo_recipes(out, quick)
    command = f"phaselm demo --out {out}" + (" --quick" if quick else "")
    pretrain(pre, out / "backbone", progress=progress, command=command)
    return train_core(core, out, progress=progress, command=command)
