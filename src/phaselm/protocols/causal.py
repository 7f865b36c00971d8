"""Does R matter: issue 15's causal test of synchrony as one pre-declared protocol.

On validation windows drawn with each seed (the same windows in every arm), the model intact
is paired per window with the model under each causal condition — the oscillator branch
ablated (``[causal] ablate``: K-SSM's ``bank``, a graft's ``phase_core``), R pinned at
``[causal] pin``, all phases synchronised (R = 1), phases spread evenly (R = 0) — on the
window's validation cross-entropy (ΔCE, nats per token) and on KL(intact ‖ condition) of the
next-token distributions; and the within-window Spearman ρ of per-token R against per-token CE
is tested against 0 (R at position t paired with the loss of predicting token t + 1). These
4 × 2 + 1 tests are one Holm family.

``[causal] sites`` picks the oscillator sites that pin / sync / disorder act on and whose R the
correlation reads (with ``[causal] layers``, which then counts sites of that kind): left out,
every site; ``"mixer"``, the Kuramoto token mixers only (K-SSM's ``mixer = "kuramoto"``, a fusion
kuramoto branch), whose R per token is the mean over heads of the synchrony of the field it
couples to; ``"bank"`` or ``"core"`` likewise. Per-token R is the mean over the chosen sites.

Verdict, with the thresholds the file declares (and hashes): "synchrony is used" iff the
ablation's mean ΔCE ≥ ``ablation_nats`` with Holm-adjusted p ≤ α, and pinning R moves CE with
|d_z| ≥ ``pin_dz`` and Holm-adjusted p ≤ α; otherwise "not shown". With ``[model] runs``
(other training seeds of the same recipe) every run is scored on its own validation windows
drawn with the same seeds, the pairs are pooled, and a table gives each run's means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import statistics as st
from ..evals import kl_divergence
from ..interventions import Intervention, intervene, require_oscillator_sites, structure
from ..interventions.install import chosen_sites
from .grid import grid_windows
from .scoring import compare, count_phrase, holm_family, power_statement
from .spec import Protocol, resolve_path
from .subject import Subject, load_subject

CE, KL, CORRELATION = "ΔCE", "KL", "R–loss ρ"


def causal_conditions(protocol: Protocol) -> list[tuple[str, Intervention]]:
    """The four declared conditions, (name, intervention), in table order: ablation, pin, sync, disorder."""
    c = protocol.causal
    sites = c.get("sites")
    return [(f"ablate {c['ablate']}", Intervention("ablate", c["ablate"], c["layers"])),
            (f"pin R = {c['pin']:g}", Intervention("pin", c["pin"], c["layers"], sites)),
            ("sync (R = 1)", Intervention("sync", None, c["layers"], sites)),
            ("disorder (R = 0)", Intervention("disorder", None, c["layers"], sites))]


def r_rows(subject: Subject, conditions: list[tuple[str, Intervention]]) -> list[int]:
    """The layer numbers (rows of a reading's R) of the sites the R conditions act on, chosen as
    ``intervene`` chooses them for the pin condition (``[causal] sites`` and ``layers``)."""
    pin = next(item for _, item in conditions if item.kind == "pin")
    return [site.layer for site in chosen_sites(structure(subject.model), pin, {})]


def _log_probs(subject: Subject, seqs: list[list[int]], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p (B, T, V) and R averaged over the oscillator sites ``rows`` (B, T) of equal-length windows."""
    readings = subject.readings(seqs, len(seqs))
    logp = torch.stack([F.log_softmax(r.logits, -1) for r in readings])
    have_r = rows and all(r.r is not None for r in readings)
    r = torch.stack([r.r[rows].mean(0) for r in readings]) if have_r else None
    return logp, r


@torch.no_grad()
def score_windows(subject: Subject, protocol: Protocol, conditions: list[tuple[str, Intervention]]) -> dict:
    """Per window of ``subject``'s validation split: intact CE, each condition's CE and KL, the
    within-window Spearman ρ of R vs CE; and every token's (R, CE) pair. Windows are scored in
    batches of one seed, and each condition's randomness is seeded with that seed."""
    val_ids = subject.validation_ids()
    windows = grid_windows(val_ids, protocol)
    out = {"starts": windows, "intact": [], "rho": [], "token_r": [], "token_ce": [],
           **{name: {"ce": [], "kl": []} for name, _ in conditions}}
    rows = r_rows(subject, conditions)
    for seed in protocol.seeds:
        starts = [s for sd, s in windows if sd == seed]
        for b in range(0, len(starts), protocol.batch_size):
            batch = starts[b : b + protocol.batch_size]
            seqs = [val_ids[s : s + protocol.seq_len].tolist() for s in batch]
            targets = torch.stack([val_ids[s + 1 : s + protocol.seq_len + 1] for s in batch]).long()[..., None]
            logp0, r = _log_probs(subject, seqs, rows)
            ce0 = -logp0.gather(-1, targets).squeeze(-1).double()  # (B, T)
            out["intact"] += ce0.mean(-1).tolist()
            for i in range(len(batch)):
                if r is None:
                    out["rho"].append(None)
                    continue
                out["token_r"] += r[i].tolist()
                out["token_ce"] += ce0[i].tolist()
                out["rho"].append(st.correlation(r[i].double().numpy(), ce0[i].numpy()).spearman_rho)
            for name, item in conditions:
                with intervene(subject.target, item, seed=seed):
                    logp, _ = _log_probs(subject, seqs, rows)
                out[name]["ce"] += (-logp.gather(-1, targets).squeeze(-1).double()).mean(-1).tolist()
                out[name]["kl"] += kl_divergence(logp0, logp).double().mean(-1).tolist()
    return out


def _pool(scored: list[dict], names: list[str]) -> dict:
    pooled = {"intact": [], "rho": [], "token_r": [], "token_ce": [], **{n: {"ce": [], "kl": []} for n in names}}
    for one in scored:
        for key in ("intact", "rho", "token_r", "token_ce"):
            pooled[key] += one[key]
        for n in names:
            for m in ("ce", "kl"):
                pooled[n][m] += one[n][m]
    return pooled


def _criteria(protocol: Protocol, ablation: dict | None, pin: dict | None) -> list[dict]:
    """The two pre-declared criteria of "synchrony is used", each with what was observed."""
    alpha, t = protocol.alpha, protocol.thresholds

    def holm_ok(c):
        return c is not None and c.get("p_holm") is not None and c["p_holm"] <= alpha

    ablation_met = holm_ok(ablation) and ablation["mean_diff"] >= t["ablation_nats"]
    dz = pin.get("cohens_dz") if pin else None
    pin_met = holm_ok(pin) and dz is not None and abs(dz) >= t["pin_dz"]
    return [
        {"criterion": f"ablation ΔCE ≥ {t['ablation_nats']:g} nats and p Holm ≤ {alpha:g}",
         "threshold": t["ablation_nats"], "observed": ablation["mean_diff"] if ablation else None,
         "p_holm": ablation.get("p_holm") if ablation else None, "met": bool(ablation_met)},
        {"criterion": f"pin ΔCE |d_z| ≥ {t['pin_dz']:g} and p Holm ≤ {alpha:g}", "threshold": t["pin_dz"],
         "observed": abs(dz) if dz is not None else None, "p_holm": pin.get("p_holm") if pin else None,
         "met": bool(pin_met)},
    ]


def run_does_r_matter(protocol: Protocol, subject: Subject, reference=None, progress=None) -> dict:
    """Score the intact model and each causal condition on the protocol's validation windows
    (of every run), test each paired per window (one Holm family) and apply the pre-declared
    thresholds; returns the results body (tables, comparisons, criteria, verdict)."""
    from ..evals.outputs import check_positions

    subjects = [subject] + [load_subject(resolve_path(r, protocol.file.parent), protocol.device)
                            for r in protocol.runs]
    conditions = causal_conditions(protocol)
    names = [name for name, _ in conditions]
    for s in subjects:  # every model checked before any scoring
        require_oscillator_sites(s.model, "the does_r_matter protocol")
        check_positions(s.model, protocol.seq_len, f"[evaluation] seq_len {protocol.seq_len}")
        for _, item in conditions:
            with intervene(s.target, item):
                pass
    advance = progress or (lambda *_: None)
    advance(0)
    scored = []
    for s in subjects:
        scored.append(score_windows(s, protocol, conditions))
        advance()
    pooled = _pool(scored, names)
    n = len(pooled["intact"])
    seed0 = protocol.seeds[0]
    zeros = [0.0] * n
    comparisons = {name: {CE: compare(pooled[name]["ce"], pooled["intact"], protocol, seed0),
                          KL: compare(pooled[name]["kl"], zeros, protocol, seed0)} for name in names}
    correlation = compare(pooled["rho"], zeros, protocol, seed0)
    family = holm_family([c for row in comparisons.values() for c in row.values()] + [correlation])
    criteria = _criteria(protocol, comparisons[names[0]][CE], comparisons[names[1]][CE])
    used = all(c["met"] for c in criteria)
    verdict = (f"Synchrony is {'used' if used else 'not shown to be used'}: "
               + "; ".join(f"{c['criterion']} — {'met' if c['met'] else 'not met'}" for c in criteria)
               + f" (n = {n} windows, Holm over {family} tests).")
    criterion_of = {(names[0], CE): criteria[0], (names[1], CE): criteria[1]}
    rows = []
    for name in names:
        for metric in (CE, KL):
            rows.append(_row(name, metric, comparisons[name][metric], protocol, criterion_of.get((name, metric))))
    rows.append(_row("intact", CORRELATION, correlation, protocol, None))
    pooled_r = (st.correlation(pooled["token_r"], pooled["token_ce"]).to_dict()
                if len(pooled["token_r"]) >= st.MIN_N else None)
    runs = [s.path or protocol.model_path for s in subjects]
    layers = protocol.causal["layers"]
    layers_label = layers if isinstance(layers, str) else ",".join(map(str, layers))
    tables = [{
        "title": f"Causal tests (n = {n} windows of {protocol.seq_len} tokens: {protocol.windows} per seed × "
                 f"{count_phrase(len(protocol.seeds), 'seed')} × {count_phrase(len(runs), 'run')}; paired per window; "
                 f"Holm over {family} tests)",
        "header": ["condition", "test", "n", "intact mean", "condition mean", "effect (Δ mean)",
                   f"{protocol.ci_level:.0%} CI", "d_z", f"p ({protocol.test})", "p Holm", "significant",
                   "pre-declared criterion", "met"],
        "rows": rows,
        "note": "ΔCE: condition − intact validation cross-entropy per window (nats per token; per character for a "
                "character-level model). KL: mean over the window's positions of KL(intact ‖ condition), tested "
                "against 0. R–loss ρ: within-window Spearman ρ of per-token R (mean over the chosen oscillator "
                f"sites: {protocol.causal.get('sites') or 'every kind'}, layers {layers_label}) and per-token CE, "
                "tested against 0.",
    }, {
        "title": f"Pre-declared thresholds and verdict (n = {n} windows)",
        "header": ["criterion", "n", "threshold", "observed", "p Holm", "met"],
        "rows": [[c["criterion"], n, c["threshold"], c["observed"], c["p_holm"], c["met"]] for c in criteria],
    }, {
        "title": f"Per-token R vs CE, all tokens pooled (n = {len(pooled['token_r'])} tokens; descriptive, tokens are "
                 "not independent)",
        "header": ["R of", "n", "Pearson r", "Spearman ρ", "R mean"],
        "rows": [["mean over the chosen sites", len(pooled["token_r"]), (pooled_r or {}).get("pearson_r"),
                  (pooled_r or {}).get("spearman_rho"),
                  sum(pooled["token_r"]) / len(pooled["token_r"]) if pooled["token_r"] else None]],
    }]
    if len(runs) > 1:
        tables.append(_per_run_table(runs, scored, names, protocol))
    power = power_statement(n, protocol, family)
    return {
        "n": n,
        "windows": {"per_seed": protocol.windows, "seeds": protocol.seeds, "seq_len": protocol.seq_len,
                    "runs": runs, "starts": [one["starts"] for one in scored]},
        "conditions": ["intact"] + names,
        "interventions": [{"name": name, **item.to_dict()} for name, item in conditions],
        "thresholds": {**protocol.thresholds, "alpha": protocol.alpha},
        "comparisons": [{"condition": name, "ce": comparisons[name][CE], "kl": comparisons[name][KL]}
                        for name in names],
        "r_loss_correlation": {"within_window_rho": correlation, "pooled_tokens": pooled_r},
        "criteria": criteria,
        "synchrony_used": used,
        "holm_family_size": family,
        "power": power,
        "verdict": verdict,
        "tables": tables,
        "distributions": {"validation CE (nats)": {"intact": pooled["intact"],
                                                   **{name: pooled[name]["ce"] for name in names}},
                          "KL(intact ‖ condition)": {name: pooled[name]["kl"] for name in names}},
        "per_window": {"intact": pooled["intact"], "rho": pooled["rho"], **{name: pooled[name] for name in names}},
    }


def _row(name: str, metric: str, c: dict | None, protocol: Protocol, criterion: dict | None) -> list:
    label = criterion["criterion"] if criterion else "—"
    met = criterion["met"] if criterion else None
    if c is None:
        return [name, metric, 0] + [None] * 8 + [label, met]
    significant = c.get("p_holm") is not None and c["p_holm"] <= protocol.alpha
    intact = c["mean_y"] if metric == CE else None  # KL and ρ are tested against 0, not against an intact value
    return [name, metric, c["n"], intact, c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]],
            c["cohens_dz"], c["p"], c["p_holm"], significant, label, met]


def _per_run_table(runs: list[str], scored: list[dict], names: list[str], protocol: Protocol) -> dict:
    def mean(values):
        return sum(values) / len(values) if values else None

    rows = []
    for run, one in zip(runs, scored):
        base = mean(one["intact"])
        rows.append([run, len(one["intact"]), base]
                    + [mean(one[name]["ce"]) - base if one[name]["ce"] else None for name in names])
    return {"title": f"Per training run (n = {len(runs)} runs; mean over each run's windows)",
            "header": ["run", "n", "intact CE"] + [f"ΔCE {name}" for name in names], "rows": rows}
