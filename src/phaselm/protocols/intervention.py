"""Intervention protocol: each condition vs none, paired by prompt and seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import PhaseLMError
from ..interventions import intervene, structure
from .scoring import compare, count_phrase, holm_family, per_token_r, power_statement
from .spec import METRIC_LABELS, Condition, Protocol
from .subject import (
    Subject,
    check_prompts,
    forward_many,
    generate_many,
    pairing_units,
    perplexity_many,
    producing_positions,
    protocol_prompts,
)


def _kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    from ..evals import kl_divergence

    return float(kl_divergence(F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)).mean())


def _mean_r(orders: torch.Tensor | None, window: slice) -> float | None:
    r = per_token_r(orders, window)
    return float(r.mean()) if r is not None and len(r) else None


def validate_conditions(subject: Subject, conditions: Sequence[Condition], calibration) -> list[dict]:
    """Every condition against the model (layers, branches, values) before any work; its records."""
    records = []
    for condition in conditions:
        with intervene(subject.target, *condition.interventions, calibration=calibration) as applied:
            records.append({"name": condition.name, "interventions": applied.to_json()})
    return records


def run_intervention(protocol: Protocol, subject: Subject, reference: Subject | None = None, progress=None) -> dict:
    """Generate under each condition and under none with shared seeds, compare each metric paired
    per sample (Holm over the family); returns the results dict (tables, comparisons, verdict)."""
    from ..metrics import text_metrics

    info = structure(subject.target)
    if "mean_r" in protocol.metrics and not info.sites:
        raise PhaseLMError(f"[metrics] mean_r needs a model with oscillators; this {info.name} model has none — drop "
                           "mean_r")
    texts = protocol_prompts(protocol, subject)
    check_prompts(subject, texts, protocol.max_new_tokens)
    calibration = [subject.tokenizer.encode(t) for t in texts]
    records = validate_conditions(subject, protocol.conditions, calibration)
    if reference is not None:
        ref_vocab = reference.model.get_input_embeddings().num_embeddings
        vocab = subject.model.get_input_embeddings().num_embeddings
        if ref_vocab != vocab:
            raise PhaseLMError(f"[model] reference has a vocabulary of {ref_vocab}, the model {vocab}; the reference "
                               "must share the tokenizer")
    judge = reference or subject
    units = pairing_units(protocol, len(texts))
    advance = progress or (lambda *_: None)
    advance(0)
    metrics = protocol.metrics
    prompts = calibration
    # per unit (prompt i, seed) → values; units are filled seed by seed, reported prompts outer
    index = {unit: k for k, unit in enumerate(units)}
    base: dict[str, list] = {m: [None] * len(units) for m in metrics}
    forced: list[dict[str, list]] = [{m: [None] * len(units) for m in metrics} for _ in protocol.conditions]
    shown: dict[int, dict] = {}

    def score(values: dict, k: int, ids: list[int], p: list[int], orders, kl: float | None, ppl: float | None) -> None:
        text = text_metrics(ids)
        for m in metrics:
            if m == "kl":
                values[m][k] = kl
            elif m == "perplexity":
                values[m][k] = ppl
            elif m == "mean_r":
                values[m][k] = _mean_r(orders, producing_positions(len(p), len(ids)))
            else:
                values[m][k] = text[m]

    for seed in protocol.seeds:
        unforced = generate_many(subject, prompts, seed, protocol)
        full_u = [p + ids for p, ids in zip(prompts, unforced)]
        scored_u = forward_many(subject, full_u)
        ppl_u = perplexity_many(judge, prompts, unforced)
        logits_u = [logits[producing_positions(len(p), len(ids))]
                    for (logits, _), p, ids in zip(scored_u, prompts, unforced)]
        for i, (p, ids) in enumerate(zip(prompts, unforced)):
            score(base, index[(i, seed)], ids, p, scored_u[i][1], 0.0, ppl_u[i])
        del scored_u
        for j, condition in enumerate(protocol.conditions):
            with intervene(subject.target, *condition.interventions, calibration=calibration, seed=seed):
                ids_c = generate_many(subject, prompts, seed, protocol)
                along_u = forward_many(subject, full_u)
                scored_c = forward_many(subject, [p + ids for p, ids in zip(prompts, ids_c)])
            ppl_c = perplexity_many(judge, prompts, ids_c)
            for i, (p, ids) in enumerate(zip(prompts, ids_c)):
                window = producing_positions(len(p), len(unforced[i]))
                kl = _kl(logits_u[i], along_u[i][0][window]) if unforced[i] else None
                score(forced[j], index[(i, seed)], ids, p, scored_c[i][1], kl, ppl_c[i])
                if index[(i, seed)] < 3:
                    sample = shown.setdefault(index[(i, seed)], {"prompt": texts[i], "seed": seed,
                                                                 "unforced": subject.tokenizer.decode(unforced[i])})
                    sample[condition.name] = subject.tokenizer.decode(ids)
        advance(len(prompts))
    shown = [shown[k] for k in sorted(shown)]
    seed0 = protocol.seeds[0]
    comparisons = [{m: compare(forced[j][m], base[m], protocol, seed0) for m in metrics}
                   for j in range(len(protocol.conditions))]
    family = holm_family([c for row in comparisons for c in row.values()])
    for row in comparisons:
        for c in row.values():
            if c is not None:
                c["significant"] = c["p_holm"] is not None and c["p_holm"] <= protocol.alpha
    n = len(units)
    power = power_statement(n, protocol, family)
    table_rows = []
    for condition, row in zip(protocol.conditions, comparisons):
        for m in metrics:
            c = row[m]
            if c is None:
                table_rows.append([condition.name, METRIC_LABELS[m], 0] + [None] * 8)
                continue
            table_rows.append([condition.name, METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"],
                               [c["ci_low"], c["ci_high"]], c["cohens_dz"], c["p"], c["p_holm"], c["significant"]])
    detected = [(cond.name, m) for cond, row in zip(protocol.conditions, comparisons)
                for m, c in row.items() if c and c["significant"]]
    verdict = (f"{len(detected)} of {family} condition × metric comparisons differ from the unforced model "
               f"(Holm, α = {protocol.alpha:g}, n = {n} pairs)"
               + (": " + "; ".join(f"{c} — {METRIC_LABELS[m]}" for c, m in detected) if detected else "")
               + f". At n = {n} a paired t-test detects |d_z| ≥ {power['min_detectable_dz']:.3g} with "
                 f"{protocol.power:.0%} power.")
    reference_name = protocol.reference or "the unforced model"
    return {
        "n": n,
        "n_prompts": len(texts),
        "conditions": ["none"] + [c.name for c in protocol.conditions],
        "interventions": records,
        "definitions": {
            "pairing": "each condition and the unforced model continue the same prompt with the same seed",
            "kl": "mean over the generated positions of KL(p_unforced ‖ p_forced), both teacher-forced along the "
                  "unforced continuation (compared with 0)",
            "perplexity": f"of each continuation given its prompt, under {reference_name} at temperature 1",
            "repetition": "1 − distinct-4 of the continuation",
            "mean_r": "R of the positions that produced the tokens, mean over oscillator sites and tokens",
            "calibration": "mean_output / noise_output take the mean and std over every position of the protocol's "
                           "prompts",
        },
        "reference": reference_name,
        "comparisons": [{"condition": c.name, **{m: row[m] for m in metrics}}
                        for c, row in zip(protocol.conditions, comparisons)],
        "holm_family_size": family,
        "power": power,
        "detected": bool(detected),
        "verdict": verdict,
        "tables": [{
            "title": f"Each condition vs none (n = {n} pairs: {count_phrase(len(texts), 'prompt')} × "
                     f"{count_phrase(len(protocol.seeds), 'seed')}; Holm over {family} tests)",
            "header": ["condition", "metric", "n", "none", "condition mean", "Δ mean", f"{protocol.ci_level:.0%} CI",
                       "d_z", f"p ({protocol.test})", "p Holm", "significant"],
            "rows": table_rows,
        }, {
            "title": f"Power (n = {n})",
            "header": ["quantity", "n", "value"],
            "rows": [[f"smallest |d_z| detectable at {protocol.power:.0%} power (α = {protocol.alpha:g})", n,
                      power["min_detectable_dz"]],
                     [f"… at the Holm-strictest level α/{family}", n, power["min_detectable_dz_holm_strictest"]]],
        }],
        "distributions": {METRIC_LABELS[m]: {"none": [v for v in base[m] if v is not None],
                                             **{c.name: [v for v in forced[j][m] if v is not None]
                                                for j, c in enumerate(protocol.conditions)}}
                          for m in metrics if m != "kl"}
                         | ({METRIC_LABELS["kl"]: {c.name: [v for v in forced[j]["kl"] if v is not None]
                                                    for j, c in enumerate(protocol.conditions)}}
                            if "kl" in metrics else {}),
        "per_sample": {"units": [{"prompt": i, "seed": s} for i, s in units], "none": base,
                       "conditions": {c.name: forced[j] for j, c in enumerate(protocol.conditions)}},
        "samples": shown,
    }


