"""The bottom of reporting/: constants (files, loss keys, tone colours) and value formatting."""

from __future__ import annotations

import math
from typing import Any

from ..observables import TONES

DPI = 110
MEASURED_TOKENS = 64  # rows of the per-token sample table; longer samples are cut
PLOT_FILES = {"order": "order.png", "loss": "loss.png", "tones": "tones.png"}
MAIN_LOSS_KEYS = ("loss", "ce")
# The regularisers are orders of magnitude smaller than the cross-entropy: they get their own
# panel, or they would sit flat on the x axis.
AUX_LOSS_KEYS = ("uncertainty_reg", "presence", "tonal")
STAT_ROWS = (("order", "R"), ("uncertainty", "U"), ("ru", "R·U"))

# One colour per tone, hot (over-synchronised) to cold (unformed), shared by report.html and the
# live token view (`phaselm serve`), so a tone looks the same everywhere.
TONE_COLOURS = {
    "over-sync": "#d1495b",
    "balance": "#edae49",
    "goldilocks": "#3f9e4d",
    "unbound-joy": "#00798c",
    "silent-intimacy": "#6a4c93",
    "unformed": "#8d99ae",
}

TONE_NAME_BY_GLYPH = {t.glyph: t.name for t in TONES}
TONE_GLYPH_BY_NAME = {t.name: t.glyph for t in TONES}

HTML_REPORT = "report.html"
PROVENANCE = "provenance.json"
PROTOCOL_FILE = "protocol.toml"
RESULT_GLOBS = ("results.json", "*/results.json", "evals/*.json")
VERSION_PACKAGES = ("phaselm", "torch", "transformers", "accelerate", "numpy", "scipy", "matplotlib")
SAMPLE_TOKENS_HTML = 400  # measured-sample tokens shown in report.html
MAX_DETAIL_CHARS = 300  # longer scalar fields of a result are cut in its details table


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float measurement (not a bool)."""
    # bool is an int subclass, but a True in a metric column is not a measurement.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (ints whole); None as a dash; anything else as str."""
    if not is_number(value):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def tone_label(tone: Any) -> str:
    """'⚖ balance' from a glyph or a name; anything else as given."""
    if tone in TONE_NAME_BY_GLYPH:
        return f"{tone} {TONE_NAME_BY_GLYPH[tone]}"
    if tone in TONE_GLYPH_BY_NAME:
        return f"{TONE_GLYPH_BY_NAME[tone]} {tone}"
    return format_value(tone)
