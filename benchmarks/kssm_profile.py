"""Where K-SSM v3's training step goes, and what each SSD × bank backend pair is worth under compile.

    PYTHONPATH=src python3 benchmarks/kssm_profile.py [--steps 20] [--kssm recipes/kssm-v3.toml]
    PYTHONPATH=src python3 benchmarks/kssm_profile.py --smoke      # CPU, tiny shapes, seconds

(i) Median training tokens/s of compiled steps (torch.compile of the model's loss, bf16
autocast on CUDA, AdamW, gradient clipping: what train() does) at the recipe's batch and
sequence length, for every SSD backend × bank backend pair (set through
``PHASELM_BACKEND_SSD`` / ``PHASELM_BACKEND_BISTABLE_BANK``, which refine the model's "auto")
and for the GPT baseline, all in this process. (ii) A torch.profiler breakdown of one step of
each model by module group — mixer, bank, MLP, attention, optimizer, other (the rest of the
step: embedding, head, loss, clipping) — in ms of device time (CPU time on a CPU). Modules
are attributed through hooks that open profiler ranges, which torch.compile would trace away,
so the breakdown is of an eager step with the backends "auto" picks.

Prints markdown tables; with ``$OUT`` set also writes ``$OUT/kssm_profile.json``.
``--smoke`` shrinks the models and the batch, compiles with the "eager" backend (Dynamo
only: checks there is no graph break without Inductor's C++ build) and runs on the CPU; the
Triton pairs run there only under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from phaselm.config import load_recipe, parse_override
from phaselm.experiments.language_model import LMRecipe, build_lm
from phaselm.objectives import LanguageModelObjective
from phaselm.ops.backend import chosen, triton_runs_on

VOCAB = 65
SSD_BACKENDS = ("chunked", "triton")
BANK_BACKENDS = ("reference", "triton")
GROUPS = ("mixer", "bank", "mlp", "attention", "optimizer", "other")
# The last name of a module → its group (K-SSM's blocks; Hugging Face GPT-2's attn/mlp and norms).
GROUP_OF = {
    "mixer": "mixer",
    "mixer_norm": "mixer",
    "bank": "bank",
    "bank_norm": "bank",
    "mlp": "mlp",
    "mlp_norm": "mlp",
    "ln_2": "mlp",
    "attn": "attention",
    "ln_1": "attention",
}
SMOKE = {
    "kssm": {"kssm.hidden_size": 32, "kssm.n_layers": 1, "kssm.head_dim": 16, "kssm.state_size": 16,
             "kssm.n_oscillators": 8, "kssm.n_harmonics": 4, "kssm.chunk_size": 16},
    "gpt2": {"gpt.n_embd": 32, "gpt.n_layer": 1, "gpt.n_head": 2},
    "fusion": {"fusion.hidden_size": 32, "fusion.n_layers": 1, "fusion.rwkv_head_dim": 16, "fusion.mamba_head_dim": 16},
    "train": {"train.batch_size": 2, "train.seq_len": 20},
}


# --set KEY=VALUE overrides for both recipes (e.g. the fusion target's batch 16 × 512)
OVERRIDES: dict = {}


def build(recipe_path: str, device: str, smoke: bool, fused_adamw: bool = False):
    overrides = {**SMOKE["train"], **OVERRIDES} if smoke else dict(OVERRIDES)
    recipe = load_recipe(LMRecipe, recipe_path, overrides)
    if smoke:
        size = {"kssm": "kssm", "fusion": "fusion"}.get(recipe.arch, "gpt2")
        recipe = load_recipe(LMRecipe, recipe_path, {**overrides, **SMOKE[size]})
    torch.manual_seed(0)
    model = build_lm(recipe, VOCAB).to(device)
    objective = LanguageModelObjective(model, recipe.kssm.reg_weight if recipe.arch == "kssm" else 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1,
                                  **({"fused": True} if fused_adamw else {}))
    return recipe, objective, optimizer


def train_step(forward, objective, optimizer, x, y, device: str):
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    with autocast:
        loss = forward(x, y).losses["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
    with torch.profiler.record_function("group::optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batch(recipe, device: str):
    shape = (recipe.train.batch_size, recipe.train.seq_len)
    return torch.randint(0, VOCAB, shape, device=device), torch.randint(0, VOCAB, shape, device=device)


def is_kernel(event, device: str) -> bool:
    """A profiler row that is work on the device: not a user annotation such as the optimizer's
    "Optimizer.step#AdamW.step", whose device row is the span from its first kernel to its last,
    idle gaps included, over kernels that have rows of their own (counting it twice inflated
    every kernel-time total before 2026-11-26's third session)."""
    if getattr(event, "is_user_annotation", False) or event.key.startswith(("Optimizer.", "ProfilerStep")):
        return False
    if device != "cuda":
        return event.self_cpu_time_total > 0
    return event.device_time_total > 0 and event.device_type == torch.autograd.DeviceType.CUDA


def top_kernels(forward, objective, optimizer, x, y, device: str, count: int) -> dict:
    """One more compiled step under the profiler: its kernels by device time (what bounds the step:
    a few long matmuls, or many short launches)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        train_step(forward, objective, optimizer, x, y, device)
        synchronize(device)
    kernels = [e for e in prof.key_averages() if is_kernel(e, device)]
    time_of = (lambda e: e.device_time_total) if device == "cuda" else (lambda e: e.self_cpu_time_total)
    kernels.sort(key=time_of, reverse=True)
    return {
        "launches": sum(e.count for e in kernels),
        "device_ms": sum(time_of(e) for e in kernels) / 1e3,
        "top": [{"name": e.key[:90], "calls": e.count, "ms": time_of(e) / 1e3} for e in kernels[:count]],
    }


def tokens_per_s(recipe_path: str, device: str, steps: int, warmup: int, smoke: bool, kernels: int = 0,
                 mode: str = "default", fused_adamw: bool = False) -> dict:
    recipe, objective, optimizer = build(recipe_path, device, smoke, fused_adamw)
    options = {} if smoke or mode == "default" else {"mode": mode}
    forward = torch.compile(objective, backend="eager" if smoke else "inductor", fullgraph=smoke, **options)
    x, y = batch(recipe, device)
    start = time.perf_counter()
    for _ in range(warmup):
        train_step(forward, objective, optimizer, x, y, device)
    synchronize(device)
    setup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(forward, objective, optimizer, x, y, device)
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"tokens_per_s": x.numel() / median, "median_step_ms": 1e3 * median, "setup_s": setup}
    if kernels:
        result["kernels"] = top_kernels(forward, objective, optimizer, x, y, device, kernels)
    return result


class GroupRanges:
    """Forward hooks that open a profiler range ``group::NAME`` around each module of a group.

    Backward is attributed through the autograd sequence numbers the profiler records: each
    backward node ("autograd::engine::evaluate_function: …") carries the number of the forward
    op that made it, and that op sits inside a group's range. (Module backward hooks cannot do
    it: the bank returns a dataclass, which they do not see through.)"""

    def __init__(self, model: torch.nn.Module):
        self.handles = []
        for name, module in model.named_modules():
            group = GROUP_OF.get(name.rsplit(".", 1)[-1])
            if group is not None:
                ranges: list = []
                self.handles.append(module.register_forward_pre_hook(self._open(group, ranges)))
                self.handles.append(module.register_forward_hook(self._close(ranges)))

    @staticmethod
    def _open(group: str, ranges: list):
        def hook(*_):
            ranges.append(torch.profiler.record_function(f"group::{group}"))
            ranges[-1].__enter__()
        return hook

    @staticmethod
    def _close(ranges: list):
        def hook(*_):
            ranges.pop().__exit__(None, None, None)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def group_of(event) -> str | None:
    while event is not None:
        if event.name.startswith("group::"):
            return event.name.removeprefix("group::")
        event = event.cpu_parent
    return None


def breakdown(recipe_path: str, device: str, smoke: bool) -> dict:
    """ms per group, forward and backward, of one eager step after two warm-up steps."""
    recipe, objective, optimizer = build(recipe_path, device, smoke)
    x, y = batch(recipe, device)
    for _ in range(2):
        train_step(objective, objective, optimizer, x, y, device)
    synchronize(device)
    ranges = GroupRanges(objective)
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function("group::step"):
            train_step(objective, objective, optimizer, x, y, device)
        synchronize(device)
    ranges.remove()

    def spent(event) -> float:  # ms of device time (kernels under the event), or CPU time on a CPU
        return (event.device_time_total if device == "cuda" else event.cpu_time_total) / 1e3

    events = prof.events()
    totals = dict.fromkeys((*GROUPS, "step"), 0.0)
    made_by: dict[int, str] = {}  # forward op's sequence number → its group
    for event in events:
        group = group_of(event)
        if event.name.startswith("group::") and group_of(event.cpu_parent) in (None, "step"):
            totals[group] += spent(event)  # outermost group ranges: forward (and the optimizer, the step)
        elif group not in (None, "step", "optimizer") and event.sequence_nr >= 0:
            made_by.setdefault(event.sequence_nr, group)
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function") and event.sequence_nr in made_by:
            totals[made_by[event.sequence_nr]] += spent(event)
    step_ms = totals.pop("step")
    totals["other"] = max(0.0, step_ms - sum(totals.values()))
    totals["step"] = step_ms
    return totals


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kssm", default="recipes/kssm-v3.toml")
    parser.add_argument("--gpt", default="recipes/gpt-baseline.toml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Dynamo-only compile")
    parser.add_argument("--kernels", type=int, default=12,
                        help="list the N longest kernels of a compiled step (GPT, and K-SSM with auto's backends)")
    parser.add_argument("--pairs", default="chunked:reference,triton:reference,chunked:triton,triton:triton",
                        help="SSD:bank[:harmonics] backend triples to time, comma-separated")
    parser.add_argument("--settings", default="default:foreach",
                        help="compile mode:optimizer pairs, comma-separated; each times GPT and K-SSM with auto's "
                             "backends (mode: default, reduce-overhead, max-autotune-no-cudagraphs; optimizer: "
                             "foreach, fused)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the eager per-group breakdown")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for both models, e.g. train.batch_size=16 (--kssm may name any "
                             "train-lm recipe: a fusion model's kernels are listed the same way)")
    args = parser.parse_args()
    for item in args.set:
        key, value = parse_override(item)
        OVERRIDES[key] = value
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("needs a CUDA device (or --smoke for the CPU check)")
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)

    speeds: dict[str, dict] = {}
    variants = [("gpt", args.gpt, {}, {})]
    label = "kssm" if Path(args.kssm).name == "kssm-v3.toml" else Path(args.kssm).stem  # the profiled model's rows
    for pair in filter(None, args.pairs.split(",")):
        ssd, bank, *harmonics = pair.split(":")
        if ssd not in SSD_BACKENDS or bank not in BANK_BACKENDS or harmonics not in ([], ["reference"], ["triton"]):
            parser.error(f"--pairs: {pair!r} is not SSD:bank[:harmonics] with SSD in {SSD_BACKENDS}, bank in "
                         f"{BANK_BACKENDS}")
        env = {"PHASELM_BACKEND_SSD": ssd, "PHASELM_BACKEND_BISTABLE_BANK": bank}
        if harmonics:
            env["PHASELM_BACKEND_HARMONICS"] = harmonics[0]
        name = f"{label} ssd={ssd} bank={bank}" + (f" harmonics={harmonics[0]}" if harmonics else "")
        variants.append((name, args.kssm, env, {}))
    for setting in filter(None, args.settings.split(",")):
        mode, optimizer = setting.split(":")
        if optimizer not in ("foreach", "fused"):
            parser.error(f"--settings: optimizer must be foreach or fused, got {optimizer!r}")
        if setting == "default:foreach":
            continue  # the rows above
        options = {"mode": mode, "fused_adamw": optimizer == "fused"}
        variants += [(f"gpt {mode} {optimizer}-adamw", args.gpt, {}, options),
                     (f"{label} auto {mode} {optimizer}-adamw", args.kssm, {}, options)]
    for name, path, env, options in variants:
        if "triton" in env.values() and not triton_runs_on(device):
            speeds[name] = {"skipped": "Triton cannot run on this device"}
            continue
        os.environ.update(env)
        torch._dynamo.reset()  # a variant must not reuse a graph traced under other backends
        try:
            listed = name == "gpt" or env == {"PHASELM_BACKEND_SSD": "chunked",
                                              "PHASELM_BACKEND_BISTABLE_BANK": "reference"}
            speeds[name] = tokens_per_s(path, device, steps, warmup, args.smoke, args.kernels if listed else 0,
                                        **options)
        except Exception as error:  # one failing pair must not hide the others
            speeds[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
        for key in env:
            os.environ.pop(key, None)
        print(name, speeds[name], flush=True)
    rows = []
    for name, s in speeds.items():
        if "tokens_per_s" in s:
            # Each K-SSM row against the GPT row timed with the same compile mode and optimizer.
            baseline = speeds.get("gpt" + name.split(" auto", 1)[1] if " auto " in name else "gpt", {})
            gpt_speed = baseline.get("tokens_per_s")
            ratio = f"{s['tokens_per_s'] / gpt_speed:.2f}" if gpt_speed else "–"
            rows.append([name, f"{s['tokens_per_s']:,.0f}", f"{s['median_step_ms']:.2f}", ratio, f"{s['setup_s']:.1f}"])
        else:
            rows.append([name, s.get("skipped") or s.get("error"), "", "", ""])
    print("\n## Compiled training tokens/s\n")
    print(markdown(["variant", "tokens/s", "step ms", "× GPT", "warm-up s"], rows))
    for name, s in speeds.items():
        if "kernels" in s:
            k = s["kernels"]
            print(f"\n## {name}: one compiled step, {k['launches']} kernel launches, {k['device_ms']:.2f} ms of kernel "
                  "time\n")
            print(markdown(["kernel", "calls", "ms"], [[t["name"], t["calls"], f"{t['ms']:.3f}"] for t in k["top"]]))

    profiles = {}
    if args.no_breakdown:
        save(device, args, speeds, profiles)
        return
    torch._dynamo.reset()
    profiles = {"kssm": breakdown(args.kssm, device, args.smoke), "gpt": breakdown(args.gpt, device, args.smoke)}
    unit = "ms (device)" if device == "cuda" else "ms (CPU)"
    print(f"\n## One eager step by module group, {unit}; backends: {chosen()}\n")
    print(
        markdown(
            ["group", "K-SSM", "GPT"],
            [[g, f"{profiles['kssm'][g]:.2f}", f"{profiles['gpt'][g]:.2f}"] for g in (*GROUPS, "step")],
        )
    )

    save(device, args, speeds, profiles)


def save(device: str, args, speeds: dict, profiles: dict) -> None:
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "smoke": args.smoke,
                  "speeds": speeds, "breakdown_ms": profiles}
        (Path(out) / "kssm_profile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
