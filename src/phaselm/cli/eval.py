"""`phaselm eval …` and `phaselm diagnose`: each builds a protocol from its flags
(phaselm.protocols.eval_designs) and runs it with the one runner (phaselm.protocols.run_protocol)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, command_line, print_json

# --------------------------------------------------------------------------------------------
# phaselm eval …: flags → a protocol of an eval design, run by the protocol runner (each prints
# JSON with --json and writes NAME.json + NAME.png into --out, refusing to overwrite an earlier result there)
# --------------------------------------------------------------------------------------------

eval_app = typer.Typer(
    name="eval",
    help="Evaluate any run or model folder (train-lm, pretrain, train, demo): R interventions, temperature, "
    "clamp sweep, R–loss correlation, ablation table.\n\n"
    "Each command writes NAME.json and NAME.png into --out (default RUN_DIR/evals), never overwrites an "
    "earlier result there, and prints the JSON with --json.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(eval_app, name="eval")

RUN_HELP = "A run directory (train, train-lm, pretrain, demo) or a saved model folder."
EVAL_OUT_HELP = ("Directory for NAME.json and NAME.png (default: RUN_DIR/evals); an existing result there is "
                 "never overwritten.")
PROMPTS_HELP = ("Number of prompts, drawn evenly from the validation split (the last val_fraction of the corpus); "
                "≥ 2, 50+ for real statistics.")


def _eval_done(result: dict, as_json: bool, headline: str) -> None:
    if as_json:
        print_json(result)
        return
    typer.echo(result["markdown"])
    typer.echo(f"{headline}; plot: {result['files']['png']}, JSON: {result['files']['json']}")


@eval_app.command("intervention")
def eval_intervention(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    kind: list[str] | None = typer.Option(
        None, "--kind", "-k",
        help="What to force (repeatable): `sync` (all phases at the mean phase, R = 1), `disorder` (evenly spread, R = "
        "0), `pin` (an arc with R = --value exactly) or `pin=0.3`. Default: sync.",
    ),
    value: float | None = typer.Option(None, "--value", "-r", help="The R that `--kind pin` pins, in [0, 1]."),
    layers: str = typer.Option("all", "--layers", "-l", help="Layers to force: `all` or indices like `0,1` (0-based)."),
    prompts: int = typer.Option(50, "--prompts", "-n", help=PROMPTS_HELP),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Tokens per prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per prompt (≥ 4)."),
    temperature: float = typer.Option(1.0,
                                      help="Sampling temperature; 0 decodes greedily. Forced and unforced runs share "
                                           "the seed."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens; 0 keeps all."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together."),
    out: Path | None = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
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
    from ..protocols import intervention_protocol, run_protocol

    protocol = intervention_protocol(run_dir, kind, value, layers, prompts, prompt_tokens, max_new_tokens, temperature,
                                     top_k, seed, batch_size)
    result = run_protocol(protocol, out, command=command_line())
    _eval_done(result, as_json, f"{result['n_prompts']} prompts, {len(result['results'])} intervention(s)")


@eval_app.command("temperature")
def eval_temperature(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    temperatures: str = typer.Option("0,0.5,0.8,1.0,1.2,1.5", "--temperatures", "-t",
                                     help="Comma-separated temperatures; 0 = greedy."),
    prompts: int = typer.Option(50, "--prompts", "-n", help=PROMPTS_HELP),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Tokens per prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens generated per prompt (≥ 4)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens; 0 keeps all."),
    seed: int = typer.Option(0, help="Sampling seed (the same for every temperature)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together."),
    out: Path | None = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Sample at several temperatures and measure text quality per temperature.

    Per temperature, over the same prompts: distinct-1/2/3, repetition (1 − distinct-4),
    perplexity of the generated text under the model at temperature 1, and mean R per layer for
    K-SSM and grafted runs (— for models without oscillators). Mean with a bootstrap 95% CI.

    Example: `phaselm eval temperature runs/kssm --temperatures 0,0.8,1.0,1.5 --prompts 50`
    """
    from ..protocols import run_protocol, temperature_protocol

    protocol = temperature_protocol(run_dir, temperatures, prompts, prompt_tokens, max_new_tokens, top_k, seed,
                                    batch_size)
    result = run_protocol(protocol, out, command=command_line())
    _eval_done(result, as_json, f"{len(result['rows'])} temperatures × {result['n_prompts']} prompts")


@eval_app.command("clamp")
def eval_clamp(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    bounds: list[str] | None = typer.Option(
        None, "--bounds", "-b",
        help="u_min:u_max pairs, repeatable or comma-separated, e.g. `--bounds 0.1:10,0.5:2`. Need u_min < u_max, and "
        "u_min > 0 for a bistable model. Default: 0.1:10, 0.05:20, 0.5:2, 0.1:1, 1:10.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: int | None = typer.Option(None, "--seq-len",
                                       help="Tokens per window (default: the run's training seq_len)."),
    batches: int = typer.Option(20, "--batches",
                                help="Validation batches per condition (the same batches every time)."),
    out: Path | None = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a trained K-SSM with u clamped to other bounds — at evaluation time, not retraining.

    The weights stay as trained; each pair of bounds replaces the clamp of u in every bank while
    the validation batches run. Reported per pair (and for the model as trained): validation loss
    and perplexity, R mean/std (per layer too), u mean/std and the share of positions whose u
    sits at a bound. A monostable model gets the clamp switched on for each pair.

    Example: `phaselm eval clamp runs/kssm --bounds 0.1:10 --bounds 0.5:2 --bounds 1:10 --json`
    """
    from ..protocols import clamp_protocol, run_protocol

    protocol = clamp_protocol(run_dir, bounds, batch_size, seq_len, batches)
    result = run_protocol(protocol, out, command=command_line())
    _eval_done(result, as_json, f"{len(protocol.settings['bounds'])} bounds (evaluation-time sweep, not retraining)")


@eval_app.command("correlation")
def eval_correlation(
    run_dir: Path = typer.Argument(..., help=RUN_HELP),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: int | None = typer.Option(None, "--seq-len",
                                       help="Tokens per window (default: the run's training seq_len)."),
    batches: int = typer.Option(20, "--batches", help="Validation batches."),
    out: Path | None = typer.Option(None, "--out", "-o", help=EVAL_OUT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Correlate R with the per-token loss on validation text, per layer.

    Pairs R at each position with the cross-entropy of the next token predicted there, and
    reports Pearson r and Spearman ρ with p-values per layer and for the mean over layers, the
    mean loss per R decile, and a hexbin plot. Tokens of one sequence are not independent, so
    read the coefficients more than the p-values.

    Example: `phaselm eval correlation runs/kssm --batches 20 --json`
    """
    from ..protocols import correlation_protocol, run_protocol

    result = run_protocol(correlation_protocol(run_dir, batch_size, seq_len, batches), out, command=command_line())
    _eval_done(result, as_json, f"{result['tokens']:,} tokens")


@eval_app.command("ablation")
def eval_ablation(
    run_dirs: list[Path] = typer.Argument(...,
                                          help="Run directories to compare (K-SSM bistable, monostable, no-mixer, GPT "
                                               "baseline, …)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Validation windows per batch."),
    seq_len: int | None = typer.Option(None, "--seq-len",
                                       help="Tokens per window (default: the shortest training seq_len of the runs)."),
    batches: int = typer.Option(20, "--batches", help="Validation batches per run (the same windows for every run)."),
    out: Path = typer.Option(Path("runs/ablation"), "--out", "-o",
                             help="Directory for ablation.json, ablation.md and ablation.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compare trained runs in one table: parameters, val loss/ppl, R and u statistics.

    Every run is evaluated on its own validation split with the same batch shape. Columns:
    variant, parameters, validation loss and perplexity, R mean/std, u mean/std and the share of
    u at the clamp bounds; "—" where a model has no such quantity (GPT has no R or u). Writes a
    Markdown table beside the JSON and the plot.

    Example: `phaselm eval ablation runs/kssm runs/kssm-mono runs/kssm-nomixer runs/gpt --out runs/ablation`
    """
    from ..protocols import ablation_protocol, run_protocol

    result = run_protocol(ablation_protocol(run_dirs, batch_size, seq_len, batches), out, command=command_line())
    _eval_done(result, as_json, f"{len(run_dirs)} runs; table: {result['files']['md']}")


@app.command()
def diagnose(
    path: Path = typer.Argument(..., help="A fusion-family train-lm run directory (or its model/ folder)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Directory for diagnostics.json and plots (default: PATH/diagnostics)."),
    corpus: str | None = typer.Option(None, "--corpus",
                                      help="Text to measure on (default: the run's own validation split)."),
    windows: int = typer.Option(8, "--windows", help="Validation windows per measurement."),
    device: str | None = typer.Option(None, "--device", help="cuda or cpu (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json", help="Print diagnostics.json to stdout."),
) -> None:
    """Diagnose an RWKV-6 / Mamba-2 fusion model: D1–D4, long context, state norms, gates, V5 metrics.

    Every check prints PASS / WARN / FAIL against seed 004's thresholds (or ours, where the seed
    gives none; diagnostics.json says which, docs/seeds-vs-phaselm.md why). Also measured: state
    norms per layer at 64–512 tokens, activation variance through depth (amplifier or damper),
    gradient norm per branch, the loss cost of zeroing each branch, and the fusion gates at every
    saved checkpoint.

    Example: `phaselm diagnose runs/fusion-gf-mh --json`
    """
    from ..evals.diagnostics_report import summary_lines
    from ..protocols import diagnostics_protocol, run_protocol

    target = out or path / "diagnostics"
    result = run_protocol(diagnostics_protocol(path, corpus, windows, device=device), target, progress=False,
                          command=command_line())
    if as_json:
        print_json(result)
    else:
        typer.echo("\n".join(summary_lines(result)))
        typer.echo(f"diagnostics: {target / 'diagnostics.json'}")
