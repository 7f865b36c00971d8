"""The ``phaselm`` command line: a thin layer over the Python API.

Every command fails on bad input with one line on stderr and exit code 2 (no traceback), and
never overwrites an existing run directory or checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import PhaseLMError

app = typer.Typer(
    name="phaselm",
    help="Kuramoto oscillator dynamics inside language models: graft, train, observe, with controls.\n\n"
    "Start with `phaselm demo` (about 5 minutes on a 2-core CPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

OVERRIDE_HELP = "Override a recipe value, e.g. `--set train.steps=50 --set core.mode=recurrent` (repeatable)."


def _overrides(items: Optional[List[str]]) -> dict:
    from .config import parse_override

    return dict(parse_override(item) for item in items or [])


def _command_line() -> str:
    import shlex

    return "phaselm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command()
def pretrain(
    recipe: Optional[Path] = typer.Argument(None, help="TOML recipe (sections [model] [data] [tokenizer] [train]); defaults if omitted."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory to create."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the saved model folder as JSON."),
) -> None:
    """Pretrain a small HF Mamba on a corpus and save it with save_pretrained.

    The model lands in OUT/model, loadable by `transformers.AutoModelForCausalLM` and by
    `[backbone] name = "OUT/model"` in a Phase-Mamba recipe.

    Example: `phaselm pretrain recipes/pretrain-mamba.toml --out runs/mamba --set train.steps=500`
    """
    from .config import from_dict, load_recipe
    from .experiments.phase_mamba import PretrainRecipe, pretrain as run_pretrain

    cfg = load_recipe(PretrainRecipe, recipe, _overrides(set_)) if recipe else from_dict(PretrainRecipe, _apply(_overrides(set_)))
    model_dir = run_pretrain(cfg, out, resume=resume, command=_command_line())
    if as_json:
        _print_json({"model": str(model_dir), "run_dir": str(out)})
    else:
        typer.echo(f"saved backbone to {model_dir}")


def _apply(overrides: dict) -> dict:
    from .config import apply_overrides

    return apply_overrides({}, overrides)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Phase-Mamba TOML recipe ([backbone] [core] [drift] [loss] [data] [train] [sample])."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create (default: runs/<recipe name>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Graft a Phase Core onto a backbone and train only the core.

    Writes config.toml, metrics.jsonl, checkpoints/, summary.json, plots/ and report.md.

    Example: `phaselm train recipes/phase-mamba.toml --set backbone.name=runs/mamba/model --out runs/pm`
    """
    from .config import load_recipe
    from .experiments.phase_mamba import PhaseMambaRecipe, train_core

    cfg = load_recipe(PhaseMambaRecipe, recipe, _overrides(set_))
    run_dir = out or Path("runs") / recipe.stem
    summary = train_core(cfg, run_dir, resume=resume, command=_command_line())
    if as_json:
        _print_json(summary)
    else:
        typer.echo(
            f"R mean {summary['order']['mean']:.3f}, U mean {summary['uncertainty']['mean']:.3f}, "
            f"val ppl {summary['val_ppl_with_core']:.3f} with core / {summary['val_ppl_without_core']:.3f} without; "
            f"report: {run_dir / 'report.md'}"
        )


@app.command("train-lm")
def train_lm(
    recipe: Path = typer.Argument(..., help="Language-model TOML recipe (top-level arch, [kssm] or [gpt], [data] [tokenizer] [train])."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create (default: runs/<recipe name>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Train a language model from scratch: K-SSM (bistable, monostable, no-mixer) or the GPT-2 baseline.

    Writes config.toml, metrics.jsonl, checkpoints/, model/ (save_pretrained), summary.json,
    plots/ and report.md. The trained model/ folder works with `phaselm generate`.

    Example: `phaselm train-lm recipes/kssm-v3.toml --out runs/kssm --set train.steps=200`
    """
    from .config import load_recipe
    from .experiments.language_model import LMRecipe, train_lm as run_train_lm

    cfg = load_recipe(LMRecipe, recipe, _overrides(set_))
    run_dir = out or Path("runs") / recipe.stem
    summary = run_train_lm(cfg, run_dir, resume=resume, command=_command_line())
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"{summary['arch']}: {summary['parameters']:,} parameters, val loss {summary['val_ce']:.4f}; report: {run_dir / 'report.md'}")


@app.command()
def generate(
    model: Path = typer.Argument(..., help="A run directory from `phaselm train`/`demo`, or a model folder."),
    prompt: str = typer.Option("ROMEO:", "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate."),
    temperature: float = typer.Option(0.8, help="Sampling temperature; 0 decodes greedily."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens; 0 keeps all."),
    seed: int = typer.Option(0, help="Sampling seed (same seed → same text, blind or measured)."),
    measured: bool = typer.Option(False, "--measured", help="Record per-token R, U, R·U and tone."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate text, blind (default) or measured (per-token R, U and tone).

    Example: `phaselm generate runs/demo --prompt "ROMEO:" --measured --json`
    """
    from .experiments.phase_mamba import load_for_generation
    from .generation import generate as run_generate

    lm, tokenizer, handle = load_for_generation(model)
    result = run_generate(lm, tokenizer, prompt, max_new_tokens, temperature, top_k or None, seed, handle, measured)
    if as_json:
        _print_json(result.to_json())
        return
    if not measured:
        typer.echo(prompt + result.text)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("token", "R", "U", "R·U", "tone")
    for r in result.readings:
        table.add_row(repr(r.token), _num(r.r), _num(r.u), _num(r.ru), r.tone or "-")
    console = Console()
    console.print(prompt + result.text, markup=False, highlight=False)
    console.print(table)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory to create."),
    quick: bool = typer.Option(False, help="Tiny shapes and a few steps: checks the pipeline in seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Run the whole Phase-Mamba pipeline on the embedded Tiny Shakespeare (≤ 10 min, 2-core CPU).

    Pretrains a small Mamba, grafts a Phase Core at its middle layer, trains the core (drift
    controller on), generates blind and measured samples, and writes OUT/config.toml,
    metrics.jsonl, summary.json, plots/*.png and report.md.

    Example: `phaselm demo --out runs/demo`
    """
    from .experiments.demo import run_demo

    summary = run_demo(out, quick=quick)
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"demo finished: {out / 'report.md'}")


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars: no per-file tqdm bars or kernel fallback notes."""
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: PhaseLMError → one line on stderr, exit code 2."""
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=False)
    except PhaseLMError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
