"""`phaselm pretrain`, `train`, `train-lm` and `demo`: the commands that train."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import OVERRIDE_HELP, app, command_line, is_main, print_json, recipe_overrides


@app.command()
def pretrain(
    recipe: Path | None = typer.Argument(None,
                                         help="TOML recipe (sections [model] [data] [tokenizer] [train]); defaults if "
                                              "omitted."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory to create."),
    set_: list[str] | None = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a "
                                            "larger train.steps extends it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the saved model folder as JSON."),
) -> None:
    """Pretrain a small HF Mamba on a corpus and save it with save_pretrained.

    The model lands in OUT/model, loadable by `transformers.AutoModelForCausalLM` and by
    `[backbone] name = "OUT/model"` in a Phase-Mamba recipe.

    Example: `phaselm pretrain recipes/pretrain-mamba.toml --out runs/mamba --set train.steps=500`
    """
    from ..config import from_dict, load_recipe
    from ..experiments.phase_mamba import PretrainRecipe
    from ..experiments.phase_mamba import pretrain as run_pretrain

    overrides = recipe_overrides(set_)
    cfg = load_recipe(PretrainRecipe, recipe, overrides) if recipe else from_dict(PretrainRecipe, _apply(overrides))
    model_dir = run_pretrain(cfg, out, resume=resume, command=command_line())
    _report({"model": str(model_dir), "run_dir": str(out)}, as_json, f"saved backbone to {model_dir}")


def _report(result, as_json: bool, line: str) -> None:
    """What a training command prints when it is done: ``result`` as JSON, or one line; in a
    multi-process run only the first process prints."""
    if not is_main():
        return
    if as_json:
        print_json(result)
    else:
        typer.echo(line)


def _apply(overrides: dict) -> dict:
    from ..config import apply_overrides

    return apply_overrides({}, overrides)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Phase-Mamba TOML recipe ([backbone] [core] [drift] [loss] [data] [train] "
                                            "[sample])."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory to create (default: runs/<recipe name>)."),
    set_: list[str] | None = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a "
                                            "larger train.steps extends it)."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Graft a Phase Core onto a backbone and train only the core.

    Writes config.toml, metrics.jsonl, checkpoints/, summary.json, plots/ and report.md.

    Example: `phaselm train recipes/phase-mamba.toml --set backbone.name=runs/mamba/model --out runs/pm`
    """
    from ..config import load_recipe
    from ..experiments.phase_mamba import PhaseMambaRecipe, train_core

    cfg = load_recipe(PhaseMambaRecipe, recipe, recipe_overrides(set_))
    run_dir = out or Path("runs") / recipe.stem
    summary = train_core(cfg, run_dir, resume=resume, command=command_line())
    if not is_main():  # the other processes of a multi-process run return a partial summary
        return
    _report(summary, as_json,
            f"R mean {summary['order']['mean']:.3f}, U mean {summary['uncertainty']['mean']:.3f}, "
            f"val ppl {summary['val_ppl_with_core']:.3f} with core / {summary['val_ppl_without_core']:.3f} without; "
            f"report: {run_dir / 'report.md'}")


@app.command("train-lm")
def train_lm(
    recipe: Path = typer.Argument(..., help="Language-model TOML recipe: top-level arch, then [kssm], [fusion] or "
                                            "[gpt] (the keywords of KSSMConfig, FusionConfig or GPTConfig), [data] "
                                            "[tokenizer] [train]."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory to create (default: runs/<recipe name>)."),
    set_: list[str] | None = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a "
                                            "larger train.steps extends it)."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Train a language model from scratch: K-SSM (bistable, monostable, no-mixer), the fusion family or GPT-2.

    Writes config.toml, metrics.jsonl, checkpoints/, model/ (save_pretrained), summary.json,
    plots/ and report.md. The trained model/ folder works with `phaselm generate`.

    Example: `phaselm train-lm recipes/kssm-v3.toml --out runs/kssm --set train.steps=200`
    """
    from ..config import load_recipe
    from ..experiments.language_model import LMRecipe
    from ..experiments.language_model import train_lm as run_train_lm

    cfg = load_recipe(LMRecipe, recipe, recipe_overrides(set_))
    run_dir = out or Path("runs") / recipe.stem
    summary = run_train_lm(cfg, run_dir, resume=resume, command=command_line())
    if not is_main():  # the other processes of a multi-process run return a partial summary
        return
    _report(summary, as_json, f"{summary['arch']}: {summary['parameters']:,} parameters, val loss "
                              f"{summary['val_ce']:.4f}; report: {run_dir / 'report.md'}")


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
    from ..experiments.demo import run_demo

    summary = run_demo(out, quick=quick)
    _report(summary, as_json, f"demo finished: {out / 'report.md'}")
