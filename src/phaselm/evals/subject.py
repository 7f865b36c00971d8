"""Opening a trained run for evaluation (a :class:`phaselm.subject.Subject`), and the names and
constants every eval shares."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PhaseLMError
from ..metrics import TEXT_METRICS, metric_labels  # noqa: F401  (TEXT_METRICS re-exported: phaselm.evals)
from ..runs import default_device  # noqa: F401  (re-exported: phaselm.evals.default_device)
from ..subject import Subject, subject_of

METRICS = ("kl", "distinct_1", "distinct_2", "distinct_3", "repetition", "perplexity", "mean_r")
METRIC_LABELS = metric_labels(METRICS, "unforced model")  # the evals score perplexity under the unforced model
DEFAULT_TEMPERATURES = (0.0, 0.5, 0.8, 1.0, 1.2, 1.5)
DEFAULT_BOUNDS = ((0.1, 10.0), (0.05, 20.0), (0.5, 2.0), (0.1, 1.0), (1.0, 10.0))
SAMPLES_SHOWN = 3
CLAMP_NOTE = (
    "evaluation-time sweep: the trained weights are unchanged and u is clamped to each pair of bounds "
    "only while evaluating; this is not retraining with those bounds"
)
CORRELATION_NOTE = (
    "tokens of one sequence are not independent, so these p-values overstate the evidence; "
    "read the coefficients, and compare runs or layers, rather than the p-values"
)


def load_subject(
    path: str | os.PathLike, device: str | None = None, corpus: str | None = None, val_fraction: float | None = None
) -> Subject:
    """A run directory or a model folder (opened by :func:`phaselm.runs.open_run`) → Subject.

    The corpus and validation fraction come from the run's config.toml (a model folder inside
    a run uses its run's); ``corpus`` / ``val_fraction`` override them, and a bare model folder
    without a run defaults to the embedded Tiny Shakespeare with val_fraction 0.1.
    """
    from ..runs import open_run

    subject = subject_of(open_run(path, device), corpus, val_fraction)
    if not 0.0 < subject.val_fraction < 1.0:
        raise PhaseLMError(f"val_fraction must be in (0, 1) for evaluation, got {subject.val_fraction}")
    return subject


def default_out_dir(path: str | os.PathLike) -> Path:
    """Where a run's evals go by default: RUN_DIR/evals (a model folder inside a run: the run's)."""
    from ..runs import locate_run

    location = locate_run(path)
    return (location.run_dir or location.path) / "evals"
