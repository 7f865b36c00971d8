"""The does_r_matter protocol (issue 15, point 3) on tiny models: end to end on a K-SSM run and a
grafted Phase Core, the verdict following the file's thresholds, Holm over the whole family,
the hash following a threshold, and bad input as one-line errors."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
import torch.nn.functional as F

from eval_helpers import EXAMPLE_PROTOCOLS, FAST_RESAMPLING, make_run
from phaselm import protocols as P
from phaselm import statistics as st
from phaselm.data import CharTokenizer
from phaselm.interventions import Intervention, intervene

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(model: Path, ablation_nats: float = 0.05, pin_dz: float = 0.5, **sections) -> dict:
    """A small valid does_r_matter protocol as a dict; ``sections`` replace tables."""
    base = {
        "protocol": {"kind": "does_r_matter", "name": "tiny does-R-matter"},
        "model": {"path": str(model), "device": "cpu"},
        "design": {"seeds": [0, 1, 2], "samples_per_condition": 12},
        "causal": {"ablate": "bank", "pin": 0.5},
        "evaluation": {"windows": 4, "seq_len": 16, "batch_size": 4},
        "thresholds": {"ablation_nats": ablation_nats, "pin_dz": pin_dz},
        "statistics": {"test": "t", "alpha": 0.05, **FAST_RESAMPLING},
    }
    base.update(sections)
    return base


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reliant(runs, corpus):
    """The tiny K-SSM with its Mamba mixer cut (out_proj frozen at 0), so the phase banks are its
    only path across tokens, trained 150 steps (~3 s): a model whose synchrony is used."""

    subject = P.load_subject(runs["kssm"], "cpu")
    for block in subject.model.blocks:
        block.mixer.out_proj.weight.data.zero_()
        block.mixer.out_proj.weight.requires_grad_(False)
    train_briefly(subject, corpus, steps=150)
    return subject


def reliant_spec(runs, **thresholds) -> dict:
    return spec(runs["kssm"], **thresholds, design={"seeds": [0, 1, 2], "samples_per_condition": 18},
                causal={"ablate": "bank", "pin": 0.1}, evaluation={"windows": 6, "seq_len": 32, "batch_size": 6})


@pytest.fixture(scope="module")
def declared(runs, reliant, tmp_path_factory):
    """The reliant model under the issue's own thresholds (0.05 nats, |d_z| ≥ 0.5, α = 0.05)."""
    root = tmp_path_factory.mktemp("declared")
    file = write(root / "p.toml", reliant_spec(runs))
    return file, P.run_protocol(file, root / "out", subject=reliant, progress=False)


def test_runs_end_to_end_on_a_tiny_kssm(runs, tmp_path):
    """The run directory as trained (nothing planted): every table, n and the family size."""
    file = write(tmp_path / "p.toml", spec(runs["kssm"]))
    result = P.run_protocol(file, tmp_path / "out", progress=False)
    assert result["protocol"]["sha256"] == P.sha256_of(file)
    assert result["n"] == 12 and result["holm_family_size"] == 9
    assert result["conditions"] == ["intact", "ablate bank", "pin R = 0.5", "sync (R = 1)", "disorder (R = 0)"]
    for table in result["tables"]:
        assert "n = " in table["title"] and "n" in table["header"]
    md = Path(result["files"]["md"]).read_text(encoding="utf-8")
    assert "Synchrony is" in md and "Pre-declared thresholds" in md and "p Holm" in md
    for row in result["comparisons"]:  # every condition moves this model's outputs (its R and u are spread)
        assert row["kl"]["mean_x"] > 0 and row["ce"]["n"] == 12


def test_numbers_are_the_model_s_own(declared, reliant):
    """Intact CE, pinned CE and KL of the first window recomputed by hand from the model."""
    _, result = declared
    val = reliant.validation_ids()
    seed, start = result["windows"]["starts"][0][0]
    x, y = val[start : start + 32][None], val[start + 1 : start + 33]
    with torch.no_grad():
        base = F.log_softmax(reliant.model(input_ids=x).logits[0].float(), -1)
        with intervene(reliant.model, Intervention("pin", 0.1)):
            pinned = F.log_softmax(reliant.model(input_ids=x).logits[0].float(), -1)
    assert seed == 0
    assert result["per_window"]["intact"][0] == pytest.approx(float(F.nll_loss(base, y)), rel=1e-5)
    assert result["per_window"]["pin R = 0.1"]["ce"][0] == pytest.approx(float(F.nll_loss(pinned, y)), rel=1e-5)
    kl = float((base.exp() * (base - pinned)).sum(-1).clamp_min(0).mean())
    assert result["per_window"]["pin R = 0.1"]["kl"][0] == pytest.approx(kl, rel=1e-4)


def test_holm_is_applied_across_the_whole_family(declared):
    _, result = declared
    entries = [row[m] for row in result["comparisons"] for m in ("ce", "kl")]
    entries.append(result["r_loss_correlation"]["within_window_rho"])
    assert len(entries) == 9 and all(e is not None for e in entries)
    assert [e["p_holm"] for e in entries] == pytest.approx(st.holm([e["p"] for e in entries]))
    # across the family, not per condition: the smallest p is multiplied by 9
    smallest = min(entries, key=lambda e: e["p"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, 9 * smallest["p"]))


def test_within_window_correlation_is_spearman_of_r_and_ce(declared):
    _, result = declared
    rho = [r for r in result["per_window"]["rho"] if r is not None]
    c = result["r_loss_correlation"]["within_window_rho"]
    assert c["n"] == len(rho) == 18 and c["mean_x"] == pytest.approx(np.mean(rho))


def test_verdict_follows_the_declared_thresholds(declared, reliant, runs, tmp_path):
    """A model that relies on its banks is "used" under the issue's thresholds and under 0 / 0;
    the same numbers with impossible thresholds are "not shown"."""
    _, result = declared
    ablation, pin = result["criteria"]
    assert (ablation["threshold"], pin["threshold"]) == (0.05, 0.5)
    ce_ablate, ce_pin = result["comparisons"][0]["ce"], result["comparisons"][1]["ce"]
    assert ce_ablate["mean_diff"] >= 0.05 and ce_ablate["p_holm"] <= 0.05
    assert abs(ce_pin["cohens_dz"]) >= 0.5 and ce_pin["p_holm"] <= 0.05
    assert result["synchrony_used"] is True and result["verdict"].startswith("Synchrony is used")
    for name, thresholds, used in [("zero", dict(ablation_nats=0.0, pin_dz=0.0), True),
                                   ("impossible", dict(ablation_nats=1e6, pin_dz=1e6), False),
                                   ("pin only", dict(ablation_nats=1e6, pin_dz=0.0), False)]:
        other = P.run_protocol(write(tmp_path / f"{name}.toml", reliant_spec(runs, **thresholds)),
                               tmp_path / name, subject=reliant, progress=False)
        assert other["comparisons"][0]["ce"]["mean_diff"] == pytest.approx(ce_ablate["mean_diff"])  # same numbers
        assert other["synchrony_used"] is used, name
        assert [c["met"] for c in other["criteria"]] == [used or name == "zero", name != "impossible"]
    assert "≥ 1e+06 nats" in other["markdown"] and "Synchrony is not shown to be used" in other["markdown"]


def test_the_hash_changes_with_a_threshold(runs, tmp_path):
    a = P.load_protocol(write(tmp_path / "a.toml", spec(runs["kssm"], pin_dz=0.5)))
    b = P.load_protocol(write(tmp_path / "b.toml", spec(runs["kssm"], pin_dz=0.4)))
    assert a.thresholds == {"ablation_nats": 0.05, "pin_dz": 0.5} and b.thresholds["pin_dz"] == 0.4
    assert a.sha256 != b.sha256


def test_several_training_runs_pool_their_windows(runs, tmp_path, corpus):
    other = make_run(tmp_path, "kssm-seed1", corpus=corpus)
    data = spec(runs["kssm"], design={"seeds": [0, 1, 2], "samples_per_condition": 24})
    data["model"]["runs"] = [str(other)]
    result = P.run_protocol(write(tmp_path / "p.toml", data), tmp_path / "out", progress=False)
    assert result["n"] == 24 and len(result["windows"]["runs"]) == 2
    per_run = result["tables"][-1]
    assert per_run["title"].startswith("Per training run (n = 2 runs") and len(per_run["rows"]) == 2


def test_runs_on_a_grafted_phase_core(tiny_model, tmp_path, corpus):
    from phaselm.graft import graft
    from phaselm.phase_core import PhaseCoreConfig

    alphabet = (string.ascii_letters + string.digits + " .")[:64]
    text = "".join(ch if ch in alphabet else " " for ch in corpus.read_text(encoding="utf-8"))
    small = tmp_path / "alphabet.txt"
    small.write_text(text, encoding="utf-8")
    model = tiny_model("mamba")
    handle = graft(model, PhaseCoreConfig(n_oscillators=8, alpha_init=2.0, coupling=1.0))
    subject = P.Subject(model, CharTokenizer(alphabet), handle, corpus=str(small), path="tiny mamba")
    data = spec(Path("unused"), causal={"ablate": "phase_core", "pin": 0.2})
    result = P.run_protocol(write(tmp_path / "p.toml", data), tmp_path / "out", subject=subject, progress=False)
    assert result["model"]["type"] == "mamba (grafted Phase Core)" and result["n"] == 12
    assert result["holm_family_size"] == 9 and result["comparisons"][0]["kl"]["mean_x"] > 0
    handle.remove()


def train_briefly(subject, corpus, steps: int = 40) -> None:
    """A few Adam steps on the corpus (seq 16, batch 16), so the model is a trained one."""
    from phaselm.corpora import load_text
    from phaselm.data import encode_split

    model = subject.model.train()
    train, _ = encode_split(subject.tokenizer, load_text(str(corpus)), 0.1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(train) - 17, (16,), generator=g)
        x = torch.stack([train[j : j + 16] for j in starts])
        y = torch.stack([train[j + 1 : j + 17] for j in starts])
        loss = F.cross_entropy(model(input_ids=x).logits.transpose(1, 2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


MIXER_SITES = dict(mixer="kuramoto", kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8,
                   kuramoto_backend="reference")


def test_runs_on_the_mixer_sites_of_a_trained_kuramoto_kssm(tmp_path, corpus):
    """[causal] sites = "mixer": pin/sync/disorder act on the mixers only, and the R–loss ρ reads
    the mixers' R (mean over the mixer sites; each the mean over heads), recomputed here."""
    from phaselm.interventions import measure, structure

    run = make_run(tmp_path / "runs", "kssm-kuramoto", corpus=corpus, **MIXER_SITES)
    subject = P.load_subject(run, "cpu")
    train_briefly(subject, corpus)
    data = spec(run, causal={"ablate": "mixer", "pin": 0.5, "sites": "mixer"})
    result = P.run_protocol(write(tmp_path / "p.toml", data), tmp_path / "out", subject=subject, progress=False)
    assert result["n"] == 12 and result["holm_family_size"] == 9
    assert result["conditions"] == ["intact", "ablate mixer", "pin R = 0.5", "sync (R = 1)", "disorder (R = 0)"]
    assert [i.get("sites") for i in result["interventions"]] == [None, "mixer", "mixer", "mixer"]
    for row in result["comparisons"]:
        assert row["kl"]["mean_x"] > 0
    mixers = [s.layer for s in structure(subject.model).sites if s.kind == "mixer"]
    assert mixers == [2, 3]
    seed, start = result["windows"]["starts"][0][0]
    val = subject.validation_ids()
    x, y = val[start : start + 16][None], val[start + 1 : start + 17]
    with torch.no_grad(), measure(subject.model) as m:
        logits = subject.model(input_ids=x).logits[0].float()
    ce = F.cross_entropy(logits, y.long(), reduction="none").double().numpy()
    r = torch.stack([m.orders[layer][0][0] for layer in mixers]).mean(0).double().numpy()
    assert seed == 0
    assert result["per_window"]["rho"][0] == pytest.approx(st.correlation(r, ce).spearman_rho, abs=1e-6)


def test_runs_on_a_fusion_model_s_kuramoto_branch(tmp_path, corpus):
    from phaselm.models.fusion import FusionConfig, FusionForCausalLM

    alphabet = (string.ascii_letters + string.digits + " .")[:64]
    text = "".join(ch if ch in alphabet else " " for ch in corpus.read_text(encoding="utf-8"))
    small = tmp_path / "alphabet.txt"
    small.write_text(text, encoding="utf-8")
    torch.manual_seed(0)
    model = FusionForCausalLM(FusionConfig(
        vocab_size=64, hidden_size=32, n_layers=2, branches=("rwkv6", "kuramoto"), rwkv_head_dim=16, rwkv_mix_rank=4,
        rwkv_decay_rank=8, rwkv_chunk_size=4, kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)).eval()
    subject = P.Subject(model, CharTokenizer(alphabet), model, corpus=str(small), path="tiny fusion")
    data = spec(Path("unused"), causal={"ablate": "kuramoto", "pin": 0.5, "sites": "mixer"})
    result = P.run_protocol(write(tmp_path / "p.toml", data), tmp_path / "out", subject=subject, progress=False)
    assert result["n"] == 12 and result["holm_family_size"] == 9
    assert result["conditions"][1] == "ablate kuramoto" and result["comparisons"][1]["kl"]["mean_x"] > 0
    assert all(rho is not None for rho in result["per_window"]["rho"])


def test_mixer_sites_on_a_model_without_them_are_refused(runs, tmp_path, raises_phaselm):
    file = write(tmp_path / "p.toml", spec(runs["kssm"], causal={"ablate": "bank", "pin": 0.5, "sites": "mixer"}))
    with raises_phaselm("targets mixer sites, but this kssm model has none; its oscillator sites are: bank"):
        P.run_protocol(file, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


BAD = [
    ("unknown sites", {"causal": {"ablate": "mixer", "pin": 0.5, "sites": "mixr"}},
     "[causal] sites must be one of bank, core, mixer"),
    ("two seeds", {"design": {"seeds": [0, 1], "samples_per_condition": 8}},
     "the does_r_matter protocol needs at least 3 seeds"),
    ("missing thresholds", {"thresholds": {"pin_dz": 0.5}}, "is missing [thresholds] ablation_nats"),
    ("negative d_z bound", {"thresholds": {"ablation_nats": 0.05, "pin_dz": -1.0}}, "pin_dz must be a finite number"),
    ("pin out of range", {"causal": {"ablate": "bank", "pin": 1.5}}, "pinned R must be in [0, 1]"),
    ("metrics section", {"metrics": {"names": ["ce"]}}, "section [metrics] does not apply to a does_r_matter"),
    ("n disagrees", {"design": {"seeds": [0, 1, 2], "samples_per_condition": 10}},
     "the design gives 4 windows × 3 seeds = 12"),
]


@pytest.mark.parametrize("change, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_are_one_line_errors(runs, tmp_path, raises_phaselm, change, match):
    file = write(tmp_path / "bad.toml", spec(runs["kssm"], **change))
    with raises_phaselm(None) as info:
        P.load_protocol(file)
    assert match in str(info.value)


def test_a_model_without_oscillators_is_refused(runs, tmp_path, raises_phaselm):
    file = write(tmp_path / "gpt.toml", spec(runs["gpt"], causal={"ablate": "mlp", "pin": 0.5}))
    with raises_phaselm("the does_r_matter protocol needs a model with oscillators"):
        P.run_protocol(file, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_model_lacking_the_declared_branch_is_refused(runs, tmp_path, raises_phaselm):
    file = write(tmp_path / "p.toml", spec(runs["kssm"], causal={"ablate": "phase_core", "pin": 0.5}))
    with raises_phaselm("no branch 'phase_core'"):
        P.run_protocol(file, tmp_path / "out", progress=False)


@pytest.mark.parametrize("name", ["kssm-does-r-matter.toml", "phase-mamba-does-r-matter.toml",
                                  "kssm-kuramoto-does-r-matter.toml"])
def test_example_files_declare_the_issue_s_thresholds(name):
    protocol = P.load_protocol(EXAMPLE_PROTOCOLS / name)
    assert protocol.kind == "does_r_matter" and len(protocol.seeds) >= 3
    assert protocol.thresholds == {"ablation_nats": 0.05, "pin_dz": 0.5}
    assert f"phaselm protocol run protocols/{name}" in (EXAMPLE_PROTOCOLS / name).read_text(encoding="utf-8")
    if "kuramoto" in name:
        assert protocol.causal["sites"] == "mixer" and protocol.causal["ablate"] == "mixer"


def test_cli_runs_it_and_refuses_two_seeds_in_one_line(runs, tmp_path, capsys):
    from cli_helpers import assert_one_line_error, run_cli

    file = write(tmp_path / "p.toml", spec(runs["kssm"]))
    code, out, err = run_cli(capsys, "protocol", "run", str(file), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "Synchrony is" in out and (tmp_path / "out" / "results.json").is_file()
    bad = write(tmp_path / "bad.toml", spec(runs["kssm"], design={"seeds": [0, 1], "samples_per_condition": 8}))
    code, _, err = run_cli(capsys, "protocol", "run", str(bad), "--out", str(tmp_path / "bad"))
    assert_one_line_error(code, err, "needs at least 3 seeds")
    assert not (tmp_path / "bad").exists()
