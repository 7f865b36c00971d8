"""What the training-loop tests share: a tiny config, a random token stream, reading metrics."""

from __future__ import annotations

import json

import torch

from phaselm.training import TrainConfig
from tiny_models import VOCAB

CFG = TrainConfig(steps=6, batch_size=2, seq_len=8, lr=1e-2, min_lr=1e-3, warmup_steps=2, log_every=2, eval_batches=2)


def token_streams() -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random stream of 600 ids: 500 to train on, 100 to validate on."""
    g = torch.Generator().manual_seed(1)
    stream = torch.randint(0, VOCAB, (600,), generator=g)
    return stream[:500], stream[500:]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
