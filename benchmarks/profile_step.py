"""Time one training step of each model at the recipe's shape and profile where K-SSM spends it.

    PYTHONPATH=src python3 benchmarks/profile_step.py [--steps 30] [--out DIR]

For each variant: median training tokens/s over ``--steps`` steps after 5 warm-up steps (bf16
autocast, AdamW, gradient clipping — what train() does). Variants: the GPT baseline, K-SSM
with the fused kernels (harmonics and SSD scan), K-SSM with the direct (reference) harmonics,
K-SSM with the chunked PyTorch SSD scan (``PHASELM_BACKEND_SSD=chunked``), and GPT and K-SSM (both SSD
paths) under torch.compile. Then a torch.profiler table of the K-SSM step's top CUDA kernels.
Writes speeds.json and profile.txt to --out.

``--variant NAME RECIPE eager|compiled|blocks [KEY=VALUE ...]`` (repeatable) times those instead
("blocks": each layer of the stack compiled on its own, identical layers reusing the code; GF-MH
compiles in a third of the time on CPU, see benchmarks/compile_time.py; whole-model compile is
what train() does), e.g.
the fusion models with fla's RWKV-6 kernel against our chunked path (``fusion.scan=chunked``);
``--no-profile`` skips the profiler table. Every variant also reports ``setup_s``: the time of
its warm-up steps, where compilation and Triton autotuning happen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import phaselm.oscillators as oscillators
from phaselm.config import load_recipe, parse_override
from phaselm.experiments.language_model import LMRecipe, build_lm
from phaselm.objectives import LanguageModelObjective
from phaselm.ops import harmonics as harmonics_ops

VOCAB = 65


MODES = ("eager", "compiled", "blocks")


def repeated_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of layers: its longest ModuleList (``blocks``, or GPT-2's ``transformer.h``)."""
    return max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len)


def make(recipe_path: str, mode: str, overrides: dict | None = None, device: str = "cuda"):
    recipe = load_recipe(LMRecipe, recipe_path, overrides)
    torch.manual_seed(0)
    model = build_lm(recipe, VOCAB).to(device)
    objective = LanguageModelObjective(model, recipe.kssm.reg_weight if recipe.arch == "kssm" else 0.0)
    forward = torch.compile(objective) if mode == "compiled" else objective
    if mode == "blocks":
        for block in repeated_blocks(model):
            block.compile()  # in place, block by block: identical blocks reuse the compiled code
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    return recipe, objective, forward, optimizer


def step(forward, objective, optimizer, x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = forward(x, y)
    out.losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_variant(recipe_path: str, mode: str, steps: int, overrides: dict | None = None) -> dict:
    recipe, objective, forward, optimizer = make(recipe_path, mode, overrides)
    b, t = recipe.train.batch_size, recipe.train.seq_len
    x = torch.randint(0, VOCAB, (b, t), device="cuda")
    y = torch.randint(0, VOCAB, (b, t), device="cuda")
    start = time.perf_counter()
    for _ in range(5):
        step(forward, objective, optimizer, x, y)
    torch.cuda.synchronize()
    setup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(forward, objective, optimizer, x, y)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median_step_s": median, "tokens_per_s": b * t / median, "setup_s": setup,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/profile")
    parser.add_argument("--kssm", default="recipes/kssm-v3.toml")
    parser.add_argument("--gpt", default="recipes/gpt-baseline.toml")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar="NAME RECIPE eager|compiled|blocks [KEY=VALUE]"
    )
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # (name, recipe, mode, harmonics backend, SSD backend, recipe overrides)
    variants = [
        ("gpt", args.gpt, "eager", "fused", "auto", {}),
        ("kssm", args.kssm, "eager", "fused", "fused", {}),
        ("kssm-reference-harmonics", args.kssm, "eager", "reference", "fused", {}),
        ("kssm-chunked-ssd", args.kssm, "eager", "fused", "chunked", {}),
    ]
    if not args.no_compile:
        variants += [
            ("gpt-compiled", args.gpt, "compiled", "fused", "auto", {}),
            ("kssm-compiled", args.kssm, "compiled", "fused", "fused", {}),
            ("kssm-compiled-chunked-ssd", args.kssm, "compiled", "fused", "chunked", {}),
        ]
    if args.variant:
        for name, _path, mode, *_ in args.variant:
            if mode not in MODES:
                parser.error(f"--variant {name}: the mode must be one of {', '.join(MODES)}, got {mode!r}")
        variants = [(name, path, mode, "fused", "auto", dict(parse_override(s) for s in sets))
                    for name, path, mode, *sets in args.variant]
    speeds = {}
    for name, path, mode, harmonics_backend, ssd_backend, overrides in variants:
        oscillators._harmonics_op = (
            harmonics_ops.harmonics if harmonics_backend == "fused" else harmonics_ops.harmonics_reference
        )
        os.environ["PHASELM_BACKEND_SSD"] = ssd_backend  # refines the models' "auto" scan at each call
        torch._dynamo.reset()  # a compiled variant must not reuse a graph traced under another backend
        torch.cuda.reset_peak_memory_stats()
        try:
            speeds[name] = time_variant(path, mode, args.steps, overrides)
        except Exception as error:  # a variant that fails (e.g. compile) must not hide the others
            speeds[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
        print(name, speeds[name], flush=True)
    if "tokens_per_s" in speeds.get("gpt", {}):
        for s in speeds.values():
            if "tokens_per_s" in s:
                s["ratio_to_gpt"] = s["tokens_per_s"] / speeds["gpt"]["tokens_per_s"]
    (out / "speeds.json").write_text(json.dumps(speeds, indent=2))
    if args.no_profile:
        return

    oscillators._harmonics_op = harmonics_ops.harmonics
    os.environ["PHASELM_BACKEND_SSD"] = "triton"
    recipe, objective, forward, optimizer = make(args.kssm, "eager")
    b, t = recipe.train.batch_size, recipe.train.seq_len
    x = torch.randint(0, VOCAB, (b, t), device="cuda")
    for _ in range(3):
        step(forward, objective, optimizer, x, x)
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        for _ in range(5):
            step(forward, objective, optimizer, x, x)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    (out / "profile.txt").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
