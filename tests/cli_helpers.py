"""Running the ``phaselm`` CLI inside a test and checking its one-line errors."""

from __future__ import annotations

from phaselm.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``phaselm ARGS`` in-process → (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    """Exit code 2 and exactly one ``error: …`` line on stderr that contains ``match``."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]
