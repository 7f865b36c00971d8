"""Diagnostics for the fusion family (seed 004's checks): what each branch does, with thresholds.

``run_diagnostics(PATH)`` (a ``phaselm train-lm`` run directory or a saved model folder) measures a
fusion-family model on validation text and writes ``diagnostics.json`` and ``plots/diag_*.png``.
Every check carries its value, its status (PASS / WARN / FAIL, or "n/a" where the model lacks a
branch the check compares) and the rule that gave the status.

Checks (thresholds from seed 004 unless marked *ours*; where and why we depart from the seed:
docs/seeds-vs-phaselm.md):

    D1 state growth       ‖S‖ at position 512 / ‖S‖ at position 64 (Frobenius, mean over windows),
                          worst branch and layer.                     PASS < 2, WARN < 10, FAIL ≥ 10
    D2 frozen state       variance of the final state across random inputs (mean over elements),
                          the smallest over branches and layers.      FAIL < 1e-6, else PASS
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
                          (max(a/b, b/a)), worst layer.               PASS < 3, WARN < 10
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import PhaseLMError
from .models.fusion import FusionConfig, FusionForCausalLM

BRANCHES = ("rwkv", "mamba")
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


@dataclass
class DiagnosticsConfig:
    """How much the diagnostics measure: window counts and lengths, positions read, seeds."""
    windows: int = 8  # validation windows per measurement
    short: int = 64
    long: int = 512
    positions: tuple[int, ...] = (64, 128, 256, 512)  # where state norms are read
    frozen_inputs: int = 8
    gradient_windows: int = 4
    ucw_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    ucw_tolerance: float = 0.05
    sps_turns: tuple[int, ...] = (5, 10, 20, 50)
    turn_tokens: int = 64
    fact_tokens: int = 16
    sps_samples: int = 8
    decode_tokens: int = 128
    segment: int = 512  # long sequences run in segments through the recurrent cache
    seed: int = 0


def _below(value: float, pass_below: float, warn_below: float) -> str:
    if value is None or not math.isfinite(value):
        return "FAIL"
    return "PASS" if value < pass_below else "WARN" if value < warn_below else "FAIL"


def _check(name: str, value, status: str, **details) -> dict:
    return {"value": value, "status": status, "rule": THRESHOLDS[name], **details}


def _na(name: str, why: str) -> dict:
    return {"value": None, "status": "n/a", "rule": THRESHOLDS[name], "why": why}


# ---------------------------------------------------------------------------------------------
# Helpers


def windows_from(ids: torch.Tensor, count: int, length: int, what: str = "validation text") -> torch.Tensor:
    """The first ``count`` non-overlapping windows of ``length`` tokens of a 1-D stream."""
    available = ids.numel() // length
    if available < 1:
        raise PhaseLMError(f"the {what} has {ids.numel()} tokens, fewer than one window of {length}; use a longer "
                           "corpus or shorter windows")
    count = min(count, available)
    return ids[: count * length].view(count, length)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _state_norm(state: torch.Tensor) -> float:
    return float(state.float().flatten(1).norm(dim=1).mean())


@torch.no_grad()
def logits_in_segments(model: FusionForCausalLM, ids: torch.Tensor, segment: int) -> torch.Tensor:
    """Logits for a long batch, run ``segment`` tokens at a time through the recurrent cache
    (exactly the full forward, in bounded memory)."""
    cache, parts = None, []
    for start in range(0, ids.shape[1], segment):
        out = model(ids[:, start : start + segment], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        parts.append(out.logits.float())
    return torch.cat(parts, dim=1)


def _token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CE of predicting ids[:, t+1] from position t: (B, T−1)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# Measurements


@torch.no_grad()
def state_norms(model: FusionForCausalLM, windows: torch.Tensor, positions) -> dict:
    """‖state‖ per branch, layer and position (the state after reading that many tokens)."""
    norms = {b: [[None] * len(positions) for _ in model.blocks] for b in BRANCHES}
    cache, done = None, 0
    for j, pos in enumerate(positions):
        out = model(windows[:, done:pos], past_key_values=cache, use_cache=True)
        cache, done = out.past_key_values, pos
        for i, layer in cache.layers.items():
            for branch, (_, state) in layer.items():
                norms[branch][i][j] = _state_norm(state)
    present = {b: norms[b] for b in BRANCHES if norms[b][0][0] is not None}
    return {"positions": list(positions), **present}


@torch.no_grad()
def frozen_state(model: FusionForCausalLM, vocab: int, n_inputs: int, length: int, seed: int) -> dict:
    """Variance across random inputs of each branch's final state, per layer."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_inputs, length), generator=generator).to(_device(model))
    out = model(ids, output_branches=True)
    return {
        branch: [float(states[branch].float().var(dim=0).mean()) for states in out.states]
        for branch in BRANCHES
        if branch in out.states[0]
    }


@torch.no_grad()
def balance(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """RMS of each branch's part of the fused output per layer, their ratio, and gate statistics."""
    out = model(windows, output_branches=True)
    if model.config.mixer != "hybrid":
        return {}
    rwkv_rms, mamba_rms, gates = [], [], []
    total = {"rwkv": 0.0, "mamba": 0.0}
    for block, r, m, gate in zip(model.blocks, out.rwkv_outputs, out.mamba_outputs, out.gates):
        a, b = block.fusion.parts(r, m)
        ms_a, ms_b = float(a.float().square().mean()), float(b.float().square().mean())
        total["rwkv"] += ms_a
        total["mamba"] += ms_b
        rwkv_rms.append(math.sqrt(ms_a))
        mamba_rms.append(math.sqrt(ms_b))
        if gate is not None:
            g = gate.float()
            gates.append({"mean": float(g.mean()), "std": float(g.std()) if g.numel() > 1 else 0.0,
                          "min": float(g.min()), "max": float(g.max())})
    a, b = math.sqrt(total["rwkv"]), math.sqrt(total["mamba"])
    ratio = max(a, b) / max(min(a, b), 1e-30)
    return {
        "rwkv_rms": rwkv_rms,
        "mamba_rms": mamba_rms,
        "ratio_per_layer": [max(x, y) / max(min(x, y), 1e-30) for x, y in zip(rwkv_rms, mamba_rms)],
        "rwkv_share_per_layer": [x / (x + y) if x + y > 0 else None for x, y in zip(rwkv_rms, mamba_rms)],
        "ratio": ratio,
        "rwkv_share": a / (a + b) if a + b > 0 else None,
        "dominant": "rwkv" if a >= b else "mamba",
        "gates": gates,  # per layer; WS: α, HY: the gains (both rows), GF/HGF: γ over positions
    }


@torch.no_grad()
def ablation(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Mean CE with both branches, and with each branch's output zeroed."""
    def ce(ablate=None):
        return float(_token_ce(model(windows, ablate=ablate).logits.float(), windows).mean())

    result = {"ce": ce()}
    for branch in BRANCHES:
        if getattr(model.config, f"has_{branch}"):
            result[f"ce_without_{branch}"] = ce(branch)
            result[f"delta_{branch}"] = result[f"ce_without_{branch}"] - result["ce"]
    return result


@torch.no_grad()
def depth_profile(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Activation variance through depth: residual stream, and each branch's output per layer."""
    out = model(windows, output_branches=True, output_hidden_states=True)
    result = {"residual_variance": [float(h.float().var()) for h in out.hidden_states]}
    for branch, outputs in (("rwkv", out.rwkv_outputs), ("mamba", out.mamba_outputs)):
        if outputs[0] is None:
            continue
        variance = [float(o.float().var()) for o in outputs]
        growth = variance[-1] / variance[0] if variance[0] > 0 else float("inf")
        result[branch] = {
            "output_variance": variance,
            "relative": [v / variance[0] if variance[0] > 0 else None for v in variance],
            "growth": growth,
            "character": "amplifier" if growth > 1 else "damper",
        }
    return result


def gradient_coupling(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Gradient norm per component (all layers together, and per layer) of the mean CE."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = _token_ce(model(windows).logits.float(), windows).mean()
        loss.backward()
    squares: dict[str, float] = {}
    per_layer: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        component = parts[2] if parts[0] == "blocks" and parts[2] in ("rwkv", "mamba", "fusion", "mlp") else "other"
        sq = float(p.grad.float().square().sum())
        squares[component] = squares.get(component, 0.0) + sq
        if component != "other":
            layer = int(parts[1])
            per_layer.setdefault(component, [0.0] * len(model.blocks))[layer] += sq
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    norms = {k: math.sqrt(v) for k, v in squares.items()}
    result = {"norms": norms, "per_layer": {k: [math.sqrt(x) for x in v] for k, v in per_layer.items()}}
    if "rwkv" in norms and "mamba" in norms and norms["rwkv"] > 0:
        result["mamba_over_rwkv"] = norms["mamba"] / norms["rwkv"]
    return result


@torch.no_grad()
def long_context(model: FusionForCausalLM, ids: torch.Tensor, cfg: DiagnosticsConfig) -> dict:
    """CE at the last ``short`` positions of ``long`` windows vs CE of ``short`` windows, same text."""
    long_windows = windows_from(ids, cfg.windows, cfg.long).to(_device(model))
    short_windows = long_windows.reshape(-1, cfg.short)
    ce_long = _token_ce(logits_in_segments(model, long_windows, cfg.segment), long_windows)
    ce_short = float(_token_ce(model(short_windows).logits.float(), short_windows).mean())
    tail = float(ce_long[:, -(cfg.short - 1) :].mean())
    per_position = ce_long.mean(0)
    buckets, lo = [], 1
    while lo < per_position.numel():
        hi = min(2 * lo, per_position.numel())
        buckets.append({"from": lo, "to": hi, "ce": float(per_position[lo - 1 : hi - 1].mean())})
        lo = hi
    return {
        "ce_short": ce_short,
        "ce_long_tail": tail,
        "ce_long_mean": float(ce_long.mean()),
        "ppl_ratio": math.exp(tail - ce_short),
        "ce_by_position": buckets,
    }


@torch.no_grad()
def output_entropy(model: FusionForCausalLM, windows: torch.Tensor) -> float:
    """Mean entropy (nats) of the next-token distribution over windows (B, T)."""
    logp = F.log_softmax(model(windows).logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


@torch.no_grad()
def decode_speed(model: FusionForCausalLM, prompt: torch.Tensor, tokens: int) -> float:
    """Greedy decoding tokens/s at batch 1 with the recurrent cache (after a short warm-up)."""
    out = model(prompt[None], use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(2):  # warm-up
        out = model(token, past_key_values=cache, use_cache=True)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


@torch.no_grad()
def useful_context_window(model: FusionForCausalLM, ids: torch.Tensor, cfg: DiagnosticsConfig) -> dict:
    """The longest length L whose loss at positions [L/2, L) stays within ``cfg.ucw_tolerance`` of the
    loss at [short/2, short), with the curve it was read from; ids (N,) is the token stream."""
    lengths = [n for n in cfg.ucw_lengths if n <= ids.numel()]
    if not lengths:
        return {"value": None, "why": f"the text is shorter than {min(cfg.ucw_lengths)} tokens"}
    longest = lengths[-1]
    seqs = windows_from(ids, max(1, cfg.windows // 4), longest).to(_device(model))
    ce = _token_ce(logits_in_segments(model, seqs, cfg.segment), seqs).mean(0)  # position t predicts t+1
    reference = float(ce[cfg.short // 2 - 1 : cfg.short - 1].mean())
    curve, ucw, usable = [], None, True
    for n in lengths:
        value = float(ce[n // 2 - 1 : n - 1].mean())
        curve.append({"length": n, "ce": value})
        usable = usable and value <= reference * (1 + cfg.ucw_tolerance)
        if usable:
            ucw = n
    return {"value": ucw, "reference_ce": reference, "tolerance": cfg.ucw_tolerance, "curve": curve,
            "limited_by_text": longest < max(cfg.ucw_lengths)}


@torch.no_grad()
def state_persistence(model: FusionForCausalLM, ids: torch.Tensor, vocab_tokens: torch.Tensor,
                      cfg: DiagnosticsConfig) -> dict:
    """Per number of filler turns: the loss on a random fact repeated after the turns, minus its loss at
    first showing (nats/token; near 0 means the state kept nothing); ids (N,) is the filler stream."""
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    device = _device(model)
    result = {}
    for turns in cfg.sps_turns:
        filler_len = turns * cfg.turn_tokens
        if ids.numel() < cfg.sps_samples * filler_len:
            result[str(turns)] = None
            continue
        filler = windows_from(ids, cfg.sps_samples, filler_len)
        n = filler.shape[0]
        fact, decoy = (vocab_tokens[torch.randint(0, vocab_tokens.numel(), (n, cfg.fact_tokens), generator=generator)]
                       for _ in range(2))
        seen = torch.cat([fact, filler, fact], dim=1).to(device)
        unseen = torch.cat([decoy, filler, fact], dim=1).to(device)
        span = slice(-cfg.fact_tokens, None)  # CE of predicting fact tokens 2…K of the repeat
        ce_seen = _token_ce(logits_in_segments(model, seen, cfg.segment), seen)[:, span][:, 1:].mean()
        ce_unseen = _token_ce(logits_in_segments(model, unseen, cfg.segment), unseen)[:, span][:, 1:].mean()
        result[str(turns)] = float(ce_unseen - ce_seen)
    return result


# ---------------------------------------------------------------------------------------------
# Everything together


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
    device = _device(model)
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
              for b in BRANCHES if b in norms}
    worst = max(max(v) for v in growth.values())
    checks["D1_state_growth"] = _check("D1_state_growth", worst, _below(worst, 2, 10), per_layer=growth)
    smallest = min(min(v) for v in frozen.values())
    checks["D2_frozen_state"] = _check("D2_frozen_state", smallest, "FAIL" if smallest < 1e-6 else "PASS",
                                       per_layer=frozen)
    if hybrid:
        checks["D3_balance"] = _check("D3_balance", bal["ratio"], _below(bal["ratio"], 5, 10), dominant=bal["dominant"],
                                      rwkv_share=bal["rwkv_share"])
        ratios = [max(a / m, m / a) if min(a, m) > 0 else float("inf")
                  for a, m in zip((layer[-1] for layer in norms["rwkv"]), (layer[-1] for layer in norms["mamba"]))]
        checks["state_norm_ratio"] = _check("state_norm_ratio", max(ratios), _below(max(ratios), 3, 10),
                                            per_layer=ratios)
    else:
        checks["D3_balance"] = _na("D3_balance", f"a pure {config.mixer} model has one branch")
        checks["state_norm_ratio"] = _na("state_norm_ratio", f"a pure {config.mixer} model has one branch")
    deltas = {b: abl[f"delta_{b}"] for b in BRANCHES if f"delta_{b}" in abl}
    least = min(deltas.values())
    checks["D4_information_flow"] = _check(
        "D4_information_flow", least, "PASS" if least >= 0.01 else "WARN" if least > 0 else "FAIL", per_branch=deltas
    )
    checks["long_context"] = _check("long_context", ctx["ppl_ratio"], _below(ctx["ppl_ratio"], 2, 5))
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
    from .checkpoint import is_checkpoint, load_config, load_module_state

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
            history.append({"step": int(entry.name.split("-")[1]), "gates": bal["gates"],
                            "rwkv_share": bal["rwkv_share_per_layer"], "ratio": bal["ratio"]})
    return history


def gate_training_log(run_dir: Path) -> list[dict]:
    """The fusion gates (RWKV share per layer) as logged at every training log step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [{"step": r["step"], "gate_rwkv_share": r["gate_rwkv_share"]} for r in rows if "gate_rwkv_share" in r]


def _plots(result: dict, plot_dir: Path) -> list[str]:
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
    for branch, style in (("rwkv", "-"), ("mamba", "--")):
        for i, layer in enumerate(norms.get(branch, [])):
            ax.plot(norms["positions"], layer, style, marker="o", label=f"{branch} L{i}")
    ax.set(xscale="log", yscale="log", xlabel="position", ylabel="‖state‖", title="D1: state norm by position")
    ax.legend(fontsize=6, ncol=2)
    save(fig, "diag_state_norms.png")

    depth = result["depth"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(depth["residual_variance"], marker="o", label="residual stream")
    for branch in BRANCHES:
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
        ax.set(xlabel="step", ylabel="mean gate (RWKV share)", title="fusion gates over training")
        ax.legend(fontsize=7)
        save(fig, "diag_gates.png")
    return written


def run_diagnostics(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    corpus: str | None = None,
    cfg: DiagnosticsConfig | None = None,
    device: str | None = None,
) -> dict:
    """Diagnose a run directory (``model/`` inside, checkpoints for the gate history) or a model
    folder; write ``diagnostics.json`` and ``plots/diag_*.png`` to ``out`` (default PATH/diagnostics)."""
    from .corpora import load_text
    from .data import encode_corpus, encode_split
    from .runs import locate_run, open_run

    cfg = cfg or DiagnosticsConfig()
    path = Path(path)
    location = locate_run(path)
    if location.model_dir is None:
        raise PhaseLMError(
            f"{path} is a {location.kind} run (a core grafted onto a backbone), which has no RWKV-6 / Mamba-2 branches "
            "to "
            'diagnose; use a fusion-family model (phaselm train-lm with arch = "fusion")'
        )
    with open(location.model_dir / "config.json", encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if model_type != FusionConfig.model_type:
        raise PhaseLMError(
            f"{path} holds a {model_type!r} model, which has no RWKV-6 / Mamba-2 branches to diagnose; "
            'use a fusion-family model (phaselm train-lm with arch = "fusion")'
        )
    run = open_run(path, device)
    model, tokenizer, run_dir = run.model, run.tokenizer, run.run_dir
    val_fraction = run.val_fraction if corpus is None else 0.1
    corpus = corpus if corpus is not None else run.corpus
    text = load_text(corpus)
    if val_fraction > 0:
        _, val_ids = encode_split(tokenizer, text, val_fraction)
    else:
        val_ids = encode_corpus(tokenizer, text)
    result = diagnose(model, val_ids, cfg)
    if run_dir is not None:
        windows = windows_from(val_ids, cfg.windows, cfg.short).to(_device(model))
        result["gate_history"] = gate_history(run_dir, windows)
        result["gate_training_log"] = gate_training_log(run_dir)
    out = Path(out) if out is not None else path / "diagnostics"
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = _plots(result, out / "plots")
    (out / "diagnostics.json").write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    return result


def summary_lines(result: dict) -> list[str]:
    """One line per check: name, status, value."""
    lines = []
    for name, check in result["checks"].items():
        value = check["value"]
        shown = "—" if value is None else f"{value:.4g}"
        lines.append(f"{name:22s} {check['status']:5s} {shown}")
    return lines
