"""The ``phaselm`` command line: a thin layer over the Python API.

Every command fails on bad input with one line on stderr and exit code 2 (no traceback), and
never overwrites an existing run directory or checkpoint.
"""

from __future__ import annotations

import json
import logging
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


# The arguments of the running command: main(argv) sets them, so a command started from Python
# (main(["train-lm", ...])) records its own arguments, not the host program's sys.argv.
_ARGV: list[str] = []


def _command_line() -> str:
    import shlex

    return " ".join(["phaselm", *(shlex.quote(a) for a in _ARGV)])


def _main_process() -> bool:
    from .training import is_main_process

    return is_main_process()


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


@app.command()
def pretrain(
    recipe: Optional[Path] = typer.Argument(None, help="TOML recipe (sections [model] [data] [tokenizer] [train]); defaults if omitted."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory to create."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a larger train.steps extends it)."),
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
    if not _main_process():  # multi-process runs: the first process reports
        return
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
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a larger train.steps extends it)."),
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
    if not _main_process():  # multi-process runs: the first process reports
        return
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
    recipe: Path = typer.Argument(..., help="Language-model TOML recipe: top-level arch, then [kssm], [fusion] or [gpt] (the keywords of KSSMConfig, FusionConfig or GPTConfig), [data] [tokenizer] [train]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create (default: runs/<recipe name>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=OVERRIDE_HELP),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint (same recipe; a larger train.steps extends it)."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Train a language model from scratch: K-SSM (bistable, monostable, no-mixer), the fusion family or the GPT-2 baseline.

    Writes config.toml, metrics.jsonl, checkpoints/, model/ (save_pretrained), summary.json,
    plots/ and report.md. The trained model/ folder works with `phaselm generate`.

    Example: `phaselm train-lm recipes/kssm-v3.toml --out runs/kssm --set train.steps=200`
    """
    from .config import load_recipe
    from .experiments.language_model import LMRecipe, train_lm as run_train_lm

    cfg = load_recipe(LMRecipe, recipe, _overrides(set_))
    run_dir = out or Path("runs") / recipe.stem
    summary = run_train_lm(cfg, run_dir, resume=resume, command=_command_line())
    if not _main_process():  # multi-process runs: the first process reports
        return
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"{summary['arch']}: {summary['parameters']:,} parameters, val loss {summary['val_ce']:.4f}; report: {run_dir / 'report.md'}")


@app.command()
def generate(
    model: Path = typer.Argument(..., help="A run directory (train, train-lm, pretrain, demo) or a saved model folder."),
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
    from .generation import check_sampling
    from .generation import generate as run_generate
    from .runs import open_run

    check_sampling(max_new_tokens, temperature, top_k)
    run = open_run(model)
    result = run_generate(run.model, run.tokenizer, prompt, max_new_tokens, temperature, top_k or None, seed, run.graft, measured)
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


# --------------------------------------------------------------------------------------------
# phaselm report / phaselm serve: the HTML report of a run, and the live token view
# --------------------------------------------------------------------------------------------


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (train, train-lm, pretrain, demo or a protocol run) or its model/ folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the page (default: RUN_DIR/report.html, replaced)."),
    as_json: bool = typer.Option(False, "--json", help="Print the written path as JSON."),
) -> None:
    """Rebuild RUN_DIR/report.html, one self-contained page, from the run directory's files.

    Reads config.toml, metrics.jsonl, summary.json, protocol.toml, provenance.json and the
    results of evals and protocols found there (results.json, */results.json, evals/*.json).
    The page embeds its plots (loss and R over steps, tones, R–U scatter with the Goldilocks
    box, per-condition distributions), the statistics tables, the exact config and protocol,
    the software versions and the git commit; it references nothing outside itself.

    Example: `phaselm report runs/kssm` (then open runs/kssm/report.html)
    """
    from .reporting import rebuild_html_report
    from .runs import locate_run

    if (run_dir / "config.json").is_file() and not (run_dir / "config.toml").is_file():
        location = locate_run(run_dir)  # a saved model folder: report the run it was trained in
        if location.run_dir is None:
            raise PhaseLMError(f"{run_dir} is a model folder outside any run, with no training record to report; pass the run directory it was trained in")
        run_dir = location.run_dir
    path = rebuild_html_report(run_dir, out)
    if as_json:
        _print_json({"report": str(path)})
    else:
        typer.echo(f"wrote {path}")


@app.command()
def serve(
    checkpoint: Path = typer.Argument(
        ..., help="A `phaselm train-lm` run directory or model folder (K-SSM, GPT, …), or a Phase-Mamba run directory from `phaselm train`/`demo`."
    ),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; the default is reachable from this machine only."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="The most tokens one request may ask for."),
    log: bool = typer.Option(False, "--log", help="Log every request on stderr."),
) -> None:
    """Live token view: a local web page where a prompt streams generated tokens, coloured by tone.

    Hover a token for R, U and R·U; a running plot follows R and U over the tokens; toggles
    force the oscillators (sync, disorder, pin R — K-SSM) or switch a grafted Phase Core off.
    The page needs no network (no external scripts). Ctrl-C stops the server.

    Example: `phaselm serve runs/kssm --port 8000`, then open http://127.0.0.1:8000/
    """
    from .serve import serve as run_serve

    run_serve(checkpoint, host=host, port=port, max_new_tokens=max_new_tokens, log=log, announce=typer.echo)


# --------------------------------------------------------------------------------------------
# phaselm eval …: thin wrappers over phaselm.evals (each prints JSON with --json and writes
# NAME.json + NAME.png into --out, refusing to overwrite an earlier result there)
# --------------------------------------------------------------------------------------------

eval_app = typer.Typer(
    name="eval",
    help="Evaluate a trained language model (`phaselm train-lm` run): R interventions, temperature, "
    "clamp sweep, R–loss correlation, ablation table.\n\n"
    "Each command writes NAME.json and NAME.png into --out (default RUN_DIR/evals), never overwrites an "
    "earlier result there, and prints the JSON with --json.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(eval_app, name="eval")

RUN_HELP = "A run directory (train, train-lm, pretrain, demo) or a saved model folder."
EVAL_OUT_HELP = "Directory for NAME.json and NAME.png (default: RUN_DIR/evals); an existing result there is never overwritten."
PROMPTS_HELP = "Number of prompts, drawn evenly from the validation split (the last val_fraction of the corpus); ≥ 2, 50+ for real statistics."


def _eval_out(run_dir: Path, out: Optional[Path]) -> Path:
    from .evals import default_out_dir

    return out if out is not None else default_out_dir(run_dir)


def _eval_done(result: dict, as_json: bool, headline: str) -> None:
    if as_json:
        _print_json(result)
        return
    typer.echo(result["markdown"])
    typer.echo(f"{headline}; plot: {result['files']['png']}, JSON: {result['files']['json']}")


def _val_shape(subject, seq_len: Optional[int]) -> int:
    return seq_len or subject.train_seq_len or 256


@eval_app.command("intervention")
def eval_intervention(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    kind: Optional[List[str]] = typer.Option(
        None, "--kind", "-k",
        help="What to force (repeatable): `sync` (all phases at the mean phase, R = 1), `disorder` (evenly spread, R = 0), "
        "`pin` (an arc with R = --value exactly) or `pin=0.3`. Default: sync.",
    ),
    value: Optional[float] = typer.Option(None, "--value", "-r", help="The R that `--kind pin` pins, in [0, 1]."),
    layers: str = typer.Option("all", "--layers", "-l", help="Layers to force: `all` or indices like `0,1` (0-based)."),
    prompts: int = typer.Option(50, "--prompts", "-n", help=PROMPTS_HELP),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Tokens per prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per prompt (≥ 4)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; 0 decodes greedily. Forced and unforced runs share the seed."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens; 0 keeps all."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Force the oscillator phases at chosen layers and measure what changes, paired by prompt.

    For each prompt the unforced model continues it; then each intervention replaces the phases
    after the coupling step (before the harmonic readout) and continues it with the same seed.
    Reported per intervention: KL(p_unforced ‖ p_forced) of the next-token distributions along
    the unforced text, distinct-1/2/3, repetition (1 − distinct-4), perplexity of the generated
    text under the unforced model and mean R per layer — each compared with the unforced run by
    a paired t-test and a Wilcoxon signed-rank test (Holm-corrected over metrics × interventions),
    with Cohen's d_z, rank-biserial r and a bootstrap CI. Needs oscillators: K-SSM or a grafted Phase Core.

    Example: `phaselm eval intervention runs/kssm --kind sync --kind disorder --kind pin=0.3 --layers 2,3 --json`
    """
    from .evals import load_subject, prepare_outputs, r_intervention_eval, validation_prompts
    from .interventions import Intervention, parse_layers, require_oscillator_sites

    layer_spec = parse_layers(layers)
    items = [Intervention.parse(k, layer_spec, value) for spec in (kind or ["sync"]) for k in spec.split(",") if k.strip()]
    if value is not None and not any(i.kind == "pin" for i in items):
        raise PhaseLMError("--value only applies to --kind pin; add --kind pin or drop --value")
    if prompts < 2:
        raise PhaseLMError(f"paired statistics need at least 2 prompts, got --prompts {prompts}; use 50 or more")
    out_dir = _eval_out(run_dir, out)
    prepare_outputs(out_dir, "intervention")  # refuse before the slow part
    subject = load_subject(run_dir)
    require_oscillator_sites(subject.model, "an R intervention eval")
    result = r_intervention_eval(
        subject.model, subject.tokenizer, validation_prompts(subject.validation_ids(), prompts, prompt_tokens), items,
        max_new_tokens=max_new_tokens, seed=seed, temperature=temperature, top_k=top_k or None, batch_size=batch_size,
        out_dir=out_dir, model_name=str(run_dir), command=_command_line(),
    )
    _eval_done(result, as_json, f"{result['n_prompts']} prompts, {len(items)} intervention(s)")


@eval_app.command("temperature")
def eval_temperature(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    temperatures: str = typer.Option("0,0.5,0.8,1.0,1.2,1.5", "--temperatures", "-t", help="Comma-separated temperatures; 0 = greedy."),
    prompts: int = typer.Option(50, "--prompts", "-n", help=PROMPTS_HELP),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Tokens per prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per prompt (≥ 4)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens; 0 keeps all."),
    seed: int = typer.Option(0, help="Sampling seed (the same for every temperature)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Sample at several temperatures and measure text quality per temperature.

    Per temperature, over the same prompts: distinct-1/2/3, repetition (1 − distinct-4),
    perplexity of the generated text under the model at temperature 1, and mean R per layer for
    K-SSM and grafted runs (— for models without oscillators). Mean with a bootstrap 95% CI.

    Example: `phaselm eval temperature runs/kssm --temperatures 0,0.8,1.0,1.5 --prompts 50`
    """
    from .evals import load_subject, parse_floats, prepare_outputs, temperature_sweep, validation_prompts

    temps = parse_floats(temperatures, "temperatures")
    if prompts < 2:
        raise PhaseLMError(f"a temperature sweep needs at least 2 prompts, got --prompts {prompts}")
    out_dir = _eval_out(run_dir, out)
    prepare_outputs(out_dir, "temperature")
    subject = load_subject(run_dir)
    result = temperature_sweep(
        subject.model, subject.tokenizer, validation_prompts(subject.validation_ids(), prompts, prompt_tokens), temps,
        max_new_tokens=max_new_tokens, seed=seed, top_k=top_k or None, batch_size=batch_size, out_dir=out_dir,
        model_name=str(run_dir), command=_command_line(),
    )
    _eval_done(result, as_json, f"{len(temps)} temperatures × {result['n_prompts']} prompts")


@eval_app.command("clamp")
def eval_clamp(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    bounds: Optional[List[str]] = typer.Option(
        None, "--bounds", "-b",
        help="u_min:u_max pairs, repeatable or comma-separated, e.g. `--bounds 0.1:10,0.5:2`. Need u_min < u_max, and u_min > 0 "
        "for a bistable model. Default: 0.1:10, 0.05:20, 0.5:2, 0.1:1, 1:10.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per window (default: the run's training seq_len)."),
    batches: int = typer.Option(20, "--batches", help="Validation batches per condition (the same batches every time)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a trained K-SSM with u clamped to other bounds — at evaluation time, not retraining.

    The weights stay as trained; each pair of bounds replaces the clamp of u in every bank while
    the validation batches run. Reported per pair (and for the model as trained): validation loss
    and perplexity, R mean/std (per layer too), u mean/std and the share of positions whose u
    sits at a bound. A monostable model gets the clamp switched on for each pair.

    Example: `phaselm eval clamp runs/kssm --bounds 0.1:10 --bounds 0.5:2 --bounds 1:10 --json`
    """
    from .evals import DEFAULT_BOUNDS, clamp_sweep, iter_bounds, load_subject, prepare_outputs
    from .interventions import check_clamp_bounds

    pairs = iter_bounds(bounds) if bounds else list(DEFAULT_BOUNDS)
    for lo, hi in pairs:
        check_clamp_bounds(lo, hi, bistable=False)  # order and finiteness now; u_min > 0 once the model is known
    out_dir = _eval_out(run_dir, out)
    prepare_outputs(out_dir, "clamp")
    subject = load_subject(run_dir)
    result = clamp_sweep(
        subject.model, subject.validation_ids(), pairs, batch_size=batch_size, seq_len=_val_shape(subject, seq_len),
        max_batches=batches, out_dir=out_dir, model_name=str(run_dir), command=_command_line(),
    )
    _eval_done(result, as_json, f"{len(pairs)} bounds (evaluation-time sweep, not retraining)")


@eval_app.command("correlation")
def eval_correlation(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per window (default: the run's training seq_len)."),
    batches: int = typer.Option(20, "--batches", help="Validation batches."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Correlate R with the per-token loss on validation text, per layer.

    Pairs R at each position with the cross-entropy of the next token predicted there, and
    reports Pearson r and Spearman ρ with p-values per layer and for the mean over layers, the
    mean loss per R decile, and a hexbin plot. Tokens of one sequence are not independent, so
    read the coefficients more than the p-values.

    Example: `phaselm eval correlation runs/kssm --batches 20 --json`
    """
    from .evals import load_subject, order_loss_correlation, prepare_outputs
    from .interventions import require_oscillator_sites

    out_dir = _eval_out(run_dir, out)
    prepare_outputs(out_dir, "correlation")
    subject = load_subject(run_dir)
    require_oscillator_sites(subject.model, "an R–loss correlation")
    result = order_loss_correlation(
        subject.model, subject.validation_ids(), batch_size=batch_size, seq_len=_val_shape(subject, seq_len), max_batches=batches,
        out_dir=out_dir, model_name=str(run_dir), command=_command_line(),
    )
    _eval_done(result, as_json, f"{result['tokens']:,} tokens")


@eval_app.command("ablation")
def eval_ablation(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories to compare (K-SSM bistable, monostable, no-mixer, GPT baseline, …)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per window (default: the shortest training seq_len of the runs)."),
    batches: int = typer.Option(20, "--batches", help="Validation batches per run (the same windows for every run)."),
    out: Path = typer.Option(Path("runs/ablation"), "--out", "-o", help="Directory for ablation.json, ablation.md and ablation.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compare trained runs in one table: parameters, val loss/ppl, R and u statistics.

    Every run is evaluated on its own validation split with the same batch shape. Columns:
    variant, parameters, validation loss and perplexity, R mean/std, u mean/std and the share of
    u at the clamp bounds; "—" where a model has no such quantity (GPT has no R or u). Writes a
    Markdown table beside the JSON and the plot.

    Example: `phaselm eval ablation runs/kssm runs/kssm-mono runs/kssm-nomixer runs/gpt --out runs/ablation`
    """
    from .evals import ablation_table

    result = ablation_table(run_dirs, batch_size=batch_size, seq_len=seq_len, max_batches=batches, out_dir=out, command=_command_line())
    _eval_done(result, as_json, f"{len(run_dirs)} runs; table: {result['files']['md']}")


# --------------------------------------------------------------------------------------------
# phaselm protocol …: experiment protocols declared in TOML (phaselm.protocols)
# --------------------------------------------------------------------------------------------

protocol_app = typer.Typer(
    name="protocol",
    help="Run an experiment protocol declared in TOML before running: observation (blind vs measured), "
    "intervention (each condition vs none) or ablation_grid.\n\n"
    "The protocol file's SHA-256 is stored with its results, and results never attach to a changed protocol. "
    "Examples are in protocols/*.toml (each says at the top how to run it).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("run")
def protocol_run(
    file: Path = typer.Argument(..., help="The protocol TOML file ([protocol] [model] [prompts] [decoding] [design] [metrics] [statistics] …)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Out directory (default: runs/protocols/<file name>); refused if it holds another protocol's results."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """Run a protocol and write results.json, results.md, results.png and protocol.toml into --out.

    Kinds: `observation` (blind vs measured generation: token agreement, R mean / spread / range
    with permutation, Brown–Forsythe and Levene tests, bootstrap CIs, effect sizes, power for the
    n used), `intervention` (each condition vs none, paired by prompt and seed: KL, perplexity
    under a reference model, distinct-n, repetition, mean R) and `ablation_grid` (layer, K scale,
    oscillator count, U regulation on/off over validation windows and seeds: loss and R per cell).
    Holm corrects every protocol's family of tests; every table states n. Running the same file
    again into the same --out replaces its results; a changed file is refused there.

    Example: `phaselm protocol run protocols/kssm-observation.toml --out runs/protocols/kssm-observation`
    """
    from .protocols import run_protocol

    result = run_protocol(file, out, command=_command_line())
    if as_json:
        _print_json(result)
    else:
        typer.echo(result["markdown"])
        typer.echo(f"results: {result['files']['json']}; table: {result['files']['md']}")


@protocol_app.command("check")
def protocol_check(
    file: Path = typer.Argument(..., help="The protocol TOML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the checked design as JSON."),
) -> None:
    """Check a protocol file without running it: every field, the design (n per condition) and its SHA-256.

    Example: `phaselm protocol check protocols/kssm-intervention.toml`
    """
    from .protocols import load_protocol

    protocol = load_protocol(file)
    info = {**protocol.header(), "samples_per_condition": protocol.samples_per_condition, "seeds": protocol.seeds,
            "conditions": [c.to_dict() for c in protocol.conditions], "metrics": protocol.metrics, "test": protocol.test,
            "alpha": protocol.alpha}
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"{file}: {protocol.kind} protocol {protocol.name!r}, n = {protocol.samples_per_condition} per condition, "
                   f"sha256 {protocol.sha256}")


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise PhaseLMError(f"{what} must be positive integers separated by commas, e.g. 1,4,16; got {text!r}")
    return values


@app.command()
def diagnose(
    path: Path = typer.Argument(..., help="A fusion-family train-lm run directory (or its model/ folder)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for diagnostics.json and plots (default: PATH/diagnostics)."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text to measure on (default: the run's own validation split)."),
    windows: int = typer.Option(8, "--windows", help="Validation windows per measurement."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json", help="Print diagnostics.json to stdout."),
) -> None:
    """Diagnose an RWKV-6 / Mamba-2 fusion model: D1–D4, long context, state norms, gates, V5 metrics.

    Every check prints PASS / WARN / FAIL against SPEC.md's thresholds (or ours, where the seed
    gives none; diagnostics.json says which). Also measured: state norms per layer at 64–512
    tokens, activation variance through depth (amplifier or damper), gradient norm per branch,
    the loss cost of zeroing each branch, and the fusion gates at every saved checkpoint.

    Example: `phaselm diagnose runs/fusion-gf-mh --json`
    """
    from .diagnostics import DiagnosticsConfig, run_diagnostics, summary_lines

    if windows < 1:
        raise PhaseLMError(f"--windows must be at least 1, got {windows}")
    target = out or path / "diagnostics"
    if (target / "diagnostics.json").exists():
        raise PhaseLMError(f"{target} already holds diagnostics.json; pass another --out or move it away")
    result = run_diagnostics(path, out=target, corpus=corpus, cfg=DiagnosticsConfig(windows=windows), device=device)
    if as_json:
        _print_json(result)
    else:
        typer.echo("\n".join(summary_lines(result)))
        typer.echo(f"diagnostics: {target / 'diagnostics.json'}")


@app.command()
def bench(
    recipes: Optional[List[Path]] = typer.Argument(None, help="Language-model recipes to measure (e.g. recipes/fusion-gf-mh.toml); not with --backbone."),
    baseline: Path = typer.Option(Path("recipes/gpt2-fusion-baseline.toml"), "--baseline", help="The recipe every ratio is against."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Measure a Phase Core grafted onto this Hugging Face backbone instead: a shape with random weights (mamba-130m, mamba-370m, mamba-790m, mamba-1.4b, mamba-2.8b), a local model folder or a hub id."),
    quick: bool = typer.Option(False, "--quick", help="With --backbone: a toy-sized Mamba on the CPU, in seconds (checks the command, measures nothing)."),
    layer: str = typer.Option("middle", "--layer", help="With --backbone: the layer the core sits at (an index or 'middle')."),
    modes: str = typer.Option("token,recurrent", "--modes", help="With --backbone: core modes to time, comma-separated."),
    reference_seq: int = typer.Option(0, "--reference-seq", help="With --backbone: also time one forward of 1 × this many tokens on transformers' own path (slow without mamba_ssm), for the speed-up."),
    batches: Optional[str] = typer.Option(None, "--batches", help="Batch sizes, comma-separated (default 1,4,16,64; with --backbone one batch size, default 4)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence for the training and inference timings."),
    steps: int = typer.Option(10, "--steps", help="Timed steps per measurement (after warm-up)."),
    contexts: str = typer.Option("64,256,1024,4096", "--contexts", help="Context lengths for the decode cost per token (with --backbone: the first is the prompt)."),
    compile_batches: str = typer.Option("", "--compile-batches", help="Batch sizes also timed with the training step under torch.compile (what training does on CUDA), e.g. 16."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write bench.json and bench.md here (refused if they exist)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a value in every recipe, e.g. `--set fusion.n_layers=2` (repeatable)."),
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
    `phaselm bench --backbone mamba-2.8b --layer 32 --out runs/bench-2.8b`; `phaselm bench --backbone mamba-130m --quick`
    """
    from .bench import BackboneBenchConfig, BenchConfig, backbone_table, bench_backbone, table
    from .bench import bench as run_bench

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
            batch=batch_list[0], seq_len=seq_len, layer=layer, modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
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
        cfg = BenchConfig(batches=_int_list(batches or "1,4,16,64", "--batches"), seq_len=seq_len, steps=steps, decode_contexts=_int_list(contexts, "--contexts"),
                          compile_batches=_int_list(compile_batches, "--compile-batches") if compile_batches else ())
        result = run_bench(recipes, baseline, cfg, overrides=_overrides(set_), log=lambda line: typer.echo(line, err=True))
        rows = table(result)
    result["command"] = _command_line()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        (out / "bench.md").write_text(f"Device: {result['device']}. Command: `{result['command']}`\n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"device: {result['device']}")
        typer.echo("\n".join(rows))


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars: no per-file tqdm bars or kernel fallback notes."""
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


class _NoteHandler(logging.Handler):
    """PhaseLM's own INFO messages (which kernels run, …) as ``note:`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"note: {record.getMessage()}", err=True)


def _show_notes() -> None:
    log = logging.getLogger("phaselm")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        log.addHandler(_NoteHandler())
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: PhaseLMError → one line on stderr, exit code 2."""
    _quiet_libraries()
    _show_notes()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, standalone_mode=False)
    except PhaseLMError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        code = _click_exit(exc)
        if code is None:
            raise
        sys.exit(code)


def _click_exit(exc: Exception) -> int | None:
    """The exit code for a click/typer exception, after one line on stderr; None for anything
    else (a bug, which keeps its traceback). typer ≥ 0.2x carries its own copy of click, so the
    classes are matched by name."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "Exit" in names:
        return getattr(exc, "exit_code", 0)
    if "Abort" in names:
        typer.echo("aborted", err=True)
        return 1
    if "ClickException" in names:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "phaselm"
        typer.echo(f"error: {' '.join(message.split()).rstrip('.')}; see `{command} --help`", err=True)
        return 2
    return None


if __name__ == "__main__":  # `python -m phaselm.cli` (and `accelerate launch -m phaselm.cli …`)
    main()
