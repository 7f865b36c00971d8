"""Diagnostics for the fusion family (seed 004's checks): what each branch does, with thresholds.

The ``fusion_diagnostics`` design of the one protocol runner (:mod:`phaselm.protocols`):
``phaselm diagnose PATH`` and :func:`phaselm.protocols.run_diagnostics` (a ``phaselm train-lm``
run directory or a saved model folder) build it; :func:`diagnostics_eval` measures a
fusion-family model on validation text and writes ``diagnostics.json`` and ``plots/diag_*.png``
(:mod:`phaselm.evals.diagnostics_report`). The measurements are in
:mod:`phaselm.evals.fusion_measures`; this module turns them into checks.
Every check carries its value, its status (PASS / WARN / FAIL, or "n/a" where the model lacks a
branch the check compares) and the rule that gave the status.

Checks (thresholds from seed 004 unless marked *ours*; where and why we depart from the seed:
docs/seeds-vs-phaselm.md):

    D1 state growth       ‖S‖ at position 512 / ‖S‖ at position 64 (Frobenius, mean over windows),
                          worst recurrent branch (RWKV-6, Mamba-2)
                          and layer.                                  PASS < 2, WARN < 10, FAIL ≥ 10
    D2 frozen state       variance of the final state across random inputs (mean over elements),
                          the smallest over recurrent branches and layers.
                                                                      FAIL < 1e-6, else PASS
    D3 balance            contribution ratio: RMS of what the larger branch puts into the fused
                          output / RMS of the smaller one's, over all layers (per layer reported).
                          The parts come from ``Fusion.parts`` (WS α·r and (1−α)·m, GF γ·r and
                          (1−γ)·m, CP the two halves of the projection, …).  PASS < 5, WARN < 10
    D4 information flow   loss increase (nats) when a branch's output is zeroed (a true ablation,
                          not the original's gradient estimate).  *ours*: PASS when every branch
                          costs ≥ 0.01 nats, WARN when the smallest cost is in (0, 0.01), FAIL ≤ 0
    long context          PPL at positions 448–511 of 512-token windows / PPL of 64-token windows
                          over the same text.                         PASS < 2, WARN < 5
    state-norm ratio      RWKV ‖S‖ / Mamba ‖S‖ at position 512, taken symmetrically
                          (max(a/b, b/a)), worst layer; n/a with a Kuramoto branch (its cache
                          is its earlier tokens, no state of fixed size).               PASS < 3, WARN < 10
    output entropy        mean entropy (nats) of the next-token distribution on the text. The
                          seed calls it "initial output entropy" without saying initial to what; we
                          measure the model as given (pass an untrained one for the init check).
                                                                      PASS in [2, 5], else WARN

Measurements without thresholds: state norms per layer at positions 64…512; activation variance
through depth (the residual stream, and each branch's output; "amplifier" when a branch's output
variance grows from the first to the last layer, "damper" when it shrinks — the seed's RWKV ×5.4
and Mamba 1.0 → 0.011); gradient norm per component; fusion-gate statistics (and, for a run
directory, the gates over training: measured at every checkpoint, and as logged at every
training log step in metrics.jsonl).

The V5 gate metrics, which the seed names but does not define precisely — our definitions:

    CER  = decode tokens/s (batch 1, recurrent cache, this device) / validation perplexity:
           quality per unit of inference time, higher is better, and a worse perplexity always
           scores worse (the original divided a perplexity by milliseconds, which rewards it).
    UCW  = the longest context L in 64, 128, … whose loss at positions [L/2, L) stays within 5 %
           of the loss at positions [32, 64): how far context keeps being usable.
    SPS  = state persistence after N "turns" (N = 5, 10, 20, 50; a turn = 64 tokens of validation
           text): a random 16-token "fact" is shown, N turns follow, the fact is shown again; SPS(N)
           is the loss on the repeat (nats/token) without the first showing minus with it (the
           first showing replaced by other random tokens, so positions match). > 0: the state
           still holds something of the fact; the original's "recall of facts" protocol is not
           specified beyond the turn counts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import PhaseLMError
from ..models.fusion import FusionConfig, FusionForCausalLM
from ..subject import Subject
from .fusion_measures import (
    DiagnosticsConfig,
    ablation,
    balance,
    decode_speed,
    depth_profile,
    frozen_state,
    gradient_coupling,
    long_context,
    model_device,
    output_entropy,
    state_norms,
    state_persistence,
    useful_context_window,
    windows_from,
)

__all__ = ["THRESHOLDS", "DiagnosticsConfig", "diagnose", "diagnostics_eval", "diagnostics_stream", "gate_history",
           "gate_training_log", "status_below"]

THRESHOLDS = {
    "D1_state_growth": "PASS < 2, WARN < 10, FAIL ≥ 10",
    "D2_frozen_state": "FAIL < 1e-6, else PASS",
    "D3_balance": "PASS < 5, WARN < 10, FAIL ≥ 10",
    "D4_information_flow": "PASS if every branch's ablation costs ≥ 0.01 nats, WARN if the smallest cost is in (0, "
                           "0.01), FAIL if ≤ 0 (ours)",
    "long_context": "PASS < 2, WARN < 5, FAIL ≥ 5",
    "state_norm_ratio": "PASS < 3, WARN < 10, FAIL ≥ 10",
    "output_entropy": "PASS in [2, 5] nats, else WARN",
}




def status_below(value: float, pass_below: float, warn_below: float) -> str:
    """PASS below ``pass_below``, WARN below ``warn_below``, else FAIL (a non-finite value FAILs)."""
    if value is None or not math.isfinite(value):
        return "FAIL"
    return "PASS" if value < pass_below else "WARN" if value < warn_below else "FAIL"


def _check(name: str, value, status: str, **details) -> dict:
    return {"value": value, "status": status, "rule": THRESHOLDS[name], **details}


def _na(name: str, why: str) -> dict:
    return {"value": None, "status": "n/a", "rule": THRESHOLDS[name], "why": why}



def diagnose(model: FusionForCausalLM, val_ids: torch.Tensor, cfg: DiagnosticsConfig | None = None) -> dict:
    """All measurements and checks for one fusion-family model on a 1-D stream of token ids."""
    cfg = cfg or DiagnosticsConfig()
    if not isinstance(model, FusionForCausalLM):
        raise PhaseLMError(
            f"diagnostics need a fusion-family model with RWKV-6 / Mamba-2 branches, got {type(model).__name__}; "
            'train one with `phaselm train-lm` and arch = "fusion"'
        )
    if tuple(cfg.positions)[-1] != cfg.long or cfg.positions[0] != cfg.short:
        raise PhaseLMError(f"diagnostics positions must run from short ({cfg.short}) to long ({cfg.long}), got "
                           f"{list(cfg.positions)}")
    model.eval()
    device = model_device(model)
    config: FusionConfig = model.config
    long_windows = windows_from(val_ids, cfg.windows, cfg.long).to(device)
    hybrid = config.mixer == "hybrid"

    norms = state_norms(model, long_windows, cfg.positions)
    frozen = frozen_state(model, config.vocab_size, cfg.frozen_inputs, cfg.short, cfg.seed)
    bal = balance(model, long_windows)
    abl = ablation(model, long_windows)
    depth = depth_profile(model, long_windows)
    grads = gradient_coupling(model, long_windows[: cfg.gradient_windows])
    ctx = long_context(model, val_ids, cfg)
    entropy = output_entropy(model, long_windows)

    checks = {}
    growth = {b: [layer[-1] / layer[0] if layer[0] > 0 else float("inf") for layer in norms[b]]
              for b in config.branch_names if b in norms}
    worst = max(max(v) for v in growth.values())
    checks["D1_state_growth"] = _check("D1_state_growth", worst, status_below(worst, 2, 10), per_layer=growth)
    smallest = min(min(v) for v in frozen.values())
    checks["D2_frozen_state"] = _check("D2_frozen_state", smallest, "FAIL" if smallest < 1e-6 else "PASS",
                                       per_layer=frozen)
    if hybrid:
        first = config.branch_names[0]
        checks["D3_balance"] = _check("D3_balance", bal["ratio"], status_below(bal["ratio"], 5, 10),
                                      dominant=bal["dominant"], **{f"{first}_share": bal[f"{first}_share"]})
    else:
        checks["D3_balance"] = _na("D3_balance", f"a pure {config.mixer} model has one branch")
    if hybrid and not config.has_kuramoto:
        ratios = [max(a / m, m / a) if min(a, m) > 0 else float("inf")
                  for a, m in zip((layer[-1] for layer in norms["rwkv"]), (layer[-1] for layer in norms["mamba"]))]
        checks["state_norm_ratio"] = _check("state_norm_ratio", max(ratios), status_below(max(ratios), 3, 10),
                                            per_layer=ratios)
    elif hybrid:
        checks["state_norm_ratio"] = _na("state_norm_ratio", "the Kuramoto branch keeps its earlier tokens, not a "
                                                             "state of fixed size, so there is no state to compare")
    else:
        checks["state_norm_ratio"] = _na("state_norm_ratio", f"a pure {config.mixer} model has one branch")
    deltas = {b: abl[f"delta_{b}"] for b in config.branch_names}
    least = min(deltas.values())
    checks["D4_information_flow"] = _check(
        "D4_information_flow", least, "PASS" if least >= 0.01 else "WARN" if least > 0 else "FAIL", per_branch=deltas
    )
    checks["long_context"] = _check("long_context", ctx["ppl_ratio"], status_below(ctx["ppl_ratio"], 2, 5))
    checks["output_entropy"] = _check("output_entropy", entropy, "PASS" if 2 <= entropy <= 5 else "WARN")

    vocab_tokens = torch.unique(val_ids)
    speed = decode_speed(model, long_windows[0, : cfg.short], cfg.decode_tokens)
    ppl = math.exp(ctx["ce_long_mean"])
    v5 = {
        "CER": {"value": speed / ppl, "decode_tokens_per_s": speed, "val_ppl": ppl, "device": device.type,
                "definition": "decode tokens/s at batch 1 / validation perplexity (higher is better)"},
        "UCW": {**useful_context_window(model, val_ids, cfg),
                "definition": f"longest L whose loss at positions [L/2, L) is within {cfg.ucw_tolerance:.0%} of the "
                              f"loss at [{cfg.short // 2}, {cfg.short})"},
        "SPS": {"by_turns": state_persistence(model, val_ids, vocab_tokens, cfg), "turn_tokens": cfg.turn_tokens,
                "fact_tokens": cfg.fact_tokens,
                "definition": "loss on a repeated random fact without minus with its first showing, N turns earlier "
                              "(nats/token)"},
    }
    return {
        "model": {
            "mixer": config.mixer,
            "branches": list(config.branch_names),
            "fusion": config.fusion if hybrid else None,
            "gate_init": config.gate_init if hybrid else None,
            "hidden_size": config.hidden_size,
            "n_layers": config.n_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "checks": checks,
        "state_norms": norms,
        "frozen_state": frozen,
        "balance": bal,
        "ablation": abl,
        "depth": depth,
        "gradients": grads,
        "long_context": ctx,
        "output_entropy": entropy,
        "v5": v5,
        "settings": asdict(cfg),
    }


def gate_history(run_dir: Path, windows: torch.Tensor) -> list[dict]:
    """Fusion-gate statistics and branch shares at every checkpoint of a run."""
    from ..checkpoint import is_checkpoint, load_config, load_module_state

    root = run_dir / "checkpoints"
    history = []
    if not root.is_dir():
        return history
    for entry in sorted(root.iterdir()):
        if not (entry.name.startswith("step-") and is_checkpoint(entry)):
            continue
        config = load_config(entry)
        if config.get("arch") != "fusion":
            continue
        model = FusionForCausalLM(FusionConfig(vocab_size=config["vocab_size"], **config["model"]))
        load_module_state(entry, model)
        model.to(windows.device).eval()
        bal = balance(model, windows)
        if bal:
            first = bal["branches"][0]
            history.append({"step": int(entry.name.split("-")[1]), "gates": bal["gates"],
                            f"{first}_share": bal[f"{first}_share_per_layer"], "ratio": bal["ratio"]})
    return history


def gate_training_log(run_dir: Path) -> list[dict]:
    """The fusion gates (RWKV share per layer) as logged at every training log step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [{"step": r["step"], "gate_rwkv_share": r["gate_rwkv_share"]} for r in rows if "gate_rwkv_share" in r]


def diagnostics_stream(subject: Subject, corpus: str | None = None) -> torch.Tensor:
    """The token stream (N,) the diagnostics measure on: the run's validation split, or the
    validation split (a tenth) of ``corpus``; the whole corpus where the run keeps no split."""
    from ..corpora import load_text
    from ..data import encode_corpus, encode_split

    val_fraction = subject.val_fraction if corpus is None else 0.1
    text = load_text(corpus if corpus is not None else subject.corpus)
    if val_fraction > 0:
        return encode_split(subject.tokenizer, text, val_fraction)[1]
    return encode_corpus(subject.tokenizer, text)


def diagnostics_eval(subject: Subject, out_dir: str | os.PathLike, corpus: str | None = None,
                     cfg: DiagnosticsConfig | None = None) -> dict:
    """Diagnose ``subject`` (a fusion-family model; its run's checkpoints give the gate history)
    and write ``diagnostics.json`` and ``plots/diag_*.png`` into ``out_dir``; returns the result."""
    from .diagnostics_report import write_diagnostics

    cfg = cfg or DiagnosticsConfig()
    val_ids = diagnostics_stream(subject, corpus)
    result = diagnose(subject.model, val_ids, cfg)
    if subject.run_dir is not None:
        windows = windows_from(val_ids, cfg.windows, cfg.short).to(model_device(subject.model))
        result["gate_history"] = gate_history(Path(subject.run_dir), windows)
        result["gate_training_log"] = gate_training_log(Path(subject.run_dir))
    return write_diagnostics(result, Path(out_dir))
