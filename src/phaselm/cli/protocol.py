"""`phaselm protocol …`: experiment protocols declared in TOML (phaselm.protocols)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, command_line, print_json

# --------------------------------------------------------------------------------------------
# phaselm protocol …: experiment protocols declared in TOML (phaselm.protocols)
# --------------------------------------------------------------------------------------------

protocol_app = typer.Typer(
    name="protocol",
    help="Run an experiment protocol declared in TOML before running: observation (blind vs measured), "
    "intervention (each condition vs none), ablation_grid or does_r_matter (issue 15's causal test), or any eval "
    "design (r_intervention, temperature_sweep, clamp_sweep, order_loss_correlation, ablation_table, "
    "fusion_diagnostics) with its options in [eval].\n\n"
    "The protocol file's SHA-256 is stored with its results, and results never attach to a changed protocol. "
    "Examples are in protocols/*.toml (each says at the top how to run it).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("run")
def protocol_run(
    file: Path = typer.Argument(..., help="The protocol TOML file ([protocol] [model] [prompts] [decoding] [design] "
                                          "[metrics] [statistics] …)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Out directory (default: runs/protocols/<file name>); refused if it holds "
                                         "another protocol's results."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """Run a protocol and write results.json, results.md, results.png and protocol.toml into --out.

    Kinds: `observation` (blind vs measured generation: token agreement, R mean / spread / range
    with permutation, Brown–Forsythe and Levene tests, bootstrap CIs, effect sizes, power for the
    n used), `intervention` (each condition vs none, paired by prompt and seed: KL, perplexity
    under a reference model, distinct-n, repetition, mean R) and `ablation_grid` (layer, K scale,
    oscillator count, U regulation on/off over validation windows and seeds: loss and R per cell)
    and `does_r_matter` (oscillator ablation and R pin / sync / disorder vs intact, ΔCE and KL
    paired per window, the R–loss correlation, and a verdict by the file's thresholds).
    Holm corrects every protocol's family of tests; every table states n. Running the same file
    again into the same --out replaces its results; a changed file is refused there.

    An eval design (`kind = "temperature_sweep"` …, options in `[eval]` named as its command's
    flags) runs as `phaselm eval …` does and writes the same files.

    Example: `phaselm protocol run protocols/kssm-observation.toml --out runs/protocols/kssm-observation`
    """
    from ..protocols import run_protocol

    result = run_protocol(file, out, command=command_line())
    if as_json:
        print_json(result)
    elif "files" in result:
        typer.echo(result["markdown"])
        table = f"; table: {result['files']['md']}" if "md" in result["files"] else ""
        typer.echo(f"results: {result['files']['json']}{table}")
    else:  # the fusion diagnostics: one line per check
        from ..evals.diagnostics_report import summary_lines

        typer.echo("\n".join(summary_lines(result)))


@protocol_app.command("check")
def protocol_check(
    file: Path = typer.Argument(..., help="The protocol TOML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the checked design as JSON."),
) -> None:
    """Check a protocol file without running it: every field, the design (n per condition) and its SHA-256.

    Example: `phaselm protocol check protocols/kssm-intervention.toml`
    """
    from ..protocols import read_protocol

    protocol = read_protocol(file)
    info = {**protocol.header(), "samples_per_condition": protocol.samples_per_condition, "seeds": protocol.seeds,
            "conditions": [c.to_dict() for c in protocol.conditions], "metrics": protocol.metrics,
            "test": protocol.test, "alpha": protocol.alpha, "settings": protocol.settings,
            "thresholds": protocol.thresholds}
    if as_json:
        print_json(info)
    else:
        typer.echo(f"{file}: {protocol.kind} protocol {protocol.name!r}, n = {protocol.samples_per_condition} per "
                   f"condition, sha256 {protocol.sha256}")
