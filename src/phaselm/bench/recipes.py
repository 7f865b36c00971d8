"""Speed profile of language-model recipes against a baseline, measured in one run.

``bench(["recipes/fusion-gf-mh.toml", ...], baseline="recipes/gpt2-fusion-baseline.toml")`` builds
each recipe's model (random weights: speed does not depend on them) and measures, on one device:

- training tokens/s at each batch size (seq 512 by default): forward + backward + AdamW step,
  bf16 autocast on CUDA (what ``train()`` does), median over timed steps after warm-up; eager,
  and at ``compile_batches`` also with the model under ``torch.compile`` (``train()``'s default
  on CUDA);
- inference tokens/s at each batch size: a no-grad forward over (batch, seq);
- decode cost per token (ms) at batch 1 after contexts of 64 … 4096 tokens, through the model's
  cache in its own dtype (:func:`.timing.decode_ms_per_token`; flat for the recurrent models,
  the baseline's grows with the context and stops at its ``n_positions``);

and reports every model's numbers with ratios to the baseline: ``train_step_ratio`` = step time /
baseline step time (the issue's target: GF-MH ≤ 1.0 at batch 16), ``infer_speed_ratio`` = tokens/s
/ baseline tokens/s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import load_recipe
from .timing import autocast, decode_ms_per_token, median_seconds


@dataclass
class BenchConfig:
    """What ``phaselm bench`` times per recipe: training and inference batches, repetitions, decode contexts."""

    batches: tuple[int, ...] = (1, 4, 16, 64)
    seq_len: int = 512
    steps: int = 10
    warmup: int = 3
    decode_contexts: tuple[int, ...] = (64, 256, 1024, 4096)
    decode_tokens: int = 32
    vocab_size: int | None = None  # None: 65 for char-level recipes (Tiny Shakespeare), else tokenizer.vocab_size
    # Batches also timed with the training step under torch.compile (what `train()` does on
    # CUDA); each model is compiled once, so these cost a compilation per model.
    compile_batches: tuple[int, ...] = ()
    compile_backend: str = "inductor"


def _train_tokens_per_s(model, batch: int, cfg: BenchConfig, vocab: int, device) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, cfg.seq_len), device=device)
    model.train()

    def step():
        with autocast(device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, cfg.steps, cfg.warmup, device)
    model.eval()
    return batch * cfg.seq_len / seconds


@torch.no_grad()
def _infer_tokens_per_s(model, batch: int, cfg: BenchConfig, vocab: int, device) -> float:
    ids = torch.randint(0, vocab, (batch, cfg.seq_len), device=device)

    def forward():
        with autocast(device):
            model(input_ids=ids)

    return batch * cfg.seq_len / median_seconds(forward, cfg.steps, cfg.warmup, device)


def _decode_ms_per_token(model, context: int, cfg: BenchConfig, vocab: int, device) -> float:
    ids = torch.randint(0, vocab, (1, context), device=device)
    return decode_ms_per_token(model, ids, cfg.decode_tokens)


def _max_positions(recipe) -> int | None:
    if recipe.arch == "gpt2":
        return recipe.gpt.n_positions
    if recipe.arch == "kssm" and recipe.kssm.position_embedding:
        return recipe.kssm.max_position_embeddings
    return None


def _silent(message: str) -> None:
    pass


def bench_recipe(
    path: str | Path, cfg: BenchConfig, device: torch.device, overrides: dict | None = None, log=_silent
) -> dict:
    """One recipe's numbers; ``log`` gets a line after each measurement (progress on long runs)."""
    from ..experiments.language_model import LMRecipe, build_lm

    # The recipe checks the bench length against the model's positions (GPT-2's n_positions).
    recipe = load_recipe(LMRecipe, path, {**(overrides or {}), "train.seq_len": cfg.seq_len})
    vocab = cfg.vocab_size or (65 if recipe.tokenizer.kind == "char" else recipe.tokenizer.vocab_size)
    limit = _max_positions(recipe)
    torch.manual_seed(0)
    model = build_lm(recipe, vocab).to(device).eval()
    result = {
        "recipe": str(path),
        "arch": recipe.arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens_per_s": {},
        "train_tokens_per_s_compiled": {},
        "infer_tokens_per_s": {},
        "decode_ms_per_token": {},
    }
    name, started = Path(path).stem, time.perf_counter()

    def note(what: str, value: float | None, unit: str) -> None:
        shown = "—" if value is None else f"{value:,.2f} {unit}"
        log(f"[{time.perf_counter() - started:6.1f} s] {name}: {what} {shown}")

    for batch in cfg.batches:
        result["train_tokens_per_s"][str(batch)] = speed = _train_tokens_per_s(model, batch, cfg, vocab, device)
        note(f"train batch {batch}", speed, "tok/s")
        result["infer_tokens_per_s"][str(batch)] = speed = _infer_tokens_per_s(model, batch, cfg, vocab, device)
        note(f"inference batch {batch}", speed, "tok/s")
    if cfg.compile_batches:
        compiled = torch.compile(model, backend=cfg.compile_backend)  # shares the weights
        for batch in cfg.compile_batches:
            result["train_tokens_per_s_compiled"][str(batch)] = speed = _train_tokens_per_s(
                compiled, batch, cfg, vocab, device
            )
            note(f"compiled train batch {batch}", speed, "tok/s")
        del compiled
    for context in cfg.decode_contexts:
        fits = limit is None or context + 2 + cfg.decode_tokens <= limit
        result["decode_ms_per_token"][str(context)] = ms = (
            _decode_ms_per_token(model, context, cfg, vocab, device) if fits else None
        )
        note(f"decode after {context} tokens", ms, "ms/token")
    del model
    return result


def bench(recipes: list[str | Path], baseline: str | Path, cfg: BenchConfig | None = None, device: str | None = None,
          overrides: dict | None = None, log=_silent) -> dict:
    """Measure ``baseline`` and every recipe in one run; ratios are against the baseline."""
    cfg = cfg or BenchConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = bench_recipe(baseline, cfg, device, overrides, log)
    models = []
    for path in recipes:
        r = bench_recipe(path, cfg, device, overrides, log)
        r["train_step_ratio"] = {
            b: base["train_tokens_per_s"][b] / r["train_tokens_per_s"][b] for b in r["train_tokens_per_s"]
        }
        r["train_step_ratio_compiled"] = {
            b: base["train_tokens_per_s_compiled"][b] / r["train_tokens_per_s_compiled"][b]
            for b in r["train_tokens_per_s_compiled"]
        }
        r["infer_speed_ratio"] = {
            b: r["infer_tokens_per_s"][b] / base["infer_tokens_per_s"][b] for b in r["infer_tokens_per_s"]
        }
        models.append(r)
    for r in [base, *models]:
        decode = [v for v in r["decode_ms_per_token"].values() if v is not None]
        # Last measured context over the first: ≈ 1 is flat; the baseline's KV cache makes it grow.
        r["decode_growth"] = decode[-1] / decode[0] if len(decode) > 1 else None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": device_name, "settings": asdict(cfg), "baseline": base, "models": models}


def table(result: dict) -> list[str]:
    """Markdown rows: model, batch, train tok/s, step-time ratio, inference tok/s, speed ratio;
    then the compiled training rows, if any, and the decode cost per token."""
    lines = [
        "| model | batch | train tok/s | step time / baseline | infer tok/s | infer speed / baseline |",
        "|---|---|---|---|---|---|",
    ]
    base = result["baseline"]
    for b in base["train_tokens_per_s"]:
        lines.append(
            f"| {Path(base['recipe']).stem} (baseline) | {b} | {base['train_tokens_per_s'][b]:,.0f} | 1.00 | "
            f"{base['infer_tokens_per_s'][b]:,.0f} | 1.00 |"
        )
    for r in result["models"]:
        for b in r["train_tokens_per_s"]:
            lines.append(
                f"| {Path(r['recipe']).stem} | {b} | {r['train_tokens_per_s'][b]:,.0f} | "
                f"{r['train_step_ratio'][b]:.2f} | "
                f"{r['infer_tokens_per_s'][b]:,.0f} | {r['infer_speed_ratio'][b]:.2f} |"
            )
    if base.get("train_tokens_per_s_compiled"):
        lines += ["", "| model (torch.compile) | batch | train tok/s | step time / baseline |", "|---|---|---|---|"]
        for b, speed in base["train_tokens_per_s_compiled"].items():
            lines.append(f"| {Path(base['recipe']).stem} (baseline) | {b} | {speed:,.0f} | 1.00 |")
        for r in result["models"]:
            for b, speed in r["train_tokens_per_s_compiled"].items():
                lines.append(
                    f"| {Path(r['recipe']).stem} | {b} | {speed:,.0f} | {r['train_step_ratio_compiled'][b]:.2f} |"
                )
    contexts = list(base["decode_ms_per_token"])
    lines += [
        "",
        "| model | " + " | ".join(f"decode ms/token @ {c}" for c in contexts) + " | growth |",
        "|---" * (len(contexts) + 2) + "|",
    ]
    for r in [base, *result["models"]]:
        cells = ["—" if r["decode_ms_per_token"][c] is None else f"{r['decode_ms_per_token'][c]:.2f}" for c in contexts]
        growth = r.get("decode_growth")
        lines.append(
            f"| {Path(r['recipe']).stem} | " + " | ".join(cells) + f" | {'—' if growth is None else f'{growth:.2f}'} |"
        )
    return lines
