"""Constants shared by the report writers: plot files, loss keys, tone colours."""

from __future__ import annotations

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
