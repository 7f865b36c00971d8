"""Reading a run directory: metrics.jsonl, summaries."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import PhaseLMError
from .common import is_number


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of ``run_dir/metrics.jsonl`` in file order, blank lines skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PhaseLMError(f"{path}: no such file; is {run_dir} a training run directory?")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PhaseLMError(
                    f"{path}, line {lineno}: not valid JSON ({err.msg}); fix or delete that line"
                ) from None
            if not isinstance(record, dict):
                raise PhaseLMError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    return records


def is_train_record(record: dict) -> bool:
    """Whether a metrics record is a training step (records without a split are)."""
    return record.get("split", "train") == "train"


def metric_series(records: Iterable[dict], key: str, train: bool = True) -> tuple[list, list]:
    """(steps, values) of ``key`` over the train (or evaluation) records that have it, by step."""
    points = [
        (r["step"], r[key])
        for r in records
        if is_train_record(r) == train and is_number(r.get("step")) and is_number(r.get(key))
    ]
    # A resumed run may log a step range twice; sorting keeps the line from doubling back.
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]
