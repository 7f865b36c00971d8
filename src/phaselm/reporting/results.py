"""Results of evals and protocols found in a run directory, for report.html."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from .common import RESULT_GLOBS, TONE_COLOURS, is_number
from .provenance import read_json


def discover_results(run_dir: str | os.PathLike) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Result files of evals and protocols in ``run_dir`` ((path, result) pairs, by path) and a
    note for each file that could not be read (a half-written or foreign file must not stop a
    rebuild)."""
    run_dir = Path(run_dir)
    found, problems = [], []
    paths = sorted({p for pattern in RESULT_GLOBS for p in run_dir.glob(pattern) if p.is_file()})
    for path in paths:
        try:
            data = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"{path.relative_to(run_dir).as_posix()}: not readable as JSON ({err})")
            continue
        if isinstance(data, dict):
            found.append((path, data))
        else:
            problems.append(f"{path.relative_to(run_dir).as_posix()}: not a JSON object")
    return found, problems


def result_title(result: dict, path: Path | None) -> str:
    """A result's name: its title, protocol, eval or name field, else its file's stem."""
    for key in ("title", "protocol", "eval", "name"):
        if isinstance(result.get(key), str) and result[key].strip():
            return result[key]
    return path.stem if path is not None else "result"


def finite_numbers(values: Any) -> list[float]:
    """The finite numbers of a list (anything else dropped); [] for a non-list."""
    if not isinstance(values, (list, tuple)):
        return []
    return [float(v) for v in values if is_number(v) and math.isfinite(v)]


def result_distributions(result: dict) -> dict[str, dict[str, list[float]]]:
    """{metric: {condition: values}} of a result: its "distributions", or the per-prompt values
    of a `phaselm eval intervention` result (unforced and each intervention)."""
    out: dict[str, dict[str, list[float]]] = {}
    given = result.get("distributions")
    if isinstance(given, dict):
        for metric, conditions in given.items():
            if isinstance(conditions, dict):
                cleaned = {str(c): finite_numbers(v) for c, v in conditions.items()}
                cleaned = {c: v for c, v in cleaned.items() if v}
                if cleaned:
                    out[str(metric)] = cleaned
        return out
    per_prompt, labelled = result.get("per_prompt"), result.get("results")
    if isinstance(per_prompt, dict) and isinstance(labelled, list):
        unforced = per_prompt.get("unforced") if isinstance(per_prompt.get("unforced"), dict) else {}
        forced = per_prompt.get("forced") if isinstance(per_prompt.get("forced"), list) else []
        for j, (entry, values) in enumerate(zip(labelled, forced)):
            label = entry.get("label", f"condition {j}") if isinstance(entry, dict) else f"condition {j}"
            if not isinstance(values, dict):
                continue
            for metric, series in values.items():
                bucket = out.setdefault(str(metric), {})
                if metric in unforced and "unforced" not in bucket and finite_numbers(unforced[metric]):
                    bucket["unforced"] = finite_numbers(unforced[metric])
                if finite_numbers(series):
                    bucket[str(label)] = finite_numbers(series)
        out = {m: c for m, c in out.items() if c}
    return out


def distributions_figure(distributions: dict[str, dict[str, list[float]]], title: str):
    """Box plots, one panel per metric and one box per condition."""
    import numpy as np

    metrics = list(distributions)
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        conditions = distributions[metric]
        data = list(conditions.values())
        ax.boxplot(data, showfliers=False)
        for j, values in enumerate(data):
            jitter = np.random.default_rng(j).uniform(-0.15, 0.15, len(values))
            ax.scatter(np.full(len(values), j + 1) + jitter, values, s=9, alpha=0.55)
        ax.set_xticks(range(1, len(data) + 1), [f"{c}\n(n={len(v)})" for c, v in conditions.items()], fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig


def distribution_rows(distributions: dict[str, dict[str, list[float]]]) -> list[list[Any]]:
    """Rows (metric, condition, n, mean, std, median, min, max) of per-condition distributions."""
    import numpy as np

    rows = []
    for metric, conditions in distributions.items():
        for condition, values in conditions.items():
            x = np.asarray(values, dtype=float)
            rows.append([metric, condition, len(x), float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None,
                         float(np.median(x)), float(x.min()), float(x.max())])
    return rows


def scatter_points(values: Any) -> list[tuple[float, float]]:
    """The finite (R, U) pairs of a list of pairs; anything else dropped."""
    points = []
    for item in values if isinstance(values, (list, tuple)) else []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(is_number(v) for v in item):
            points.append((float(item[0]), float(item[1])))
        elif isinstance(item, dict) and is_number(item.get("r")) and is_number(item.get("u")):
            points.append((float(item["r"]), float(item["u"])))
    return points


def scatter_figure(series: dict[str, list[tuple[float, float]]]):
    """R (x) against U (y) with the Goldilocks box (R 0.80–0.95, U 0.40–0.60) and the R·U = 0.40
    and 0.60 curves that bound the zone's third condition."""
    import numpy as np
    from matplotlib.patches import Rectangle

    from ..observables import GOLDILOCKS

    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    (r0, r1), (u0, u1) = GOLDILOCKS.r, GOLDILOCKS.u
    ax.add_patch(Rectangle((r0, u0), r1 - r0, u1 - u0, facecolor=TONE_COLOURS["goldilocks"], alpha=0.15,
                           edgecolor=TONE_COLOURS["goldilocks"], linewidth=1.5, label="Goldilocks box (R, U)"))
    r = np.linspace(0.3, 1.0, 200)
    for level in GOLDILOCKS.ru:
        ax.plot(r, level / r, linestyle="--", color="grey", linewidth=0.8)
    ax.text(0.98, GOLDILOCKS.ru[0] / 0.98 - 0.04, "R·U = 0.4", fontsize=7, color="grey", ha="right")
    for label, points in series.items():
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=10 if len(points) > 200 else 16, alpha=0.6, label=f"{label} (n={len(points)})")
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("order parameter R")
    ax.set_ylabel("normalised entropy U")
    ax.set_title("R against U, with the Goldilocks zone")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig
