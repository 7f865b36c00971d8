"""The ``phaselm`` command line: a thin layer over the Python API, one module per command group
(train, generate/serve/report, eval/diagnose, protocol, bench) registering on the one app.

Every command fails on bad input with one line on stderr and exit code 2 (no traceback), and
never overwrites an existing run directory or checkpoint.
"""

from . import bench, eval, generate, protocol, train  # noqa: F401  (each registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
