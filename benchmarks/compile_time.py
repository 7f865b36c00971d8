"""How long torch.compile takes for one training step of a recipe's model, and the steps after.

    PYTHONPATH=src python3 benchmarks/compile_time.py recipes/fusion-gf-mh.toml --mode blocks \\
        [--device cpu] [--batch 1] [--seq-len 512] [--set fusion.scan=chunked]

``--mode model`` compiles the whole training objective (what ``train()`` does on CUDA);
``--mode blocks`` compiles each layer of the model's stack on its own, so identical layers reuse
the compiled code. Prints the first forward + backward (tracing and compilation included) and
the median of the next ``--steps`` steps, in seconds. No optimizer and no autocast: this times
the compiler, not the training recipe. Inductor's on-disk caches are off, so every run compiles
from scratch (with them, a second run of the same graphs takes seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # before torch: cold compiles only

import torch
from profile_step import VOCAB, make

from phaselm.config import parse_override


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--mode", choices=("model", "blocks"), default="model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    overrides = dict(parse_override(item) for item in args.set)
    _, _, forward, _ = make(args.recipe, "compiled" if args.mode == "model" else "blocks", overrides, args.device)
    x = torch.randint(0, VOCAB, (args.batch, args.seq_len), device=args.device)

    def step() -> float:
        start = time.perf_counter()
        forward(x, x).losses["loss"].backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = step()
    rest = statistics.median(step() for _ in range(args.steps))
    print(f"{args.recipe} mode {args.mode} on {args.device}, batch {args.batch} x {args.seq_len}: "
          f"first step (compile) {first:.1f} s, then {rest:.3f} s per step")


if __name__ == "__main__":
    main()
