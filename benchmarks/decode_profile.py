"""Why does `phaselm bench` decode the GPT-2 baseline ~10× slower than a plain `generate`?

    PYTHONPATH=src python3 benchmarks/decode_profile.py --out $OUT [--recipe recipes/gpt2-fusion-baseline.toml]

Times one model's cached decode five ways on one device, after a 64-token prompt, 64 tokens each:

- bench:      phaselm.bench.recipes' loop as it is (autocast entered per step, no mask / positions);
- no-autocast: the same loop without autocast (float32 weights);
- bf16-model: the model cast to bf16, no autocast;
- generate:   model.generate(max_new_tokens=64, min_new_tokens=64), prefill subtracted;
- step-decoder: phaselm.decoding.StepDecoder (eager), the loop bench_backbone uses;

and writes a torch.profiler table of one bench-loop step (ops by count and by CUDA time) so the
difference can be read off. Results: decode_profile.json / decode_profile.txt in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(recipe: str, device: str):
    from phaselm.config import load_recipe
    from phaselm.experiments.language_model import LMRecipe, build_lm

    lm_recipe = load_recipe(LMRecipe, recipe, {"train.seq_len": 128})
    vocab = 65 if lm_recipe.tokenizer.kind == "char" else lm_recipe.tokenizer.vocab_size
    torch.manual_seed(0)
    return build_lm(lm_recipe, vocab).to(device).eval(), vocab


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def loop(model, ids, tokens, autocast: bool):
    ctx = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if autocast
        else (lambda: torch.autocast("cuda", enabled=False))
    )
    with ctx():
        out = model(input_ids=ids, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(3):
        with ctx():
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync()
    started = time.perf_counter()
    for _ in range(tokens):
        with ctx():
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync()
    return 1000 * (time.perf_counter() - started) / tokens, cache, token


@torch.no_grad()
def generate_ms(model, ids, tokens):
    kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
    sync()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    sync()
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, **kwargs)
    sync()
    return 1000 * (time.perf_counter() - t0 - prefill) / tokens


@torch.no_grad()
def step_decoder_ms(model, ids, tokens):
    from phaselm.decoding import StepDecoder

    decoder = StepDecoder(model, ids, graph=False)
    token = decoder.first_logits.argmax(-1, keepdim=True)
    for _ in range(3):
        token = decoder.step(token).argmax(-1, keepdim=True)
    sync()
    t0 = time.perf_counter()
    for _ in range(tokens):
        token = decoder.step(token).argmax(-1, keepdim=True)
    sync()
    return 1000 * (time.perf_counter() - t0) / tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/decode-profile")
    parser.add_argument("--recipe", action="append", default=None)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, texts = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "models": {}}, []
    for recipe in args.recipe or ["recipes/gpt2-fusion-baseline.toml"]:
        model, vocab = build(recipe, device)
        ids = torch.randint(0, vocab, (1, 64), device=device)
        row = {}
        row["bench"], cache, token = loop(model, ids, args.tokens, autocast=True)
        row["no-autocast"], _, _ = loop(model, ids, args.tokens, autocast=False)
        row["generate"] = generate_ms(model, ids, args.tokens)
        row["step-decoder"] = step_decoder_ms(model, ids, args.tokens)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with (
            profile(activities=activities) as prof,
            torch.no_grad(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"),
        ):
            model(input_ids=token, past_key_values=cache, use_cache=True)
        events = prof.key_averages()
        row["bench_step_ops"] = sum(e.count for e in events if e.key.startswith("aten::"))
        texts.append(f"## {recipe}: one bench-loop step\n\n" + events.table(sort_by="count", row_limit=30))
        texts.append(events.table(sort_by="self_cpu_time_total", row_limit=20))
        model.to(torch.bfloat16)
        row["bf16-model"], _, _ = loop(model, ids, args.tokens, autocast=False)
        report["models"][recipe] = row
        print(recipe, {k: round(v, 3) for k, v in row.items()}, flush=True)
        del model
    (out / "decode_profile.json").write_text(json.dumps(report, indent=2))
    (out / "decode_profile.txt").write_text("\n\n".join(texts))
    print("| recipe | " + " | ".join(next(iter(report["models"].values()))) + " |")
    for recipe, row in report["models"].items():
        print(f"| {Path(recipe).stem} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
