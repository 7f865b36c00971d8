"""The fusion diagnostics' outputs: diagnostics.json, plots/diag_*.png and the summary lines."""

from __future__ import annotations

import json
from pathlib import Path


def write_diagnostics(result: dict, out_dir: Path) -> dict:
    """Draw the plots into ``out_dir/plots`` and write ``out_dir/diagnostics.json``; returns the result
    with ``plots`` (the file names) added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = diagnostics_plots(result, out_dir / "plots")
    (out_dir / "diagnostics.json").write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    return result


def diagnostics_plots(result: dict, plot_dir: Path) -> list[str]:
    """State norms, depth variance, loss by position and (with a history) the gates over training, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(plot_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    norms = result["state_norms"]
    fig, ax = plt.subplots(figsize=(6, 4))
    branches = result["model"].get("branches", ["rwkv", "mamba"])
    for branch, style in zip(branches, ("-", "--")):
        for i, layer in enumerate(norms.get(branch, [])):
            ax.plot(norms["positions"], layer, style, marker="o", label=f"{branch} L{i}")
    ax.set(xscale="log", yscale="log", xlabel="position", ylabel="‖state‖", title="D1: state norm by position")
    ax.legend(fontsize=6, ncol=2)
    save(fig, "diag_state_norms.png")

    depth = result["depth"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(depth["residual_variance"], marker="o", label="residual stream")
    for branch in branches:
        if branch in depth:
            ax.plot(range(1, len(depth[branch]["output_variance"]) + 1), depth[branch]["output_variance"], marker="s",
                    label=f"{branch} output ({depth[branch]['character']})")
    ax.set(yscale="log", xlabel="depth (0 = embedding)", ylabel="variance", title="activation variance through depth")
    ax.legend(fontsize=7)
    save(fig, "diag_depth.png")

    buckets = result["long_context"]["ce_by_position"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([b["to"] for b in buckets], [b["ce"] for b in buckets], marker="o")
    ax.set(xscale="log", xlabel="position (bucket end)", ylabel="CE (nats)", title="loss by position")
    save(fig, "diag_position_loss.png")

    history = result.get("gate_history") or []
    if history and history[0]["gates"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [h["step"] for h in history]
        for i in range(len(history[0]["gates"])):
            ax.plot(steps, [h["gates"][i]["mean"] for h in history], marker="o", label=f"gate L{i}")
        ax.set(xlabel="step", ylabel=f"mean gate ({branches[0]} share)", title="fusion gates over training")
        ax.legend(fontsize=7)
        save(fig, "diag_gates.png")
    return written


def summary_lines(result: dict) -> list[str]:
    """One line per check: name, status, value."""
    lines = []
    for name, check in result["checks"].items():
        value = check["value"]
        shown = "—" if value is None else f"{value:.4g}"
        lines.append(f"{name:22s} {check['status']:5s} {shown}")
    return lines
