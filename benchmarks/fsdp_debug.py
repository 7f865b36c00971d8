"""Why does ``train.distributed = "fsdp"`` not learn on GPUs? A one-shot diagnostic (issue 16, point 3).

On 2 × H200 (NCCL) a K-SSM run with FSDP stayed at its initial loss while DDP and one process
learned; on the CPU (gloo) FSDP matches DDP. This script trains a small K-SSM through the real
``phaselm.training.train`` (the package's own model, objective, optimizer, clipping and FSDP
sharding; nothing re-implemented) over a matrix of settings and records, for every optimizer
step, what a wrong FSDP step would show:

- ``loss``: the logged training loss (rank 0's micro-batch; DDP and FSDP runs of one launch
  size draw the same batches, so their losses are comparable step by step);
- ``grad_norm``: the norm ``train()``'s clipping returned (full, before clipping) and
  ``grad_norm_clipped``: the norm of the full gradients the optimizer then sees;
- ``missing_grads`` / ``nonfinite_grads`` / ``zero_grads``: trainable parameters whose
  ``.grad`` is None, holds a NaN/inf, or is all zeros after backward (any rank);
- ``update`` and ``grad``: for every trainable parameter, by name, the norm of the change the
  optimizer step made to the full (gathered) tensor, and of its full gradient (after clipping);
- ``rank_spread``: the largest difference of any full parameter between ranks after the step
  (0 when the ranks agree, as they must).

The hooks are torch's global optimizer step hooks (they run inside ``optimizer.step()``, after
backward and clipping) and a wrapper around Accelerate's ``clip_grad_norm_``; both are
collective-safe because every rank steps.

Matrix: dist ∈ {ddp, fsdp} × compile ∈ {eager, compile} × autocast ∈ {fp32, bf16}, named like
``fsdp-compile-bf16``, plus ``single-compile-bf16`` (one process, the whole batch). On a CPU
``train()`` ignores compile and bf16 (they are CUDA-only there), so those axes only matter on GPUs.

Run the matrix (all configurations in one launch; prefer benchmarks/fsdp_debug.sh, which runs
each in its own launch under a timeout and adds the Phase Core hang check):
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_debug.py --out DIR
One configuration:      ... benchmarks/fsdp_debug.py --out DIR --config fsdp-eager-fp32
The table of a folder:  python benchmarks/fsdp_debug.py --out DIR --summarize
A CLI command with stack dumps (hang hunting): ... fsdp_debug.py --out DIR --stack-dump-after 60 --cli train ...

Every multi-process launch ends with ``output_hook_check`` (written to extra/output-hook-check.json):
whether this torch's FSDP2 finishes a backward through a module that returns a plain dataclass,
and through one whose dataclass ``phaselm.distributed.expose_to_fsdp`` registered. The cause
found for the GPU failure: torch 2.11 does not look inside dataclasses (``plain_dataclass``
false), so ``train()``'s objective, returning StepOutput, never had a backward finished.

Reading the table: a configuration "learns" when its loss drop (first step to the mean of the
last five) is at least half that of its DDP twin (same compile/autocast). "diverges at" is the
first step where loss or grad norm leaves the DDP twin's by more than the tolerance (1e-3
relative in fp32, 5e-2 under bf16): the first broken step, and the columns beside it say whether
gradients were missing, zero or non-finite, whether updates were made, and whether the ranks
still hold the same weights.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DISTS, COMPILES, PRECISIONS = ("ddp", "fsdp"), ("eager", "compile"), ("fp32", "bf16")
MATRIX = [f"{d}-{c}-{p}" for c in COMPILES for p in PRECISIONS for d in DISTS]
REFERENCE = "single-compile-bf16"

# A small K-SSM on a GPU (fast to compile, still every kind of layer) and a tiny one for a CPU smoke run.
GPU_SHAPE = {"kssm.hidden_size": 128, "kssm.n_layers": 2, "kssm.head_dim": 32, "kssm.n_oscillators": 32,
             "kssm.n_harmonics": 8}
SMALL_SHAPE = {"kssm.hidden_size": 32, "kssm.n_layers": 1, "kssm.head_dim": 16, "kssm.n_oscillators": 8,
               "kssm.n_harmonics": 4}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_config(name: str) -> dict:
    """``fsdp-compile-bf16`` → {"dist": "fsdp", "compile": True, "bf16": True}."""
    dist, compiled, precision = name.split("-")
    if dist not in (*DISTS, "single") or compiled not in COMPILES or precision not in PRECISIONS:
        raise SystemExit(f"unknown configuration {name!r}: dist-compile-precision, e.g. fsdp-eager-fp32")
    return {"dist": dist, "compile": compiled == "compile", "bf16": precision == "bf16"}


# --------------------------------------------------------------------------------------------
# probes: what every optimizer step records


class StepProbe:
    """Records each optimizer step of one ``train()`` call (see the module docstring)."""

    def __init__(self, objective: torch.nn.Module):
        self.objective = objective
        self.steps: list[dict] = []
        self.clip_norms: list[float] = []
        self.before: dict[str, torch.Tensor] = {}
        self.record: dict = {}

    # Name by identity, read at each step: FSDP replaces the parameters by their shards in train().
    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]

    def install(self):
        from accelerate import Accelerator
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        original = Accelerator.clip_grad_norm_
        probe = self

        def recording_clip(accelerator, parameters, max_norm, norm_type=2):
            norm = original(accelerator, parameters, max_norm, norm_type)
            probe.clip_norms.append(float(full(norm)))
            return norm

        Accelerator.clip_grad_norm_ = recording_clip
        handles = [register_optimizer_step_pre_hook(self.before_step),
                   register_optimizer_step_post_hook(self.after_step)]

        def uninstall():
            Accelerator.clip_grad_norm_ = original
            for handle in handles:
                handle.remove()

        return uninstall

    @torch.no_grad()
    def before_step(self, optimizer, args, kwargs) -> None:
        named = self.named_trainable()
        device = local(named[0][1]).device
        missing = torch.tensor([p.grad is None for _, p in named], dtype=torch.int32, device=device)
        nonfinite = torch.tensor(
            [p.grad is not None and not bool(torch.isfinite(local(p.grad)).all()) for _, p in named],
            dtype=torch.int32, device=device,
        )
        all_reduce_max(missing)
        all_reduce_max(nonfinite)
        squares, zero, grad_of = 0.0, [], {}
        for (name, p), absent in zip(named, missing.tolist()):
            whole = None if absent else full(p.grad)  # collective where the grad is sharded: every rank gathers
            norm = 0.0 if whole is None else float(whole.float().norm())
            squares += norm**2
            if whole is not None and norm == 0.0:
                zero.append(name)
            grad_of[name] = norm
        self.before = {name: full(p).detach().float().clone() for name, p in named}
        self.record = {
            "grad_norm": self.clip_norms[-1] if self.clip_norms else None,
            "grad_norm_clipped": math.sqrt(squares),
            "missing_grads": [n for (n, _), m in zip(named, missing.tolist()) if m],
            "nonfinite_grads": [n for (n, _), m in zip(named, nonfinite.tolist()) if m],
            "zero_grads": zero,
            "grad": grad_of,
            "grad_types": sorted({type(p.grad).__name__ for _, p in named if p.grad is not None}),
        }

    @torch.no_grad()
    def after_step(self, optimizer, args, kwargs) -> None:
        named = self.named_trainable()
        wholes = [(name, full(p).detach().float()) for name, p in named]
        update = {name: float((whole - self.before[name]).norm()) for name, whole in wholes if name in self.before}
        flat = torch.cat([w.reshape(-1) for _, w in wholes])
        spread, worst = 0.0, None
        if processes() > 1:
            high, low = flat.clone(), flat.clone()
            all_reduce_max(high)
            all_reduce_min(low)
            gaps = high - low
            spread = float(gaps.max())
            if spread > 0:
                index, offset = int(gaps.argmax()), 0
                for name, whole in wholes:
                    if index < offset + whole.numel():
                        worst = name
                        break
                    offset += whole.numel()
        self.steps.append({
            **self.record, "update": update, "rank_spread": spread, "rank_spread_worst": worst,
            "lr": optimizer.param_groups[0]["lr"],
        })


def local(tensor: torch.Tensor) -> torch.Tensor:
    from phaselm.distributed import local_part

    return local_part(tensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    from phaselm.distributed import full_tensor

    return full_tensor(tensor)


def all_reduce_max(tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def all_reduce_min(tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)


# --------------------------------------------------------------------------------------------
# one configuration


def run_config(name: str, args) -> dict:
    """Train the small K-SSM under configuration ``name`` through ``phaselm.training.train``; the record."""
    from accelerate.state import AcceleratorState, GradientState

    from phaselm.config import load_recipe
    from phaselm.corpora import load_text
    from phaselm.data import encode_split
    from phaselm.experiments.language_model import LMRecipe, build_lm, recipe_text
    from phaselm.ops.backend import chosen
    from phaselm.tokenizers import learn_tokenizer
    from phaselm.training import LanguageModelObjective, train

    setting = parse_config(name)
    world = processes()
    if (setting["dist"] == "single") != (world == 1):
        raise SystemExit(f"{name}: 'single' configurations run on one process, the others under torchrun")
    shape = SMALL_SHAPE if args.small else GPU_SHAPE
    overrides = {
        **shape, "kssm.dropout": 0.0,  # no dropout: DDP and FSDP runs then compute the same thing
        "train.steps": args.steps, "train.batch_size": max(1, args.batch // world), "train.seq_len": args.seq_len,
        "train.lr": 2e-3, "train.min_lr": 2e-4, "train.warmup_steps": min(5, args.steps), "train.log_every": 1,
        "train.eval_every": 0, "train.eval_batches": 2 if args.small else 8, "train.checkpoint_every": 0,
        "train.compile": setting["compile"], "train.bf16": setting["bf16"],
        "train.distributed": "ddp" if setting["dist"] == "single" else setting["dist"],
    }
    recipe = load_recipe(LMRecipe, ROOT / "recipes" / "kssm-v3.toml", overrides)
    # Each train() builds an Accelerator; its state is process-wide and would keep the first mixed precision.
    AcceleratorState._reset_state()
    GradientState._reset_state()

    text = load_text(recipe.data.corpus)
    tokenizer = learn_tokenizer(recipe.tokenizer.kind, text, recipe.data.val_fraction)
    train_ids, val_ids = encode_split(tokenizer, text, recipe.data.val_fraction)
    torch.manual_seed(recipe.train.seed)
    objective = LanguageModelObjective(build_lm(recipe, tokenizer.vocab_size), recipe.kssm.reg_weight)
    probe = StepProbe(objective)
    run_dir = Path(args.out) / "runs" / name
    if rank() == 0 and run_dir.exists():
        shutil.rmtree(run_dir)
    record = {"config": name, **setting, "processes": world, "overrides": overrides,
              "environment": environment()}
    uninstall = probe.install()
    started = time.perf_counter()
    try:
        result = train(objective, train_ids, val_ids, recipe.train, run_dir, recipe_text(recipe), progress=False,
                       description=name)
        record.update(status="ok", val_ce=result.evaluation["val_ce"])
    except Exception as exc:  # a configuration that fails is a finding, not the end of the matrix
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
    finally:
        uninstall()
    record["seconds"] = time.perf_counter() - started
    record["backends"] = chosen()
    losses = {}
    metrics = run_dir / "metrics.jsonl"
    if rank() == 0 and metrics.exists():
        for line in metrics.read_text().splitlines():
            entry = json.loads(line)
            if "loss" in entry:
                losses[entry["step"]] = entry["loss"]
    for step, entry in enumerate(probe.steps, start=1):
        entry["loss"] = losses.get(step)
    record["steps"] = probe.steps
    return record


def environment() -> dict:
    import accelerate

    info = {"torch": torch.__version__, "accelerate": accelerate.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return info


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


# --------------------------------------------------------------------------------------------
# the table


def loss_drop(record: dict) -> float | None:
    losses = [s["loss"] for s in record.get("steps", []) if s.get("loss") is not None]
    if len(losses) < 2:
        return None
    tail = losses[-5:]
    return losses[0] - sum(tail) / len(tail)


def first_divergence(record: dict, twin: dict | None) -> str:
    """The first step where loss or grad norm leaves the DDP twin's (same compile/autocast)."""
    if twin is None or twin is record or twin.get("status") != "ok":
        return "—"
    tolerance = 5e-2 if record["bf16"] else 1e-3
    for step, (a, b) in enumerate(zip(record["steps"], twin["steps"]), start=1):
        for key in ("loss", "grad_norm"):
            x, y = a.get(key), b.get(key)
            if x is None or y is None:
                continue
            if not math.isfinite(x) or abs(x - y) > tolerance * max(abs(y), 1e-6):
                return f"{step} ({key} {x:.4g} vs {y:.4g}; {most_different_grad(a, b)})"
    return "none"


def most_different_grad(step: dict, twin_step: dict) -> str:
    """The parameter whose gradient norm differs most (relatively) from the DDP twin's in one step."""
    gaps = {name: abs(g - twin_step["grad"].get(name, 0.0)) / max(abs(twin_step["grad"].get(name, 0.0)), 1e-12)
            for name, g in step.get("grad", {}).items()}
    if not gaps:
        return "no gradients recorded"
    name = max(gaps, key=gaps.get)
    return f"grad of {name} {step['grad'][name]:.3g} vs {twin_step['grad'].get(name, 0.0):.3g}"


def summarize(out: Path) -> list[dict]:
    """Print the table of every configuration recorded under ``out`` and write ``out``/summary.json."""
    records = {}
    for path in sorted((out / "configs").glob("*.json")):
        record = json.loads(path.read_text())
        records[record["config"]] = record
    rows = []
    # The one-process run that judges the DDP runs' learning: the recipe setting, else any.
    singles = [n for n in sorted(records) if n.startswith("single-")]
    reference = REFERENCE if REFERENCE in records else (singles or [None])[0]
    for name in [*MATRIX, *sorted(set(records) - set(MATRIX))]:
        record = records.get(name)
        if record is None:
            continue
        steps = record.get("steps", [])
        twin = records.get(name.replace("fsdp-", "ddp-")) if name.startswith("fsdp-") else None
        ddp_twin = records.get(name.replace("fsdp-", "ddp-") if name.startswith("fsdp-") else reference)
        drop, reference_drop = loss_drop(record), loss_drop(ddp_twin) if ddp_twin and ddp_twin is not record else None
        learns = None if drop is None else (drop > 0.5 * reference_drop if reference_drop else drop > 0.1)
        updates = [v for s in steps for v in s.get("update", {}).values()]
        largest_update: dict[str, float] = {}
        for s in steps:
            for param, v in s.get("update", {}).items():
                largest_update[param] = max(largest_update.get(param, 0.0), v)
        rows.append({
            "config": name, "status": record.get("status"),
            "loss": (steps[0].get("loss"), steps[-1].get("loss")) if steps else None,
            "val_ce": record.get("val_ce"), "drop": drop, "learns": learns,
            "grad_norm": (steps[0].get("grad_norm"), steps[-1].get("grad_norm")) if steps else None,
            "missing": max((len(s["missing_grads"]) for s in steps), default=None),
            "nonfinite": max((len(s["nonfinite_grads"]) for s in steps), default=None),
            "zero": max((len(s["zero_grads"]) for s in steps), default=None),
            "update_mean": sum(updates) / len(updates) if updates else None,
            "never_updated": sorted(n for n, v in largest_update.items() if v == 0.0),
            "rank_spread": max((s["rank_spread"] for s in steps), default=None),
            "diverges_at": first_divergence(record, twin),
            "seconds": record.get("seconds"), "error": record.get("error"),
        })
    print(table(rows))
    if any(not r.get("environment", {}).get("cuda", True) for r in records.values()):
        print("\n(on a CPU train() ignores compile and bf16: those columns repeat the eager fp32 runs)")
    hook_check = out / "extra" / "output-hook-check.json"
    if hook_check.exists():
        print("\nFSDP backward through a dataclass output (finished?): " + hook_check.read_text().replace("\n", ""))
    cli = cli_outcome(out)
    if cli:
        print("\nPhase Core FSDP run (hang check): " + json.dumps(cli))
    write_json(out / "summary.json", {"configs": rows, "phase_core": cli})
    return rows


def cli_outcome(out: Path) -> dict | None:
    """What the driver's Phase Core run did: its exit status, which ranks returned from phaselm, its last loss and R."""
    extra = out / "extra"
    if not extra.is_dir():
        return None
    outcome = {"returned": {}}
    for path in sorted(extra.glob("cli-rank*.json")):
        marker = json.loads(path.read_text())
        outcome["returned"][marker["rank"]] = round(marker["returned_after_s"], 1)
    exit_file = extra / "cli-exit.txt"
    if exit_file.exists():
        code = exit_file.read_text().strip()
        outcome["exit"] = code + (" (timed out: hung)" if code in ("124", "137") else "")
    metrics = out / "runs" / "phase-core" / "metrics.jsonl"
    if metrics.exists():
        logged = [json.loads(line) for line in metrics.read_text().splitlines() if '"loss"' in line]
        if logged:
            outcome["last"] = {k: logged[-1].get(k) for k in ("step", "loss", "r_mean")}
    return outcome


def table(rows: list[dict]) -> str:
    def number(value, digits=3):
        return "—" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    def pair(values):
        return "—" if not values else " → ".join(number(v, 4) for v in values)

    head = ["config", "status", "loss first → last", "val_ce", "drop", "learns", "grad norm first → last",
            "missing/nonfinite/zero grads", "mean |update|", "params never updated", "rank spread",
            "diverges from DDP at", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        learns = {True: "yes", False: "**NO**", None: "—"}[r["learns"]]
        cells = [r["config"], r["status"] if r["status"] == "ok" else f"**{r['status']}**", pair(r["loss"]),
                 number(r["val_ce"], 4), number(r["drop"]), learns, pair(r["grad_norm"]),
                 f"{number(r['missing'])}/{number(r['nonfinite'])}/{number(r['zero'])}", number(r["update_mean"]),
                 number(len(r["never_updated"])), number(r["rank_spread"]), r["diverges_at"], number(r["seconds"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{r['config']}: {r['error']}" for r in rows if r.get("error")]
    notes += [f"{r['config']}: never updated: {', '.join(r['never_updated'][:8])}" for r in rows if r["never_updated"]]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


# --------------------------------------------------------------------------------------------
# the cause found on CPU: does this torch's FSDP2 finish a backward through a dataclass output?


def output_hook_check(device: torch.device) -> dict:
    """Shard a tiny module returning a plain dataclass, run one backward, and say whether FSDP
    finished it (the shards are registered again and hold gradients): first as it is, then with
    the dataclass registered by ``phaselm.distributed.expose_to_fsdp`` (what ``train()`` does with
    StepOutput). Collective: every process runs it.

    Expected where torch's FSDP2 finds outputs with pytree (2.11): ``plain_dataclass`` False and
    ``exposed`` True; where it looks inside dataclasses itself (2.13): both True.
    """
    import dataclasses

    from torch.distributed.fsdp._fully_shard import _fsdp_state

    from phaselm.distributed import shard

    @dataclasses.dataclass
    class Out:  # a fresh type: registered with no pytree until the second pass
        loss: torch.Tensor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x):
            return Out(self.linear(x).square().mean())

    result = {"torch": torch.__version__, "fsdp_looks_inside_dataclasses": hasattr(_fsdp_state, "collect_grad_tensors")}
    torch.manual_seed(0)
    for case, types in (("plain_dataclass", ()), ("exposed", (Out,))):
        net = Net().to(device)
        shard(net, device, output_types=types)
        shards = list(net.parameters())
        net(torch.randn(4, 8, device=device)).loss.backward()
        result[case] = all(a is b for a, b in zip(shards, net.parameters())) and all(p.grad is not None for p in shards)
    return result


# --------------------------------------------------------------------------------------------
# a CLI command with stack dumps: where does a run hang?


def run_cli(argv: list[str], out: Path) -> int:
    """Run ``phaselm`` with ``argv``, recording in ``out``/extra when this rank returned from it."""
    from phaselm.cli.app import main

    marker = out / "extra" / f"cli-rank{rank()}.json"
    started, code = time.perf_counter(), 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    write_json(marker, {"rank": rank(), "returned_after_s": time.perf_counter() - started, "exit_code": code})
    print(f"[fsdp_debug rank {rank()}] phaselm returned (exit {code}) after {time.perf_counter() - started:.1f}s; "
          "the process now exits (a hang from here on is in interpreter or process-group shutdown)", flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for configs/*.json, runs/ and summary.json")
    parser.add_argument("--config", action="append", help="configuration(s) to run (default: the whole matrix)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--small", action="store_true", help="a tiny K-SSM (CPU smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile configurations")
    parser.add_argument("--summarize", action="store_true", help="only print the table of --out")
    parser.add_argument("--stack-dump-after", type=float, default=0,
                        help="print every thread's stack every this many seconds (0: never)")
    parser.add_argument("--cli", nargs=argparse.REMAINDER, help="run `phaselm ARGS...` instead (hang hunting)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.summarize:
        summarize(out)
        return
    if args.stack_dump_after > 0:  # a hang shows where it is before the driver's timeout kills it
        faulthandler.dump_traceback_later(args.stack_dump_after, repeat=True, exit=False)
        faulthandler.register(__import__("signal").SIGUSR1, all_threads=True)
    if args.cli:
        sys.exit(run_cli(args.cli, out))
    names = args.config or (MATRIX if processes() > 1 else [REFERENCE])
    names = [n for n in names if not (args.no_compile and "-compile-" in n)]
    for name in names:
        if rank() == 0:
            print(f"[fsdp_debug] {name}: {args.steps} steps on {processes()} process(es)", flush=True)
        record = run_config(name, args)
        if rank() == 0:
            write_json(out / "configs" / f"{name}.json", record)
            losses = [s["loss"] for s in record["steps"] if s.get("loss") is not None]
            print(f"[fsdp_debug] {name}: {record['status']}, loss {losses[:1]} → {losses[-1:]}, "
                  f"{record['seconds']:.1f}s", flush=True)
    if processes() > 1:
        # After the configurations: an Accelerate state made here first would be the one train()
        # gets, and one made without cpu=True turns train()'s Accelerator(cpu=True) into one process.
        from accelerate import PartialState

        check = output_hook_check(PartialState().device)
        if rank() == 0:
            write_json(out / "extra" / "output-hook-check.json", check)
            print(f"[fsdp_debug] output hook check: {json.dumps(check)}", flush=True)
    if rank() == 0 and not args.config:
        summarize(out)


if __name__ == "__main__":
    main()
