"""The fusion family's measurements (seed 004's diagnostics, without verdicts): state norms,
frozen state, branch balance and ablation, activation variance through depth, gradient
coupling, long-context loss, output entropy, decode speed, useful context window and state
persistence. Each takes a :class:`phaselm.models.fusion.FusionForCausalLM` and windows of
token ids; :mod:`phaselm.evals.diagnostics` turns them into checks. Branches go by the names the
model declares (``config.branch_names``: rwkv, mamba, kuramoto); the state measurements (norms,
frozen state) read the recurrent branches only, since a Kuramoto branch keeps its earlier tokens
rather than a state of fixed size."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import PhaseLMError
from ..models.fusion import FusionForCausalLM
from ..models.fusion_branches import RECURRENT


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


def model_device(model) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def recurrent_branches(model: FusionForCausalLM) -> list[str]:
    """The model's branches whose state has a fixed size (RWKV-6, Mamba-2), in fusion order."""
    return [name for name in model.config.branch_names if name in RECURRENT]


def state_norm(state: torch.Tensor) -> float:
    """Frobenius norm of a state (B, …), the mean over the batch."""
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


def token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CE of predicting ids[:, t+1] from position t: (B, T−1)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# Measurements


@torch.no_grad()
def state_norms(model: FusionForCausalLM, windows: torch.Tensor, positions) -> dict:
    """‖state‖ per recurrent branch, layer and position (the state after reading that many tokens)."""
    branches = recurrent_branches(model)
    norms = {b: [[None] * len(positions) for _ in model.blocks] for b in branches}
    cache, done = None, 0
    for j, pos in enumerate(positions):
        out = model(windows[:, done:pos], past_key_values=cache, use_cache=True)
        cache, done = out.past_key_values, pos
        for i, layer in cache.layers.items():
            for branch in branches:
                norms[branch][i][j] = state_norm(layer[branch][1])
    return {"positions": list(positions), **norms}


@torch.no_grad()
def frozen_state(model: FusionForCausalLM, vocab: int, n_inputs: int, length: int, seed: int) -> dict:
    """Variance across random inputs of each recurrent branch's final state, per layer."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_inputs, length), generator=generator).to(model_device(model))
    out = model(ids, output_branches=True)
    return {
        branch: [float(states[branch].float().var(dim=0).mean()) for states in out.states]
        for branch in recurrent_branches(model)
    }


@torch.no_grad()
def balance(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """RMS of each branch's part of the fused output per layer, their ratio, and gate statistics.
    Keys name the branches (``rwkv_rms``, ``mamba_rms``, ``rwkv_share`` for the first's share, …)."""
    out = model(windows, output_branches=True)
    if model.config.mixer != "hybrid":
        return {}
    first, second = model.config.branch_names
    first_rms, second_rms, gates = [], [], []
    total = [0.0, 0.0]
    for block, r, m, gate in zip(model.blocks, getattr(out, f"{first}_outputs"), getattr(out, f"{second}_outputs"),
                                 out.gates):
        a, b = block.fusion.parts(r, m)
        ms_a, ms_b = float(a.float().square().mean()), float(b.float().square().mean())
        total[0] += ms_a
        total[1] += ms_b
        first_rms.append(math.sqrt(ms_a))
        second_rms.append(math.sqrt(ms_b))
        if gate is not None:
            g = gate.float()
            gates.append({"mean": float(g.mean()), "std": float(g.std()) if g.numel() > 1 else 0.0,
                          "min": float(g.min()), "max": float(g.max())})
    a, b = math.sqrt(total[0]), math.sqrt(total[1])
    ratio = max(a, b) / max(min(a, b), 1e-30)
    return {
        "branches": [first, second],
        f"{first}_rms": first_rms,
        f"{second}_rms": second_rms,
        "ratio_per_layer": [max(x, y) / max(min(x, y), 1e-30) for x, y in zip(first_rms, second_rms)],
        f"{first}_share_per_layer": [x / (x + y) if x + y > 0 else None for x, y in zip(first_rms, second_rms)],
        "ratio": ratio,
        f"{first}_share": a / (a + b) if a + b > 0 else None,
        "dominant": first if a >= b else second,
        "gates": gates,  # per layer; WS: α, HY: the gains (both rows), GF/HGF: γ over positions
    }


@torch.no_grad()
def ablation(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Mean CE with both branches, and with each branch's output zeroed."""
    def ce(ablate=None):
        return float(token_ce(model(windows, ablate=ablate).logits.float(), windows).mean())

    result = {"ce": ce()}
    for branch in model.config.branch_names:
        result[f"ce_without_{branch}"] = ce(branch)
        result[f"delta_{branch}"] = result[f"ce_without_{branch}"] - result["ce"]
    return result


@torch.no_grad()
def depth_profile(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Activation variance through depth: residual stream, and each branch's output per layer."""
    out = model(windows, output_branches=True, output_hidden_states=True)
    result = {"residual_variance": [float(h.float().var()) for h in out.hidden_states]}
    for branch in model.config.branch_names:
        outputs = getattr(out, f"{branch}_outputs")
        variance = [float(o.float().var()) for o in outputs]
        growth = variance[-1] / variance[0] if variance[0] > 0 else float("inf")
        result[branch] = {
            "output_variance": variance,
            "relative": [v / variance[0] if variance[0] > 0 else None for v in variance],
            "growth": growth,
            "character": "amplifier" if growth > 1 else "damper",
        }
    return result


COMPONENTS = ("rwkv", "mamba", "kuramoto", "fusion", "mlp")  # a block's parts, by module name


def gradient_coupling(model: FusionForCausalLM, windows: torch.Tensor) -> dict:
    """Gradient norm per component (all layers together, and per layer) of the mean CE."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = token_ce(model(windows).logits.float(), windows).mean()
        loss.backward()
    squares: dict[str, float] = {}
    per_layer: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        component = parts[2] if parts[0] == "blocks" and parts[2] in COMPONENTS else "other"
        sq = float(p.grad.float().square().sum())
        squares[component] = squares.get(component, 0.0) + sq
        if component != "other":
            layer = int(parts[1])
            per_layer.setdefault(component, [0.0] * len(model.blocks))[layer] += sq
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    norms = {k: math.sqrt(v) for k, v in squares.items()}
    result = {"norms": norms, "per_layer": {k: [math.sqrt(x) for x in v] for k, v in per_layer.items()}}
    if model.config.mixer == "hybrid":  # e.g. mamba_over_rwkv: the second branch's gradient over the first's
        first, second = model.config.branch_names
        if norms.get(first, 0.0) > 0 and second in norms:
            result[f"{second}_over_{first}"] = norms[second] / norms[first]
    return result


@torch.no_grad()
def long_context(model: FusionForCausalLM, ids: torch.Tensor, cfg: DiagnosticsConfig) -> dict:
    """CE at the last ``short`` positions of ``long`` windows vs CE of ``short`` windows, same text."""
    long_windows = windows_from(ids, cfg.windows, cfg.long).to(model_device(model))
    short_windows = long_windows.reshape(-1, cfg.short)
    ce_long = token_ce(logits_in_segments(model, long_windows, cfg.segment), long_windows)
    ce_short = float(token_ce(model(short_windows).logits.float(), short_windows).mean())
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
    seqs = windows_from(ids, max(1, cfg.windows // 4), longest).to(model_device(model))
    ce = token_ce(logits_in_segments(model, seqs, cfg.segment), seqs).mean(0)  # position t predicts t+1
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
    device = model_device(model)
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
        ce_seen = token_ce(logits_in_segments(model, seen, cfg.segment), seen)[:, span][:, 1:].mean()
        ce_unseen = token_ce(logits_in_segments(model, unseen, cfg.segment), unseen)[:, span][:, 1:].mean()
        result[str(turns)] = float(ce_unseen - ce_seen)
    return result


# ---------------------------------------------------------------------------------------------
# Everything together
