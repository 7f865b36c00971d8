"""Ablation-grid protocol: evaluation-time changes of a trained model, cell by cell."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PhaseLMError
from ..interventions import ALL_LAYERS, Intervention, intervene, structure
from .scoring import compare, count_phrase, holm_family, mean_or_none, power_statement
from .spec import METRIC_LABELS, Protocol
from .subject import Subject


@dataclass
class Cell:
    """One cell of an ablation grid: which layers, K scale, oscillators, U regulation and ablated branch."""
    layers: Any
    k_scale: float
    oscillators: Any
    u_regulation: bool
    ablate: str = "none"

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The interventions that turn the model as trained into this cell (none for the identity cell)."""
        items = []
        if self.k_scale != 1.0:
            items.append(Intervention("k_scale", self.k_scale, self.layers))
        if self.oscillators != ALL_LAYERS:
            items.append(Intervention("oscillators", self.oscillators, self.layers))
        if not self.u_regulation:
            items.append(Intervention("unclamp", None, self.layers))
        if self.ablate != "none":
            items.append(Intervention("ablate", self.ablate, self.layers))
        return tuple(items)

    @property
    def label(self) -> str:
        """The cell's name in tables and plots, e.g. ``layers all · K×0.5 · oscillators all · U on``."""
        where = "all" if self.layers == ALL_LAYERS else ",".join(map(str, self.layers))
        m = "all" if self.oscillators == ALL_LAYERS else str(self.oscillators)
        label = f"layers {where} · K×{self.k_scale:g} · oscillators {m} · U {'on' if self.u_regulation else 'off'}"
        return label + (f" · ablate {self.ablate}" if self.ablate != "none" else "")

    def to_dict(self) -> dict:
        """The cell's settings and label, as recorded in results.json."""
        return {"layers": self.layers if self.layers == ALL_LAYERS else list(self.layers), "k_scale": self.k_scale,
                "oscillators": self.oscillators, "u_regulation": self.u_regulation, "ablate": self.ablate,
                "label": self.label}


def grid_cells(protocol: Protocol) -> list[Cell]:
    """Every combination of the protocol's [grid] values, in declaration order."""
    g = protocol.grid
    return [Cell(*values) for values in itertools.product(g["layers"], g["k_scale"], g["oscillators"],
                                                          g["u_regulation"], g["ablate"])]


def grid_windows(val_ids: torch.Tensor, protocol: Protocol) -> list[tuple[int, int]]:
    """(seed, start) of every evaluation window: ``windows`` random starts per seed."""
    room = len(val_ids) - protocol.seq_len - 1
    if room < 0:
        raise PhaseLMError(f"the validation split has {len(val_ids)} tokens, too few for windows of {protocol.seq_len} "
                           "+ 1; lower [evaluation] seq_len")
    out = []
    for seed in protocol.seeds:
        rng = np.random.default_rng(seed)
        out += [(seed, int(s)) for s in rng.integers(0, room + 1, size=protocol.windows)]
    return out


@torch.no_grad()
def _window_stats(subject: Subject, val_ids: torch.Tensor, windows: list[tuple[int, int]],
                  protocol: Protocol) -> tuple[list[float], list[float | None]]:
    device = next(subject.model.parameters()).device
    losses, orders = [], []
    for start in range(0, len(windows), protocol.batch_size):
        batch = windows[start : start + protocol.batch_size]
        x = torch.stack([val_ids[s : s + protocol.seq_len] for _, s in batch]).to(device)
        y = torch.stack([val_ids[s + 1 : s + protocol.seq_len + 1] for _, s in batch]).to(device)
        if subject.handle is not None:
            subject.handle.last = None
        out = subject.model(input_ids=x)
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), y, reduction="none").mean(-1)
        losses += ce.double().cpu().tolist()
        if subject.handle is not None:
            r = subject.handle.last.order.float().mean(-1) if subject.handle.last is not None else None
        elif getattr(out, "orders", None) is not None:
            r = out.orders.float().mean((1, 2))
        else:
            r = None
        orders += r.double().cpu().tolist() if r is not None else [None] * len(batch)
    return losses, orders


def run_ablation_grid(protocol: Protocol, subject: Subject, progress=None) -> dict:
    """Validation loss and R of every grid cell against the model as trained, paired by window;
    returns the results dict (tables, comparisons, verdict)."""
    from ..evals.outputs import check_positions

    info = structure(subject.target)
    cells = grid_cells(protocol)
    if not info.sites and any(c.k_scale != 1.0 or c.oscillators != ALL_LAYERS or not c.u_regulation for c in cells):
        raise PhaseLMError(f"[grid] k_scale, oscillators and u_regulation change oscillators; this {info.name} model "
                           "has none (its grid can vary layers and ablate)")
    if "r_mean" in protocol.metrics and not info.sites:
        raise PhaseLMError(f"[metrics] r_mean needs a model with oscillators; this {info.name} model has none")
    check_positions(subject.model, protocol.seq_len, f"[evaluation] seq_len {protocol.seq_len}")
    records = []
    for cell in cells:  # every cell validated (layers, divisors, clamps) before any work
        with intervene(subject.target, *cell.interventions) as applied:
            records.append({**cell.to_dict(), "interventions": applied.to_json()})
    val_ids = subject.validation_ids()
    windows = grid_windows(val_ids, protocol)
    advance = progress or (lambda *_: None)
    advance(0)
    base_loss, base_r = _window_stats(subject, val_ids, windows, protocol)
    advance()
    per_cell = []
    for cell in cells:
        with intervene(subject.target, *cell.interventions):
            loss, r = _window_stats(subject, val_ids, windows, protocol)
        per_cell.append({"loss": loss, "r_mean": r})
        advance()
    base = {"loss": base_loss, "r_mean": base_r}
    seed0 = protocol.seeds[0]
    comparisons = [{m: compare(values[m], base[m], protocol, seed0) for m in protocol.metrics} for values in per_cell]
    family = holm_family([c for row in comparisons for c in row.values()])
    n = len(windows)
    rows = [["as trained", n] + [v for m in protocol.metrics for v in (mean_or_none(base[m]), None, None, None)]]
    for cell, row in zip(cells, comparisons):
        line = [cell.label, n]
        for m in protocol.metrics:
            c = row[m]
            line += [c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]],
                     c["p_holm"]] if c else [mean_or_none(per_cell[cells.index(cell)][m]), None, None, None]
        rows.append(line)
    header = ["cell", "n"]
    for m in protocol.metrics:
        label = "loss" if m == "loss" else "R"
        header += [f"{label} mean", f"Δ{label} vs as trained", f"{protocol.ci_level:.0%} CI", "p Holm"]
    evaluation_time = ("Every cell is an evaluation-time change of the trained weights, nothing is retrained: k_scale "
                       "multiplies the coupling K; oscillators = m makes the readout and R use m of the N oscillators "
                       "(the coupling step still runs all N); U off switches the clamp of u off (K-SSM); ablate zeroes "
                       "a branch's output. A model trained with other settings is a separate run.")
    power = power_statement(n, protocol, family)
    significant = sum(1 for row in comparisons for c in row.values()
                      if c and c["p_holm"] is not None and c["p_holm"] <= protocol.alpha)
    return {
        "n": n,
        "windows": {"per_seed": protocol.windows, "seeds": protocol.seeds, "seq_len": protocol.seq_len,
                    "starts": windows},
        "cells": records,
        "conditions": ["as trained"] + [c.label for c in cells],
        "note": evaluation_time,
        "comparisons": [{"cell": c.label, **row} for c, row in zip(cells, comparisons)],
        "as_trained": {m: mean_or_none(base[m]) for m in protocol.metrics},
        "holm_family_size": family,
        "power": power,
        "verdict": (f"{significant} "
                    f"of {family} cell × metric comparisons differ from the model as trained (Holm, α = "
                    f"{protocol.alpha:g}, n = {n} windows: {protocol.windows} per seed × "
                    f"{count_phrase(len(protocol.seeds), 'seed')})."),
        "tables": [{"title": f"Ablation grid: loss and R per cell (n = {n} windows of {protocol.seq_len} tokens, "
                             f"paired with the model as trained; Holm over {family} tests)", "header": header,
                    "rows": rows, "note": evaluation_time}],
        "distributions": {METRIC_LABELS[m]: {"as trained": [v for v in base[m] if v is not None],
                                             **{c.label: [v for v in per_cell[k][m] if v is not None]
                                                for k, c in enumerate(cells)}}
                          for m in protocol.metrics},
        "per_window": {"as trained": base, **{c.label: per_cell[k] for k, c in enumerate(cells)}},
    }


