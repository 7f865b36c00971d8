"""`phaselm bench`: speed profiles (phaselm.bench)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import PhaseLMError
from .app import app, command_line, print_json, recipe_overrides


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise PhaseLMError(f"{what} must be positive integers separated by commas, e.g. 1,4,16; got {text!r}")
    return values


@app.command()
def bench(
    recipes: list[Path] | None = typer.Argument(None,
                                                help="Language-model recipes to measure (e.g. "
                                                     "recipes/fusion-gf-mh.toml); not with --backbone."),
    baseline: Path = typer.Option(Path("recipes/gpt2-fusion-baseline.toml"), "--baseline",
                                  help="The recipe every ratio is against."),
    backbone: str | None = typer.Option(None, "--backbone",
                                        help="Measure a Phase Core grafted onto this Hugging Face backbone instead: a "
                                             "shape with random weights (mamba-130m, mamba-370m, mamba-790m, "
                                             "mamba-1.4b, mamba-2.8b), a local model folder or a hub id."),
    quick: bool = typer.Option(False, "--quick",
                               help="With --backbone: a toy-sized Mamba on the CPU, in seconds (checks the command, "
                                    "measures nothing)."),
    layer: str = typer.Option("middle", "--layer",
                              help="With --backbone: the layer the core sits at (an index or 'middle')."),
    modes: str = typer.Option("token,recurrent", "--modes",
                              help="With --backbone: core modes to time, comma-separated."),
    reference_seq: int = typer.Option(0, "--reference-seq",
                                      help="With --backbone: also time one forward of 1 × this many tokens on "
                                           "transformers' own path (slow without mamba_ssm), for the speed-up."),
    batches: str | None = typer.Option(None, "--batches",
                                       help="Batch sizes, comma-separated (default 1,4,16,64; with --backbone one "
                                            "batch size, default 4)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence for the training and inference timings."),
    steps: int = typer.Option(10, "--steps", help="Timed steps per measurement (after warm-up)."),
    contexts: str = typer.Option("64,256,1024,4096", "--contexts",
                                 help="Context lengths for the decode cost per token (with --backbone: the first is "
                                      "the prompt)."),
    compile_batches: str = typer.Option("", "--compile-batches",
                                        help="Batch sizes also timed with the training step under torch.compile (what "
                                             "training does on CUDA), e.g. 16."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Write bench.json and bench.md here (refused if they exist)."),
    set_: list[str] | None = typer.Option(None, "--set",
                                          help="Override a value in every recipe, e.g. `--set fusion.n_layers=2` "
                                               "(repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Speed profile measured in one run on one device.

    With recipes: training and inference tokens/s per batch size against a baseline recipe,
    step-time ratios, and decode cost per token as the context grows. Models are built from the
    recipes with random weights (speed does not depend on them).

    With --backbone: a Phase Core grafted onto a Hugging Face backbone — prefill tokens/s and
    TFLOP/s, core-training tokens/s per mode with peak memory, the graft's overhead on the
    forward, decode ms/token (eager and from a CUDA graph) against the weight-bandwidth floor,
    and which scan path ran.

    Timings are only meaningful on the machine they name; on a CPU they say little about a GPU.

    Examples: `phaselm bench recipes/fusion-gf-mh.toml recipes/rwkv6.toml --out runs/bench`;
    `phaselm bench --backbone mamba-2.8b --layer 32 --out runs/bench-2.8b`;
    `phaselm bench --backbone mamba-130m --quick`
    """
    from ..bench import BackboneBenchConfig, BenchConfig, backbone_table, bench_backbone, table
    from ..bench import bench as run_bench

    if seq_len < 2 or steps < 1:
        raise PhaseLMError(f"--seq-len must be ≥ 2 and --steps ≥ 1, got {seq_len} and {steps}")
    if out is not None and ((out / "bench.json").exists() or (out / "bench.md").exists()):
        raise PhaseLMError(f"{out} already holds a bench result; pass another --out or move it away")
    if backbone is not None:
        if recipes:
            raise PhaseLMError("pass either recipes or --backbone, not both")
        batch_list = _int_list(batches, "--batches") if batches else (4,)
        if len(batch_list) != 1:
            raise PhaseLMError(f"--backbone takes one batch size, got --batches {batches}")
        cfg = BackboneBenchConfig(
            batch=batch_list[0], seq_len=seq_len, layer=layer,
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            steps=steps, decode_prompt=_int_list(contexts, "--contexts")[0], reference_seq=reference_seq, quick=quick,
        )
        result = bench_backbone(backbone, cfg, log=lambda line: typer.echo(line, err=True))
        rows = backbone_table(result)
    else:
        if quick:
            raise PhaseLMError("--quick goes with --backbone")
        if not recipes:
            raise PhaseLMError("nothing to measure: pass recipes (e.g. recipes/fusion-gf-mh.toml) or --backbone NAME")
        for recipe in [baseline, *recipes]:
            if not recipe.is_file():
                raise PhaseLMError(f"recipe not found: {recipe}; pass a TOML file under recipes/")
        cfg = BenchConfig(batches=_int_list(batches or "1,4,16,64", "--batches"), seq_len=seq_len, steps=steps,
                          decode_contexts=_int_list(contexts, "--contexts"),
                          compile_batches=_int_list(compile_batches, "--compile-batches") if compile_batches else ())
        result = run_bench(recipes, baseline, cfg, overrides=recipe_overrides(set_),
                           log=lambda line: typer.echo(line, err=True))
        rows = table(result)
    result["command"] = command_line()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        markdown = f"Device: {result['device']}. Command: `{result['command']}`\n\n" + "\n".join(rows) + "\n"
        (out / "bench.md").write_text(markdown, encoding="utf-8")
    if as_json:
        print_json(result)
    else:
        typer.echo(f"device: {result['device']}")
        typer.echo("\n".join(rows))
