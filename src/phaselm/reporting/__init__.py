"""Run reports: plots of a training run's metrics, a Markdown summary and one HTML page.

A run directory holds ``metrics.jsonl`` (one JSON object per logged step; evaluation lines
carry ``"split"``) and the caller's final statistics. ``write_report`` turns both into
``plots/*.png``, ``report.md`` and ``report.html``; ``write_html_report`` writes the
self-contained page alone (protocol runs call it with their results) and
``rebuild_html_report`` (``phaselm report RUN_DIR``) rebuilds it from a run directory's files.
Every key is optional: a pretraining run has no R, U or tones, so each plot and section is
drawn only when its data is there.

The modules are layered, each importing only those below it: common (constants, formatting),
reading and provenance; plots and html_common; markdown and results; page on top.
"""

import matplotlib

# Reports are written on headless training machines: pick the file-only backend before any
# submodule imports pyplot, so pyplot never tries to open a display.
matplotlib.use("Agg")

from .common import (
    AUX_LOSS_KEYS,
    DPI,
    HTML_REPORT,
    MAIN_LOSS_KEYS,
    MAX_DETAIL_CHARS,
    MEASURED_TOKENS,
    PLOT_FILES,
    PROTOCOL_FILE,
    PROVENANCE,
    RESULT_GLOBS,
    SAMPLE_TOKENS_HTML,
    STAT_ROWS,
    TONE_COLOURS,
    TONE_GLYPH_BY_NAME,
    TONE_NAME_BY_GLYPH,
    VERSION_PACKAGES,
)
from .html_common import markdown_to_html
from .page import rebuild_html_report, write_html_report, write_report
from .plots import plot_loss, plot_order, plot_tones, tone_counts
from .provenance import git_commit, machine_description, software_versions
from .reading import read_metrics
from .results import discover_results, result_distributions

__all__ = [
    "AUX_LOSS_KEYS",
    "DPI",
    "HTML_REPORT",
    "MAIN_LOSS_KEYS",
    "MAX_DETAIL_CHARS",
    "MEASURED_TOKENS",
    "PLOT_FILES",
    "PROTOCOL_FILE",
    "PROVENANCE",
    "RESULT_GLOBS",
    "SAMPLE_TOKENS_HTML",
    "STAT_ROWS",
    "TONE_COLOURS",
    "TONE_GLYPH_BY_NAME",
    "TONE_NAME_BY_GLYPH",
    "VERSION_PACKAGES",
    "discover_results",
    "git_commit",
    "machine_description",
    "markdown_to_html",
    "plot_loss",
    "plot_order",
    "plot_tones",
    "read_metrics",
    "rebuild_html_report",
    "result_distributions",
    "software_versions",
    "tone_counts",
    "write_html_report",
    "write_report",
]
