"""One exception type for mistakes a user can fix.

The CLI turns a ``PhaseLMError`` into a single line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""


class PhaseLMError(Exception):
    """A user-facing error: the message says what is wrong, where, and how to fix it."""
