"""One exception type for mistakes a user can fix.

The CLI turns a ``PhaseLMError`` into a single line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""


class PhaseLMError(Exception):
    """A user-facing error: the message says what is wrong, where, and how to fix it."""


def one_line_reason(exc: BaseException, limit: int = 200) -> str:
    """A short single-line reason from any exception (library messages span lines), to quote
    inside a PhaseLMError."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
