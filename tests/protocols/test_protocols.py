"""Experiment protocols on tiny models: each kind end to end, hashing and refusal of a changed
protocol, a planted effect found and a null not, and every bad input one line with exit 2."""

from __future__ import annotations

import contextlib
import hashlib
import json
import string
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
import torch.nn.functional as F

from cli_helpers import assert_one_line_error, run_cli
from eval_helpers import EXAMPLE_PROTOCOLS, FAST_RESAMPLING
from phaselm import protocols as P
from phaselm import statistics as st
from phaselm.config import tomllib
from phaselm.data import CharTokenizer, load_text
from phaselm.errors import PhaseLMError
from phaselm.interventions import Intervention, intervene

# One intra-op thread for this module (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def spec(kind: str, model: Path, **sections) -> dict:
    """A small valid protocol of ``kind`` as a dict; ``sections`` replace or add tables."""
    base = {
        "protocol": {"kind": kind, "name": f"tiny {kind}"},
        "model": {"path": str(model), "device": "cpu"},
        "design": {"seeds": [0, 1], "samples_per_condition": 6},
        "statistics": {"test": "t", "alpha": 0.05, **FAST_RESAMPLING},
    }
    if kind in ("observation", "intervention"):
        base["prompts"] = {"source": "validation", "count": 3, "tokens": 12}
        base["decoding"] = {"max_new_tokens": 6, "temperature": 1.0}
    if kind == "observation":
        base["metrics"] = {"names": ["r_mean", "r_std", "r_range", "u_mean"]}
    elif kind == "intervention":
        base["conditions"] = [{"intervention": "sync"}, {"name": "null", "intervention": "k_scale=1"},
                              {"intervention": "ablate=bank", "layers": [1]}]
        base["metrics"] = {"names": list(P.METRICS["intervention"])}
    else:
        base["design"]["samples_per_condition"] = 8
        base["grid"] = {"layers": ["all", 1], "k_scale": [0.0, 1.0], "oscillators": ["all", 4]}
        base["evaluation"] = {"windows": 4, "seq_len": 16}
        base["metrics"] = {"names": ["loss", "r_mean"]}
    for name, table in sections.items():
        if table is None:
            base.pop(name, None)
        else:
            base[name] = table
    return base


def write(path: Path, data: dict, header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(data), encoding="utf-8")
    return path






def assert_every_table_states_n(result: dict):
    assert result["tables"]
    for table in result["tables"]:
        assert "n = " in table["title"] and "n" in table["header"], table["title"]


# ---------------------------------------------------------------- the protocol file


def test_load_protocol_reads_and_hashes(runs, tmp_path):
    file = write(tmp_path / "p.toml", spec("intervention", runs["kssm"]),
                 header="# a comment is part of the protocol\n")
    protocol = P.load_protocol(file)
    assert protocol.sha256 == hashlib.sha256(file.read_bytes()).hexdigest() == P.sha256_of(file)
    assert protocol.kind == "intervention" and protocol.samples_per_condition == 6 and protocol.seeds == [0, 1]
    assert [c.name for c in protocol.conditions] == ["sync @ layers all", "null", "ablate bank @ layers 1"]
    assert protocol.conditions[2].interventions == (Intervention("ablate", "bank", (1,)),)
    grid = P.load_protocol(write(tmp_path / "g.toml", spec("ablation_grid", runs["kssm"])))
    assert len(P.grid_cells(grid)) == 8 and grid.grid["u_regulation"] == [True]


def _without(data: dict, section: str, key: str) -> dict:
    data[section] = {k: v for k, v in data[section].items() if k != key}
    return data


BAD_FILES = [
    ("missing fields", lambda d: _without(_without(d, "model", "path"), "statistics", "alpha"),
     "is missing [model] path, [statistics] alpha"),
    ("missing kind", lambda d: _without(d, "protocol", "kind"), "is missing [protocol] kind"),
    ("missing conditions", lambda d: {k: v for k, v in d.items() if k != "conditions"}, "is missing [[conditions]]"),
    ("unknown kind", lambda d: {**d, "protocol": {"kind": "observaton"}}, "did you mean observation?"),
    ("unknown key", lambda d: {**d, "decoding": {**d["decoding"], "temprature": 1.0}},
     "unknown key 'temprature' in [decoding]; did you mean temperature?"),
    ("unknown section", lambda d: {**d, "metric": {}}, "unknown section [metric]"),
    ("unknown intervention", lambda d: {**d, "conditions": [{"intervention": "snyc"}]},
     "unknown intervention kind 'snyc'; choose one of sync, disorder, pin"),
    ("pinned R out of range", lambda d: {**d, "conditions": [{"intervention": "pin=1.5"}]},
     "pinned R must be in [0, 1], got 1.5"),
    ("n below 2", lambda d: {**d, "design": {"seeds": [0], "samples_per_condition": 1}},
     "a statistical test needs n ≥ 2"),
    ("n disagrees", lambda d: {**d, "design": {"seeds": [0, 1], "samples_per_condition": 5}},
     "samples_per_condition = 5 but the design gives 3 prompts × 2 seeds = 6"),
    ("greedy with seeds", lambda d: {**d, "decoding": {"max_new_tokens": 6, "temperature": 0.0}}, "pseudo-replication"),
    ("unknown metric", lambda d: {**d, "metrics": {"names": ["kl", "perplexty"]}}, "did you mean perplexity?"),
    ("unknown test", lambda d: {**d, "statistics": {"test": "anova", "alpha": 0.05}},
     "choose one of t, wilcoxon, permutation"),
    ("wrong type", lambda d: {**d, "design": {"seeds": [0, 1], "samples_per_condition": "six"}},
     "[design] samples_per_condition must be an integer"),
    ("reference outside intervention", lambda d: {**spec("observation", Path("m")),
                                                  "model": {"path": "m", "reference": "r"}},
     "[model] reference applies to intervention protocols only"),
    ("section of another kind", lambda d: {**spec("ablation_grid", Path("m")), "decoding": {"max_new_tokens": 6}},
     "section [decoding] does not apply to a ablation_grid protocol"),
    ("oscillators not a count", lambda d: {**spec("ablation_grid", Path("m")), "grid": {"oscillators": [2.5]}},
     "whole number"),
]


@pytest.mark.parametrize("mutate, match", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_protocol_files_are_one_line_errors(runs, tmp_path, raises_phaselm, mutate, match):
    file = write(tmp_path / "bad.toml", mutate(spec("intervention", runs["kssm"])))
    with raises_phaselm(None) as info:
        P.load_protocol(file)
    assert match in str(info.value)


# ---------------------------------------------------------------- observation


@pytest.fixture(scope="module")
def observation(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("observation")
    file = write(root / "obs.toml", spec("observation", runs["kssm"],
                                         statistics={"test": "permutation", "alpha": 0.05, **FAST_RESAMPLING}))
    out = root / "out"
    return file, out, P.run_protocol(file, out, progress=False)


def test_observation_on_a_tiny_kssm(observation):
    file, out, _result = observation
    for name in ("results.json", "results.md", "results.png", "protocol.toml"):
        assert (out / name).is_file(), name
    assert (out / "protocol.toml").read_bytes() == file.read_bytes()
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert saved["n"] == 6 and saved["conditions"] == ["blind", "measured"]
    agreement = saved["agreement"]
    assert agreement["mean"] == 1.0 and agreement["identical_samples"] == 6 and not agreement["computation_changed"]
    assert agreement["max_recorded_vs_recomputed_r"] < 1e-4  # R recorded while generating = R of a full forward
    assert not saved["detected"] and "No blind–measured difference is detectable" in saved["verdict"]
    assert "did not change the computation" in saved["verdict"]
    # identical computation: every difference is exactly zero, every p-value 1
    assert all(c["mean_diff"] == 0.0 and c["p"] == 1.0 for c in saved["comparisons"].values())
    assert saved["holm_family_size"] == 4 * 6  # 4 metrics × (3 mean tests + 3 spread tests)
    power = saved["power"]
    assert power["n"] == 6 and power["min_detectable_dz"] == pytest.approx(st.min_detectable_effect(6, 0.05, 0.8))
    assert power["min_detectable_variance_ratio"] > 1
    assert_every_table_states_n(saved)
    assert set(saved["distributions"]) == {"R mean", "R std (within sample)", "R range (max − min within sample)",
                                           "U mean"}
    assert len(saved["scatter"]["blind"]) == 6 * 6 and all(0 <= r <= 1 for r, _ in saved["scatter"]["blind"])
    md = (out / "results.md").read_text()
    assert saved["protocol"]["sha256"] in md and "| R mean | 6 |" in md


def test_observation_r_is_the_r_of_the_producing_positions(observation, runs):
    """Recompute one sample by hand: its R mean is R at the positions that produced its tokens."""
    file, _, result = observation
    protocol = P.load_protocol(file)
    subject = P.load_subject(runs["kssm"], "cpu")
    text = P.subject.protocol_prompts(protocol, subject)[0]
    sample = P.generate_sample(subject, text, 0, protocol)
    with torch.no_grad():
        out = subject.model(torch.tensor([sample.prompt_ids + sample.ids]))
    p = len(sample.prompt_ids)
    r = out.orders[0, :, p - 1 : p - 1 + len(sample.ids)].mean(0)
    first = result["per_sample"][0]
    assert (first["prompt"], first["seed"]) == (0, 0)
    assert first["r_mean_blind"] == pytest.approx(float(r.mean()), abs=1e-6)
    assert first["r_range_measured"] == pytest.approx(float(r.max() - r.min()), abs=1e-6)


def test_a_planted_observer_effect_is_flagged(runs, tmp_path, monkeypatch):
    """Sabotage measured mode so that measuring pins R: the protocol says the computation changed."""
    import phaselm.generation

    real_measure = phaselm.generation.measure

    @contextlib.contextmanager
    def meddling(model):
        with intervene(model, Intervention("pin", 0.99)), real_measure(model) as m:
            yield m

    monkeypatch.setattr(phaselm.generation, "measure", meddling)  # where the sampling loop looks it up
    file = write(tmp_path / "obs.toml", spec("observation", runs["kssm"]))
    result = P.run_protocol(file, tmp_path / "out", progress=False)
    assert result["agreement"]["computation_changed"]
    assert result["agreement"]["max_recorded_vs_recomputed_r"] > 0.05
    assert "measuring CHANGED the computation" in result["verdict"]


def observe_grafted_mamba(tiny_model, tmp_path, coupling: float, dtype: torch.dtype = torch.float32) -> dict:
    """The observation protocol (2 prompts × 2 seeds) on a tiny Mamba, its backbone in ``dtype``,
    with a float32 Phase Core in recurrent mode grafted on."""
    from phaselm.graft import graft
    from phaselm.phase_core import PhaseCoreConfig

    model = tiny_model("mamba").to(dtype)
    handle = graft(model, PhaseCoreConfig(n_oscillators=8, alpha_init=2.0, coupling=coupling, mode="recurrent"))
    tokenizer = CharTokenizer((string.ascii_letters + string.digits + " .")[:64])
    subject = P.Subject(model, tokenizer, handle, corpus=None, path="tiny mamba")
    data = spec("observation", Path("unused"), prompts={"source": "list", "texts": ["To be", "or not"]},
                design={"seeds": [0, 1], "samples_per_condition": 4})
    try:
        return P.run_protocol(write(tmp_path / "obs.toml", data), tmp_path / "out", subject=subject, progress=False)
    finally:
        handle.remove()


def test_observation_on_a_tiny_grafted_hf_model(tiny_model, tmp_path):
    result = observe_grafted_mamba(tiny_model, tmp_path, coupling=1.0)
    assert result["model"]["type"] == "mamba (grafted Phase Core)" and result["n"] == 4
    assert result["agreement"]["identical_samples"] == 4 and result["agreement"]["max_recorded_vs_recomputed_r"] < 1e-4
    assert not result["detected"] and "computes in" not in result["verdict"]


def test_observation_names_reduced_precision_when_recorded_and_recomputed_r_differ(tiny_model, tmp_path):
    """A bf16 backbone rounds differently when decoding than in the full-sequence pass (on the
    GPU's H200 run: |ΔR| 0.088 with identical tokens): the verdict says so instead of leaving
    "CHANGED" unexplained. The recurrent core carries its phases along the sequence, so a
    rounding difference persists."""
    result = observe_grafted_mamba(tiny_model, tmp_path, coupling=2.0, dtype=torch.bfloat16)
    assert result["agreement"]["model_dtype"] == "bfloat16"
    assert result["agreement"]["identical_samples"] == 4
    assert result["agreement"]["max_recorded_vs_recomputed_r"] > 1e-3  # the float32 model: < 1e-4 (test above)
    assert "computes in bfloat16" in result["verdict"] and "run the model in float32" in result["verdict"]


# ---------------------------------------------------------------- hashing and refusal


def test_results_never_attach_to_a_changed_protocol(observation, raises_phaselm, tmp_path):
    file, out, _ = observation
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert P.check_out_dir(out, P.load_protocol(file)) == out  # the same protocol may run again there
    changed = tmp_path / "changed.toml"
    changed.write_bytes(file.read_bytes() + b"\n# one more line\n")
    with raises_phaselm(r"holds results of a different protocol \(sha256 [0-9a-f]{12}…, this file is [0-9a-f]{12}…\)"):
        P.run_protocol(changed, out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with raises_phaselm("is not empty and holds no protocol results"):
        P.run_protocol(changed, tmp_path / "busy", progress=False)


# ---------------------------------------------------------------- intervention


@pytest.fixture(scope="module")
def intervention(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("intervention")
    data = spec("intervention", runs["kssm"])
    data["model"]["reference"] = str(runs["gpt"])
    file = write(root / "iv.toml", data)
    return file, P.run_protocol(file, root / "out", progress=False)


def test_intervention_protocol_finds_the_planted_effect_and_not_the_null(intervention):
    _, result = intervention
    by_name = {c["condition"]: c for c in result["comparisons"]}
    sync = by_name["sync @ layers all"]
    assert sync["mean_r"]["mean_x"] == pytest.approx(1.0, abs=1e-5) and sync["mean_r"]["significant"]
    assert sync["kl"]["mean_x"] > 0 and sync["kl"]["significant"]
    null = by_name["null"]  # k_scale = 1: bit-exact, so nothing may differ
    assert all(null[m]["mean_diff"] == 0.0 and null[m]["p_holm"] == 1.0 and not null[m]["significant"]
               for m in P.METRICS["intervention"])
    assert result["holm_family_size"] == 3 * 7 and result["n"] == 6
    assert result["interventions"][2]["interventions"][0] == {"kind": "ablate", "value": "bank", "layers": [1]}
    assert_every_table_states_n(result)


def test_intervention_metrics_by_hand(intervention, runs):
    """Unit 0 (prompt 0, seed 0) of the sync condition: KL along the unforced text and the
    perplexity of the forced text under the reference model, recomputed directly."""
    from phaselm.evals import sample

    file, result = intervention
    protocol = P.load_protocol(file)
    subject, reference = P.load_subject(runs["kssm"], "cpu"), P.load_subject(runs["gpt"], "cpu")
    prompts = [subject.tokenizer.encode(t) for t in P.subject.protocol_prompts(protocol, subject)]
    # K-SSM decodes the prompts of one seed as a batch, with the recurrent cache
    batch = torch.tensor(prompts)
    unforced = sample(subject.model, batch, 6, 1.0, None, 0)[0][0].tolist()
    with intervene(subject.model, Intervention("sync")):
        forced = sample(subject.model, batch, 6, 1.0, None, 0)[0][0].tolist()
    assert P.generate_many(subject, prompts, 0, protocol)[0] == unforced
    p, m = len(prompts[0]), len(unforced)
    ids_u = torch.tensor([prompts[0] + unforced])
    with torch.no_grad():
        logp = F.log_softmax(subject.model(ids_u).logits[0, p - 1 : p - 1 + m].float(), -1)
        with intervene(subject.model, Intervention("sync")):
            logq = F.log_softmax(subject.model(ids_u).logits[0, p - 1 : p - 1 + m].float(), -1)
        kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
        ids_f = torch.tensor([prompts[0] + forced])
        ref = F.log_softmax(reference.model(ids_f).logits[0, p - 1 : p - 1 + len(forced)].float(), -1)
        ppl = float(torch.exp(-ref.gather(-1, torch.tensor(forced)[:, None]).mean()))
    per = result["per_sample"]["conditions"]["sync @ layers all"]
    assert per["kl"][0] == pytest.approx(kl, rel=1e-4)
    assert per["perplexity"][0] == pytest.approx(ppl, rel=1e-4)
    assert result["reference"] == str(runs["gpt"])


def test_intervention_protocol_on_a_grafted_hf_model(tiny_model, tmp_path):
    from phaselm.graft import graft
    from phaselm.phase_core import PhaseCoreConfig

    model = tiny_model("mamba")
    handle = graft(model, PhaseCoreConfig(n_oscillators=8, alpha_init=2.0, coupling=1.0))
    subject = P.Subject(model, CharTokenizer((string.ascii_letters + string.digits + " .")[:64]), handle, corpus=None)
    data = spec("intervention", Path("unused"), prompts={"source": "list", "texts": ["To be", "or not"]},
                design={"seeds": [0, 1], "samples_per_condition": 4}, metrics={"names": ["kl", "mean_r", "distinct_1"]},
                conditions=[{"intervention": "pin=0.2"}, {"intervention": "ablate=phase_core"}])
    result = P.run_protocol(write(tmp_path / "iv.toml", data), tmp_path / "out", subject=subject, progress=False)
    pin, off = result["comparisons"]
    assert pin["mean_r"]["mean_x"] == pytest.approx(0.2, abs=1e-5) and pin["kl"]["mean_x"] > 0
    assert off["mean_r"] is None  # no core, no R: the comparison is left out, not invented
    assert off["kl"]["mean_x"] > 0 and result["holm_family_size"] == 5
    handle.remove()


# ---------------------------------------------------------------- ablation grid


def test_ablation_grid_on_a_tiny_kssm(runs, tmp_path):
    file = write(tmp_path / "grid.toml", spec("ablation_grid", runs["kssm"]))
    result = P.run_protocol(file, tmp_path / "out", progress=False)
    assert result["n"] == 8 and len(result["cells"]) == 8 and "evaluation-time" in result["note"]
    # the as-trained loss is the mean CE of the windows, computed directly
    subject = P.load_subject(runs["kssm"], "cpu")
    val = subject.validation_ids()
    losses = []
    with torch.no_grad():
        for _, start in result["windows"]["starts"]:
            x, y = val[start : start + 16], val[start + 1 : start + 17]
            losses.append(float(F.cross_entropy(subject.model(x[None]).logits[0].float(), y)))
    assert result["as_trained"]["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    by_cell = {c["cell"]: c for c in result["comparisons"]}
    unchanged = by_cell["layers all · K×1 · oscillators all · U on"]
    assert unchanged["loss"]["mean_diff"] == 0.0 and unchanged["loss"]["p_holm"] == 1.0
    uncoupled = by_cell["layers all · K×0 · oscillators all · U on"]
    assert uncoupled["r_mean"]["mean_diff"] != 0.0
    assert result["holm_family_size"] == 8 * 2
    assert_every_table_states_n(result)


def test_grid_ablates_fusion_branches_as_the_model_does(corpus, tmp_path):
    from phaselm.models.fusion import FusionConfig, FusionForCausalLM

    tokenizer = CharTokenizer.from_text(load_text(corpus))
    torch.manual_seed(0)
    model = FusionForCausalLM(FusionConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, n_layers=2,
                                           rwkv_head_dim=16,
                                           rwkv_mix_rank=4, rwkv_decay_rank=8, rwkv_chunk_size=4, mamba_state_size=8,
                                           mamba_head_dim=16, mamba_chunk_size=8)).eval()
    subject = P.Subject(model, tokenizer, corpus=str(corpus), path="tiny fusion")
    data = spec("ablation_grid", Path("unused"), grid={"ablate": ["none", "mamba", "rwkv"]},
                metrics={"names": ["loss"]},
                design={"seeds": [0], "samples_per_condition": 3}, evaluation={"windows": 3, "seq_len": 16})
    result = P.run_protocol(write(tmp_path / "g.toml", data), tmp_path / "out", subject=subject, progress=False)
    val = subject.validation_ids()
    x = torch.stack([val[s : s + 16] for _, s in result["windows"]["starts"]])
    y = torch.stack([val[s + 1 : s + 17] for _, s in result["windows"]["starts"]])
    with torch.no_grad():
        own = F.cross_entropy(model(x, ablate="mamba").logits.transpose(1, 2), y, reduction="none").mean(-1)
    cells = {c["cell"]: c for c in result["comparisons"]}
    ablated = cells["layers all · K×1 · oscillators all · U on · ablate mamba"]
    assert ablated["loss"]["mean_x"] == pytest.approx(float(own.mean()), rel=1e-6)
    assert result["model"]["type"] == "phaselm_fusion" and len(result["cells"]) == 3
    with pytest.raises(PhaseLMError, match="no branch 'bank'; its branches are: rwkv, mamba, fusion_gate, mlp"):
        P.run_protocol(write(tmp_path / "g2.toml", {**data, "grid": {"ablate": ["bank"]}}), tmp_path / "out2",
                       subject=subject, progress=False)


def test_grid_u_regulation_is_training_time_on_a_graft(tiny_model, tmp_path, raises_phaselm):
    from phaselm.graft import graft

    model = tiny_model("mamba")
    handle = graft(model)
    subject = P.Subject(model, CharTokenizer((string.ascii_letters + string.digits + " .")[:64]), handle, corpus=None)
    data = spec("ablation_grid", Path("unused"), grid={"u_regulation": [True, False]})
    with raises_phaselm("'unclamp' needs K-SSM banks"):
        P.run_protocol(write(tmp_path / "g.toml", data), tmp_path / "out", subject=subject, progress=False)
    assert not (tmp_path / "out").exists()
    handle.remove()


# ---------------------------------------------------------------- the report hook


def test_write_protocol_report_rebuilds_from_results_json(observation):
    _, out, _ = observation
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").unlink()
    (out / "results.png").unlink()
    written = P.write_protocol_report(out, results)
    assert out / "results.md" in written and (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Blind vs measured, per sample (n = 6 pairs" in (out / "results.md").read_text()


# ---------------------------------------------------------------- the command line


def test_cli_runs_a_protocol(runs, tmp_path, capsys):
    data = spec("ablation_grid", runs["kssm"], grid={"k_scale": [0.5]},
                design={"seeds": [0], "samples_per_condition": 4})
    file = write(tmp_path / "grid.toml", data)
    code, out, err = run_cli(capsys, "protocol", "run", str(file), "--out", str(tmp_path / "out"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["protocol"]["sha256"] == P.sha256_of(file) and result["command"].startswith("phaselm ")
    code, out, err = run_cli(capsys, "protocol", "check", str(file))
    assert code == 0 and P.sha256_of(file) in out and "n = 4 per condition" in out


CLI_BAD = [
    ("missing fields", lambda d: _without(d, "decoding", "temperature"), "is missing [decoding] temperature"),
    ("unknown intervention", lambda d: {**d, "conditions": [{"intervention": "disorded"}]}, "did you mean disorder?"),
    ("pinned R", lambda d: {**d, "conditions": [{"intervention": "pin=-0.2"}]}, "pinned R must be in [0, 1]"),
    ("branch the model lacks", lambda d: {**d, "conditions": [{"intervention": "ablate=mamba"}]},
     "this kssm model has no branch 'mamba'; its branches are: bank, mixer, mlp"),
    ("layer out of range", lambda d: {**d, "conditions": [{"intervention": "sync", "layers": [5]}]},
     "layer 5 is out of range"),
    ("n below 2", lambda d: {**d, "design": {"seeds": [0], "samples_per_condition": 1}}, "needs n ≥ 2"),
]


@pytest.mark.parametrize("mutate, match", [b[1:] for b in CLI_BAD], ids=[b[0] for b in CLI_BAD])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, mutate, match):
    file = write(tmp_path / "bad.toml", mutate(spec("intervention", runs["kssm"])))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "protocol", "run", str(file), "--out", str(out))
    assert_one_line_error(code, err, match)
    assert not out.exists()


def test_cli_refuses_a_changed_protocol(observation, tmp_path, capsys):
    file, out, _ = observation
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data = tomllib.loads(file.read_text(encoding="utf-8"))
    data["statistics"]["alpha"] = 0.01  # a changed test level is a changed protocol
    changed = write(tmp_path / "obs.toml", data)
    code, _, err = run_cli(capsys, "protocol", "run", str(changed), "--out", str(out))
    assert_one_line_error(code, err, "holds results of a different protocol")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, _, err = run_cli(capsys, "protocol", "run", str(tmp_path / "nothing.toml"))
    assert_one_line_error(code, err, "does not exist")


# ---------------------------------------------------------------- the example files


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLE_PROTOCOLS.glob("*.toml")))
def test_example_protocols_are_valid_and_say_how_to_run(name, capsys):
    file = EXAMPLE_PROTOCOLS / name
    protocol = P.load_protocol(file)
    assert protocol.samples_per_condition >= 50
    head = file.read_text(encoding="utf-8").split("\n[", 1)[0]
    assert f"phaselm protocol run protocols/{name}" in head
    code, _out, err = run_cli(capsys, "protocol", "check", str(file))
    assert code == 0, err


# ---------------------------------------------------------------- evals as designs of the one runner


def test_an_eval_runs_as_a_design_from_flags_or_a_file(runs, tmp_path):
    """`phaselm eval temperature`'s flags and a TOML file with the same [eval] table build the
    same protocol; the runner gives the numbers the eval function gives on the same prompts."""
    from phaselm import evals

    flags = P.temperature_protocol(runs["kssm"], "0,1.0", prompts=3, prompt_tokens=6, max_new_tokens=4)
    assert flags.kind == "temperature_sweep" and P.design_of(flags.kind).output == "temperature"
    from_flags = P.run_protocol(flags, tmp_path / "a", progress=False)
    file = write(tmp_path / "t.toml", {"protocol": {"kind": "temperature_sweep"}, "model": {"path": str(runs["kssm"])},
                                       "eval": {"temperatures": [0.0, 1.0], "prompts": 3, "prompt_tokens": 6,
                                                "max_new_tokens": 4}})
    from_file = P.run_protocol(file, tmp_path / "b", progress=False)
    subject = evals.load_subject(runs["kssm"], device="cpu")
    prompts = evals.validation_prompts(subject.validation_ids(), 3, 6)
    direct = evals.temperature_sweep(subject.model, subject.tokenizer, prompts, [0.0, 1.0], max_new_tokens=4,
                                     progress=False)
    for result in (from_flags, from_file):
        assert [r["metrics"] for r in result["rows"]] == [r["metrics"] for r in direct["rows"]]
        assert [r["sample"] for r in result["rows"]] == [r["sample"] for r in direct["rows"]]
    assert json.loads((tmp_path / "a" / "temperature.json").read_text())["rows"] == from_flags["rows"]
    assert (tmp_path / "b" / "temperature.png").is_file()
    with pytest.raises(PhaseLMError, match=r"already holds temperature\.json"):
        P.run_protocol(flags, tmp_path / "a", progress=False)


def test_eval_design_files_are_checked(runs, tmp_path):
    base = {"protocol": {"kind": "temperature_sweep"}, "model": {"path": str(runs["kssm"])}}
    with pytest.raises(PhaseLMError, match=r"unknown key 'prompt' in \[eval\].*did you mean prompts"):
        P.read_protocol(write(tmp_path / "a.toml", {**base, "eval": {"prompt": 3}}))
    with pytest.raises(PhaseLMError, match=r"section \[design\] does not apply to a temperature_sweep protocol"):
        P.read_protocol(write(tmp_path / "b.toml", {**base, "design": {"seeds": [0]}}))
    with pytest.raises(PhaseLMError, match="at least 2 prompts"):
        P.read_protocol(write(tmp_path / "c.toml", {**base, "eval": {"prompts": 1}}))
    with pytest.raises(PhaseLMError, match="did you mean clamp_sweep"):
        P.design_of("clamp_swep")
    protocol = P.read_protocol(write(tmp_path / "d.toml", {**base, "eval": {"prompts": 4}}))
    assert protocol.sha256 == hashlib.sha256((tmp_path / "d.toml").read_bytes()).hexdigest()
    assert protocol.settings["prompts"] == 4 and protocol.name == "d"
    assert set(P.RESULT_KINDS) == set(P.KINDS) and "fusion_diagnostics" in P.EVAL_KINDS


def test_protocol_run_command_runs_an_eval_design(runs, tmp_path, capsys):
    file = write(tmp_path / "corr.toml", {"protocol": {"kind": "order_loss_correlation"},
                                          "model": {"path": str(runs["kssm"])},
                                          "eval": {"batch_size": 2, "seq_len": 16, "batches": 1}})
    code, stdout, err = run_cli(capsys, "protocol", "run", str(file), "--out", str(tmp_path / "out"))
    assert code == 0, err
    data = json.loads((tmp_path / "out" / "correlation.json").read_text())
    assert data["tokens"] == 32 and "results: " in stdout and (tmp_path / "out" / "correlation.png").is_file()
    code, stdout, err = run_cli(capsys, "protocol", "check", str(file), "--json")
    assert code == 0 and json.loads(stdout)["settings"] == {"batch_size": 2, "seq_len": 16, "batches": 1}
