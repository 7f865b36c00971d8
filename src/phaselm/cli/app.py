"""The ``phaselm`` app, what its command modules share, and :func:`main`.

Every command fails on bad input with one line on stderr and exit code 2 (no traceback), and
never overwrites an existing run directory or checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys

import typer

from ..errors import PhaseLMError

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


def recipe_overrides(items: list[str] | None) -> dict:
    """``--set key=value`` items → a dict of recipe overrides."""
    from ..config import parse_override

    return dict(parse_override(item) for item in items or [])


# The arguments of the running command: main(argv) sets them, so a command started from Python
# (main(["train-lm", ...])) records its own arguments, not the host program's sys.argv.
_ARGV: list[str] = []


def command_line() -> str:
    """The running command as typed (recorded with results)."""
    import shlex

    return " ".join(["phaselm", *(shlex.quote(a) for a in _ARGV)])


def is_main() -> bool:
    """Whether this is the main process of a (possibly multi-process) run."""
    from ..distributed import is_main_process

    return is_main_process()


def print_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))



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


def main(argv: list[str] | None = None) -> None:
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
