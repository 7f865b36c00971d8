"""Train several language-model recipes on one GPU, some at once, and collect what the docs quote.

    PYTHONPATH=src python3 benchmarks/train_jobs.py --out $OUT --parallel 4 --limit 550 \\
        --set data.corpus=.data/gutenberg \\
        --job kssm-bpe recipes/kssm-v3-bpe.toml \\
        --job gf-mh-s1 recipes/fusion-gf-mh.toml train.seed=1

Each ``--job NAME RECIPE [KEY=VALUE ...]`` runs ``phaselm train-lm RECIPE --set KEY=VALUE …`` (the
``--set`` overrides given once apply to every job; ``--command train`` runs Phase-Mamba recipes
with ``phaselm train`` instead) under a time limit, at most ``--parallel`` at a
time on each of ``--gpus`` GPUs (a job goes to the GPU running the fewest; ``CUDA_VISIBLE_DEVICES``
pins it there). ``--deadline`` stops every job that is still running that many seconds after the
start, so a device call ends with what every job logged so far.

``--protocol NAME FILE JOB [JOB ...]`` runs ``phaselm protocol run`` on the named jobs' trained
models once they have all finished (the first as ``[model] path``, the others as ``[model] runs``,
written into a copy of FILE; the design, seeds and thresholds stay the file's), and returns its
results.md and results.json. Small models leave most of an H100 idle, so running several at once buys wall time; the
tokens/s they log are then shared-GPU figures and the table says so — speed comes from
``phaselm bench`` or a run alone (``--parallel 1``), never from a shared one.

After every finished job, $OUT/results.tgz is rewritten (per job: summary.json, metrics.jsonl,
log; machine.txt; table.txt with parameters, final and best val loss, median tokens/s), so a
device call cut off at its limit still returns what finished. ``--keep NAME`` also returns that
job's trained model folder as $OUT/NAME.model.tgz.part-* (split at 15 MB: the device tool
returns files up to 16 MiB).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PART_BYTES = 15 * 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", nargs="+", action="append", required=True, metavar="NAME RECIPE [KEY=VALUE]",
                        help="a run: its name, its recipe, and overrides for it alone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every job")
    parser.add_argument("--parallel", type=int, default=1, help="jobs at once on the GPU (default 1: speeds are clean)")
    parser.add_argument("--limit", type=float, default=550, help="seconds allowed per job")
    parser.add_argument("--keep", action="append", default=[], metavar="NAME", help="return this job's model folder")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs to spread the jobs over (--parallel on each)")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds after the start at which every job still running is stopped")
    parser.add_argument("--protocol", nargs="+", action="append", default=[], metavar="NAME FILE JOB",
                        help="after the named jobs finish, run this protocol file on their models")
    parser.add_argument("--command", choices=["train-lm", "train"], default="train-lm",
                        help="the phaselm command every job runs: train-lm (language models) or train (Phase-Mamba)")
    parser.add_argument("--runs", type=Path, default=None, help="where the run folders go (default: a fresh temp dir)")
    parser.add_argument("--out", type=Path, default=Path("runs/train-jobs"))
    args = parser.parse_args(argv)
    for job in args.job:
        if len(job) < 2 or not Path(job[1]).is_file():
            parser.error(f"--job needs NAME RECIPE [KEY=VALUE ...] with an existing recipe, got {' '.join(job)}")
    names = [job[0] for job in args.job]
    if len(set(names)) != len(names):
        parser.error("job names must differ")
    for protocol in args.protocol:
        if len(protocol) < 3 or not Path(protocol[1]).is_file() or not set(protocol[2:]) <= set(names):
            parser.error(f"--protocol needs NAME FILE JOB [JOB ...] with an existing file and known jobs, "
                         f"got {' '.join(protocol)}")
    return args


def machine_text(parallel: int) -> str:
    def output(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    gpu = output(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) or "no GPU"
    # "-dirty": the tree differs from that commit (a device copy can carry an older .git).
    commit = output(["git", "describe", "--always", "--dirty"]) or "?"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"{gpu}\n{started}\ngit {commit}\njobs at once: {parallel}\n"


def summarize(results: Path, name: str, parallel: int) -> str:
    try:
        summary = json.loads((results / f"{name}.summary.json").read_text())
        records = [json.loads(line) for line in (results / f"{name}.metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return f"{name}: no result (see {name}.log)"
    # Median training tokens/s, the first two logged intervals skipped (compilation, warm-up).
    speeds = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)[2:] or [float("nan")]
    vals = [r for r in records if r.get("split") == "val"]
    best = min(vals, key=lambda r: r["val_ce"]) if vals else {"val_ce": float("nan"), "step": 0}
    shared = " (GPU shared)" if parallel > 1 else ""
    if "val_ppl_with_core" in summary:  # a Phase-Mamba run: the core's effect and its observables
        return (f"{name}: core parameters {summary['trainable_parameters']:,}  val ppl "
                f"{summary['val_ppl_with_core']:.3f} with core / {summary['val_ppl_without_core']:.3f} without  "
                f"R mean {summary['order']['mean']:.3f}  U mean {summary['uncertainty']['mean']:.3f}  "
                f"median tokens/s {speeds[len(speeds) // 2]:,.0f}{shared}")
    return (f"{name}: parameters {summary['parameters']:,}  val loss {summary['val_ce']:.4f}  "
            f"best val {best['val_ce']:.4f} @ {best['step']}  val ppl {summary['val_ppl']:.2f}  "
            f"median tokens/s {speeds[len(speeds) // 2]:,.0f}{shared}  train {summary['train_seconds']:.0f} s")


def write_results(out: Path, results: Path, finished: list[str], parallel: int) -> None:
    table = "\n".join(summarize(results, name, parallel) for name in finished) + "\n"
    (results / "table.txt").write_text(table)
    print(table, flush=True)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        tar.add(results, arcname=".")


def keep_model(run_dir: Path, name: str, out: Path) -> None:
    """The run folder without its checkpoints, as a tar.gz split into parts the device tool returns."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(run_dir, arcname=name, filter=lambda info: None if "/checkpoints" in info.name else info)
    data = buffer.getvalue()
    for i in range(0, len(data), PART_BYTES):
        (out / f"{name}.model.tgz.part-{i // PART_BYTES:02d}").write_bytes(data[i:i + PART_BYTES])


def protocol_copy(source: Path, models: list[Path], target: Path) -> Path:
    """FILE with its ``[model]`` table pointing at ``models`` (first: path, rest: runs), and a
    declared ``samples_per_condition`` (windows × seeds × runs) that counts the added runs."""
    import tomllib

    declared = tomllib.loads(source.read_text())
    windows = declared.get("evaluation", {}).get("windows")
    seeds = declared.get("design", {}).get("seeds", [])
    lines, table = [], ""
    for line in source.read_text().splitlines():
        key = line.split("=")[0].strip()
        if line.strip().startswith("["):
            table = line.strip()
            lines.append(line)
            if table == "[model]":
                lines.append(f'path = "{models[0]}"')
                if models[1:]:
                    lines.append("runs = [" + ", ".join(f'"{m}"' for m in models[1:]) + "]")
            continue
        if table == "[model]" and key in ("path", "runs"):
            continue
        if table == "[design]" and key == "samples_per_condition" and windows:
            line = (f"samples_per_condition = {windows * len(seeds) * len(models)}  "
                    f"# = {windows} windows × {len(seeds)} seeds × {len(models)} runs")
        lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    return target


def run_protocols(args, runs: Path, results: Path, finished: list[str], env: dict) -> None:
    """Each --protocol whose jobs all finished with a model, at once, one per GPU in turn."""
    started, running = time.time(), []
    for index, (name, file, *jobs) in enumerate(args.protocol):
        missing = [job for job in jobs if not (runs / job / "summary.json").is_file()]  # written last, by both commands
        if missing:
            (results / f"{name}.protocol.txt").write_text(f"not run: no trained model for {', '.join(missing)}\n")
            continue
        copy = protocol_copy(Path(file), [runs / job for job in jobs], results / f"{name}.protocol.toml")
        out = runs / f"protocol-{name}"
        command = [sys.executable, "-m", "phaselm", "protocol", "run", str(copy), "--out", str(out)]
        job_env = {**env, "CUDA_VISIBLE_DEVICES": str(index % args.gpus)} if args.gpus > 1 else env
        log = open(results / f"{name}.protocol.log", "w")  # noqa: SIM115  (closed below, when the run ends)
        running.append((name, out, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=job_env)))
    write_results(args.out, results, finished, args.parallel)  # the protocol copies and logs, even if cut off
    while running:  # each protocol's results join results.tgz as it ends: a call cut off keeps those that finished
        time.sleep(2)
        for entry in [entry for entry in running if entry[3].poll() is not None]:
            running.remove(entry)
            name, out, log, process = entry
            log.close()
            print(f"protocol {name} exit {process.returncode} after {time.time() - started:.0f} s", flush=True)
            for produced in ("results.md", "results.json"):
                if (out / produced).is_file():
                    (results / f"{name}.protocol.{produced.split('.')[-1]}").write_bytes((out / produced).read_bytes())
            write_results(args.out, results, finished, args.parallel)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="runs-"))  # fresh: a warm machine keeps earlier runs
    runs.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="results-"))
    (results / "machine.txt").write_text(machine_text(args.parallel))
    print((results / "machine.txt").read_text(), flush=True)
    pending = list(args.job)
    # Each job's CPU thread pool gets its share of the cores: side-by-side jobs whose pools all
    # spin on every core starve each other's kernel-launching threads.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (args.parallel * args.gpus))))
    running: dict[str, tuple[subprocess.Popen, float, int]] = {}
    finished: list[str] = []
    while pending or running:
        while pending and len(running) < args.parallel * args.gpus and time.time() - start_time < args.deadline:
            load = [sum(1 for *_, g in running.values() if g == gpu) for gpu in range(args.gpus)]
            gpu = load.index(min(load))
            name, recipe, *own = pending.pop(0)
            command = [sys.executable, "-m", "phaselm", args.command, recipe, "--out", str(runs / name), "--json"]
            for item in [*args.set, *own]:
                command += ["--set", item]
            with open(results / f"{name}.summary.json", "w") as stdout, open(results / f"{name}.log", "w") as stderr:
                (results / f"{name}.command.txt").write_text(" ".join(command[1:]) + "\n")
                job_env = {**env, "CUDA_VISIBLE_DEVICES": str(gpu)} if args.gpus > 1 else env
                running[name] = (subprocess.Popen(command, stdout=stdout, stderr=stderr, env=job_env), time.time(), gpu)
            print(f"started {name} on GPU {gpu}: {' '.join(command[2:])}", flush=True)
        if pending and time.time() - start_time >= args.deadline:
            print(f"deadline: not started {', '.join(job[0] for job in pending)}", flush=True)
            pending.clear()
        time.sleep(2)
        for name, (process, started, _gpu) in list(running.items()):
            late = time.time() - start_time > args.deadline
            if process.poll() is None and (time.time() - started > args.limit or late):
                process.kill()  # past its limit: what it logged so far still comes back
            if process.poll() is None:
                continue
            del running[name]
            print(f"{name} exit {process.returncode} after {time.time() - started:.0f} s", flush=True)
            if (runs / name / "metrics.jsonl").exists():
                (results / f"{name}.metrics.jsonl").write_bytes((runs / name / "metrics.jsonl").read_bytes())
            if process.returncode != 0:
                print((results / f"{name}.log").read_text()[-600:], flush=True)
            finished.append(name)
            write_results(args.out, results, finished, args.parallel)
            if name in args.keep and (runs / name / "model").is_dir():
                keep_model(runs / name, name, args.out)
    run_protocols(args, runs, results, finished, env)
    print("\n".join(sorted(os.listdir(args.out))))


if __name__ == "__main__":
    main()
