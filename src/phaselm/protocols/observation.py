"""Observation protocol: blind vs measured generation."""

from __future__ import annotations

import numpy as np
import torch

from .. import statistics as st
from ..errors import PhaseLMError
from ..interventions import structure
from .scoring import clean_pairs, compare, count_phrase, per_token_r, power_statement
from .spec import MAX_SCATTER, METRIC_LABELS, RECORDED_TOLERANCE, TESTS, Protocol
from .subject import (
    Subject,
    check_prompts,
    forward,
    generate_sample,
    pairing_units,
    producing_positions,
    protocol_prompts,
)


def model_dtype(subject: Subject) -> torch.dtype:
    """The dtype the model's own weights compute in (a grafted core's float32 weights aside)."""
    core = {id(p) for p in subject.handle.core.parameters()} if subject.handle is not None else set()
    return next((p.dtype for p in subject.model.parameters() if id(p) not in core and p.is_floating_point()),
                torch.float32)


def run_observation(protocol: Protocol, subject: Subject, progress=None) -> dict:
    """Generate each sample blind and measured (counterbalanced order) and test whether measuring
    changes the text or R; returns the results dict (tables, comparisons, verdict)."""
    from ..observables import normalized_entropy

    info = structure(subject.target)
    if not info.sites:
        raise PhaseLMError("an observation protocol needs a model with oscillators (K-SSM or a grafted Phase Core); "
                           f"this is a {info.name} model")
    texts = protocol_prompts(protocol, subject)
    check_prompts(subject, texts, protocol.max_new_tokens)
    units = pairing_units(protocol, len(texts))
    advance = progress or (lambda *_: None)
    advance(0)
    rows = []
    for k, (i, seed) in enumerate(units):
        # counterbalanced: half the units generate measured first
        order = ("blind", "measured") if k % 2 == 0 else ("measured", "blind")
        samples = {mode: generate_sample(subject, texts[i], seed, protocol, measured=(mode == "measured"))
                   for mode in order}
        row = {"prompt": i, "seed": seed}
        for mode, sample in samples.items():
            logits, orders = forward(subject, sample.prompt_ids + sample.ids)
            window = producing_positions(len(sample.prompt_ids), len(sample.ids))
            r = per_token_r(orders, window)
            u = normalized_entropy(logits[window]).double().numpy()
            row[mode] = {"ids": sample.ids, "r": r, "u": u}
            if mode == "measured":
                row["recorded_r"] = sample.recorded_r
        b, m = row["blind"]["ids"], row["measured"]["ids"]
        same = sum(1 for x, y in zip(b, m) if x == y)
        row["agreement"] = same / max(len(b), len(m), 1)
        row["identical"] = b == m
        if row.get("recorded_r") is not None and row["measured"]["r"] is not None:
            rec = np.asarray(row["recorded_r"], dtype=float)
            row["recorded_vs_recomputed"] = float(np.max(np.abs(rec - row["measured"]["r"]))) if len(rec) else 0.0
        rows.append(row)
        advance()

    def per_sample(mode: str, metric: str) -> list[float | None]:
        out = []
        for row in rows:
            r, u = row[mode]["r"], row[mode]["u"]
            if metric == "u_mean":
                out.append(float(u.mean()) if len(u) else None)
            elif r is None or not len(r):
                out.append(None)
            else:
                out.append({"r_mean": float(r.mean()), "r_std": float(r.std()),
                            "r_range": float(r.max() - r.min())}[metric])
        return out

    values = {m: {mode: per_sample(mode, m) for mode in ("blind", "measured")} for m in protocol.metrics}
    seed = protocol.seeds[0]
    comparisons, spreads, variance_perm = {}, {}, {}
    for m in protocol.metrics:
        x, y = clean_pairs(values[m]["measured"], values[m]["blind"])
        comparisons[m] = compare(values[m]["measured"], values[m]["blind"], protocol, seed)
        if len(x) >= st.MIN_N:
            bf, lev = st.spread_test(x, y, center="median").to_dict(), st.spread_test(x, y, center="mean").to_dict()
            bf["variance_ratio_ci"] = st.variance_ratio_ci(x, y, protocol.ci_level, protocol.bootstrap_resamples, seed)
            spreads[m] = {"brown_forsythe": bf, "levene": lev}
            try:
                variance_perm[m] = st.permutation_test(x, y, False, "log_variance_ratio",
                                                       protocol.permutation_resamples, seed).to_dict()
            except PhaseLMError:  # a zero variance: the ratio is undefined
                variance_perm[m] = None
    # one Holm family over every p-value of the table
    entries = []
    for m in protocol.metrics:
        c = comparisons[m]
        if c is not None:
            entries += [{"metric": m, "test": f"mean: {TESTS[protocol.test]}", "p": c["p"], "ref": (c, "p_holm")}]
            for key, name in (("p_t", "t"), ("p_wilcoxon", "wilcoxon"), ("p_permutation", "permutation")):
                if name != protocol.test:
                    entries.append({"metric": m, "test": f"mean: {TESTS[name]} (secondary)", "p": c[key],
                                    "ref": (c, f"{key}_holm")})
        if m in spreads:
            entries.append({"metric": m, "test": "spread: Brown–Forsythe", "p": spreads[m]["brown_forsythe"]["p"],
                            "ref": (spreads[m]["brown_forsythe"], "p_holm")})
            entries.append({"metric": m, "test": "spread: Levene", "p": spreads[m]["levene"]["p"],
                            "ref": (spreads[m]["levene"], "p_holm")})
        if variance_perm.get(m) is not None:
            entries.append({"metric": m, "test": "spread: permutation (log variance ratio)", "p": variance_perm[m]["p"],
                            "ref": (variance_perm[m], "p_holm")})
    adjusted = st.holm([e["p"] for e in entries])
    for e, a in zip(entries, adjusted):
        e["p_holm"] = a
        target, key = e.pop("ref")
        target[key] = a
    family = sum(1 for e in entries if e["p"] is not None)
    detected = [e for e in entries if e["p_holm"] is not None and e["p_holm"] <= protocol.alpha]
    n = len(units)
    agreement = float(np.mean([r["agreement"] for r in rows]))
    identical = sum(r["identical"] for r in rows)
    deviations = [r["recorded_vs_recomputed"] for r in rows if "recorded_vs_recomputed" in r]
    power = power_statement(n, protocol, family, variance=True)
    if detected:
        verdict = (f"A blind–measured difference is detectable (Holm over {family} tests at α = {protocol.alpha:g}, n "
                   f"= {n} pairs): "
                   + "; ".join(f"{METRIC_LABELS[e['metric']]} — {e['test']} (p_Holm = {e['p_holm']:.3g})"
                               for e in detected) + ".")
    else:
        verdict = (f"No blind–measured difference is detectable (Holm over {family} tests at α = {protocol.alpha:g}, n "
                   f"= {n} pairs). At n = {n} a paired t-test detects |d_z| ≥ {power['min_detectable_dz']:.3g} with "
                   f"{protocol.power:.0%} power (≥ {power['min_detectable_dz_holm_strictest']:.3g} at the "
                   "Holm-strictest level), and an F-test detects variance ratios ≥ "
                   f"{power['min_detectable_variance_ratio']:.3g} (or ≤ "
                   f"{1 / power['min_detectable_variance_ratio']:.3g}).")
    worst = max(deviations) if deviations else None
    changed = identical < n or (worst is not None and worst > RECORDED_TOLERANCE)
    verdict += f" Token agreement blind vs measured: {agreement:.1%} ({identical}/{n} samples identical)"
    if worst is not None:
        verdict += f"; R recorded during measured generation vs recomputed on the same text: max |Δ| = {worst:.2g}"
    verdict += "; measuring CHANGED the computation." if changed else "; measuring did not change the computation."
    precision = model_dtype(subject)
    if worst is not None and worst > RECORDED_TOLERANCE and precision != torch.float32:
        # Decoding (cached, one position at a time) and the full-sequence recomputation take
        # different kernels; in reduced precision they round differently, and the oscillators
        # can amplify that. A bf16 backbone alone moved R by ~1e-2 on the CPU demo model.
        verdict += (f" The model computes in {str(precision).removeprefix('torch.')}: decoding and the full-sequence "
                    "pass round differently, so part or all of that R difference may be rounding; run the model "
                    "in float32 to tell the two apart.")

    tables = [
        {
            "title": f"Blind vs measured, per sample (n = {n} pairs: {count_phrase(len(texts), 'prompt')} × "
                     f"{count_phrase(len(protocol.seeds), 'seed')})",
            "header": ["metric", "n", "blind mean", "measured mean", "Δ mean (measured − blind)",
                       f"{protocol.ci_level:.0%} CI", "d_z", "rank-biserial", f"p ({protocol.test})", "p Holm"],
            "rows": [[METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]],
                      c["cohens_dz"], c["rank_biserial"], c["p"], c["p_holm"]]
                     if (c := comparisons[m]) else [METRIC_LABELS[m], 0] + [None] * 8
                     for m in protocol.metrics],
        },
        {
            "title": f"Spread between samples (n = {n} per condition)",
            "header": ["metric", "n", "var blind", "var measured", "ratio measured/blind",
                       f"{protocol.ci_level:.0%} CI (bootstrap)",
                       "Brown–Forsythe p", "p Holm", "Levene p", "p Holm", "permutation p", "p Holm"],
            "rows": [[METRIC_LABELS[m], n, s["brown_forsythe"]["variances"][1], s["brown_forsythe"]["variances"][0],
                      s["brown_forsythe"]["variance_ratio"], s["brown_forsythe"]["variance_ratio_ci"],
                      s["brown_forsythe"]["p"],
                      s["brown_forsythe"].get("p_holm"), s["levene"]["p"], s["levene"].get("p_holm"),
                      (variance_perm.get(m) or {}).get("p"), (variance_perm.get(m) or {}).get("p_holm")]
                     for m, s in spreads.items()],
            "note": "Brown–Forsythe and Levene treat the two conditions as independent groups of per-sample values.",
        },
        {
            "title": f"Every test of the family (Holm over {family} p-values, α = {protocol.alpha:g}, n = {n})",
            "header": ["metric", "test", "n", "p", "p Holm", "detected"],
            "rows": [[METRIC_LABELS[e["metric"]], e["test"], n, e["p"], e["p_holm"],
                      bool(e["p_holm"] is not None and e["p_holm"] <= protocol.alpha)]
                     for e in entries],
        },
        {
            "title": f"Agreement and power (n = {n})",
            "header": ["quantity", "n", "value"],
            "rows": [["token agreement blind vs measured (mean share of positions)", n, agreement],
                     ["samples with identical text", n, identical],
                     ["max |R recorded during generation − R recomputed| (measured)", len(deviations),
                      max(deviations) if deviations else None],
                     [f"smallest |d_z| detectable at {protocol.power:.0%} power (α = {protocol.alpha:g})", n,
                      power["min_detectable_dz"]],
                     [f"… at the Holm-strictest level α/{family}", n, power["min_detectable_dz_holm_strictest"]],
                     [f"smallest variance ratio detectable at {protocol.power:.0%} power (F-test)", n,
                      power["min_detectable_variance_ratio"]]],
        },
    ]
    scatter = {}
    for mode in ("blind", "measured"):
        points = [[float(r), float(u)] for row in rows if row[mode]["r"] is not None
                  for r, u in zip(row[mode]["r"], row[mode]["u"])]
        scatter[mode] = points[:MAX_SCATTER]
    tokens = {mode: [float(v) for row in rows if row[mode]["r"] is not None for v in row[mode]["r"]]
              for mode in ("blind", "measured")}
    return {
        "n": n,
        "n_prompts": len(texts),
        "conditions": ["blind", "measured"],
        "definitions": {
            "blind": "phaselm.generation.generate(measured=False): nothing recorded during generation",
            "measured": "generate(measured=True) with R recorded at every oscillator site during generation",
            "R of a sample": "R of the positions that produced its tokens (mean over oscillator sites), recomputed for "
                             "both conditions by one teacher-forced forward pass over prompt + continuation",
            "r_std, r_range": "standard deviation and max − min of R over the tokens of one sample",
            "u_mean": "mean normalised entropy U of the next-token distributions (temperature 1) at those positions",
            "agreement": "share of positions where blind and measured chose the same token (same prompt and seed)",
            "recorded vs recomputed": "R recorded during measured generation against R recomputed on the same "
                                      f"text; a difference above {RECORDED_TOLERANCE:g} means measuring changed the "
                                      "computation",
            "order": "blind first for even-numbered samples, measured first for odd (counterbalanced)",
        },
        "agreement": {"mean": agreement, "identical_samples": identical, "n": n, "max_recorded_vs_recomputed_r": worst,
                      "tolerance": RECORDED_TOLERANCE, "computation_changed": changed,
                      "model_dtype": str(precision).removeprefix("torch.")},
        "comparisons": comparisons,
        "spread": spreads,
        "variance_permutation": variance_perm,
        "family": [{k: v for k, v in e.items()} for e in entries],
        "holm_family_size": family,
        "detected": bool(detected),
        "power": power,
        "verdict": verdict,
        "tables": tables,
        "distributions": {METRIC_LABELS[m]: {mode: [v for v in values[m][mode] if v is not None]
                                             for mode in ("blind", "measured")}
                          for m in protocol.metrics},
        "token_r": tokens,
        "scatter": scatter,
        "per_sample": [{"prompt": r["prompt"], "seed": r["seed"], "agreement": r["agreement"],
                        **{f"{m}_{mode}": values[m][mode][k] for m in protocol.metrics
                           for mode in ("blind", "measured")}}
                       for k, r in enumerate(rows)],
        "samples": [{"prompt": texts[r["prompt"]], "seed": r["seed"],
                     "blind": subject.tokenizer.decode(r["blind"]["ids"]),
                     "measured": subject.tokenizer.decode(r["measured"]["ids"])} for r in rows[:3]],
    }


