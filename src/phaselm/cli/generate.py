"""`phaselm generate`, `serve` and `report`: looking at a run's model and results."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import PhaseLMError
from .app import app, print_json


@app.command()
def generate(
    model: Path = typer.Argument(...,
                                 help="A run directory (train, train-lm, pretrain, demo) or a saved model folder."),
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
    from ..generation import check_sampling
    from ..generation import generate as run_generate
    from ..runs import open_run

    check_sampling(max_new_tokens, temperature, top_k)
    run = open_run(model)
    result = run_generate(run.model, run.tokenizer, prompt, max_new_tokens, temperature, top_k or None, seed, run.graft,
                          measured)
    if as_json:
        print_json(result.to_json())
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


# --------------------------------------------------------------------------------------------
# phaselm report / phaselm serve: the HTML report of a run, and the live token view
# --------------------------------------------------------------------------------------------


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (train, train-lm, pretrain, demo or a protocol run) or "
                                             "its model/ folder."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Where to write the page (default: RUN_DIR/report.html, replaced)."),
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
    from ..reporting import rebuild_html_report
    from ..runs import locate_run

    if (run_dir / "config.json").is_file() and not (run_dir / "config.toml").is_file():
        location = locate_run(run_dir)  # a saved model folder: report the run it was trained in
        if location.run_dir is None:
            raise PhaseLMError(f"{run_dir} is a model folder outside any run, with no training record to report; pass "
                               "the run directory it was trained in")
        run_dir = location.run_dir
    path = rebuild_html_report(run_dir, out)
    if as_json:
        print_json({"report": str(path)})
    else:
        typer.echo(f"wrote {path}")


@app.command()
def serve(
    checkpoint: Path = typer.Argument(
        ..., help="A `phaselm train-lm` run directory or model folder (K-SSM, GPT, …), or a Phase-Mamba run directory "
                  "from `phaselm train`/`demo`."
    ),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on; the default is reachable from this machine only."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="The most tokens one request may ask for."),
    log: bool = typer.Option(False, "--log", help="Log every request on stderr."),
) -> None:
    """Live token view: a local web page where a prompt streams generated tokens, coloured by tone.

    Hover a token for R, U and R·U; a running plot follows R and U over the tokens; toggles
    force the oscillators (sync, disorder, pin R — K-SSM) or switch a grafted Phase Core off.
    The page needs no network (no external scripts). Ctrl-C stops the server.

    Example: `phaselm serve runs/kssm --port 8000`, then open http://127.0.0.1:8000/
    """
    from ..serve import serve as run_serve

    run_serve(checkpoint, host=host, port=port, max_new_tokens=max_new_tokens, log=log, announce=typer.echo)
