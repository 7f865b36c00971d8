"""The one metric registry of the evals and the protocols: each metric's name (as results and
protocol files spell it), its label in tables and plots, and the text metrics computed from
generated token ids."""

from __future__ import annotations

from collections.abc import Sequence

# name → label. Perplexity names its judge where it is shown (see :func:`metric_labels`).
LABELS = {
    "r_mean": "R mean",
    "r_std": "R std (within sample)",
    "r_range": "R range (max − min within sample)",
    "u_mean": "U mean",
    "mean_r": "mean R",
    "kl": "KL(unforced ‖ forced)",
    "perplexity": "perplexity",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "distinct_3": "distinct-3",
    "repetition": "repetition (1 − distinct-4)",
    "loss": "loss (CE, nats)",
}
TEXT_METRICS = ("distinct_1", "distinct_2", "distinct_3", "repetition")  # from the generated ids alone
JUDGED = ("perplexity",)  # scored by a model: the label says which


def metric_labels(names: Sequence[str], judge: str) -> dict[str, str]:
    """Labels of ``names``; a judged metric's names its ``judge`` ("unforced model", …)."""
    return {m: f"{LABELS[m]} ({judge})" if m in JUDGED else LABELS[m] for m in names}


def distinct_n(ids: Sequence[int], n: int) -> float | None:
    """Share of distinct n-grams among the n-grams of ``ids`` (None when it has none)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def text_metrics(ids: Sequence[int]) -> dict[str, float | None]:
    """distinct-1/2/3 and repetition (1 − distinct-4) of one continuation."""
    d4 = distinct_n(ids, 4)
    return {
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "distinct_3": distinct_n(ids, 3),
        "repetition": None if d4 is None else 1.0 - d4,
    }
