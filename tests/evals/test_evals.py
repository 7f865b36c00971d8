"""The evals on tiny trained-run folders: numbers checked against direct computations, files
written (JSON + PNG), nothing overwritten, and models without oscillators refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from eval_helpers import make_run
from phaselm import evals
from phaselm.data import sequential_batches
from phaselm.interventions import Intervention, intervene, phase_sites

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "kssm": make_run(root, "kssm", corpus=corpus),
        "mono": make_run(root, "mono", corpus=corpus, bistable=False),
        "nomixer": make_run(root, "nomixer", corpus=corpus, mixer="none"),
        "gpt": make_run(root, "gpt", arch="gpt2", corpus=corpus),
    }


@pytest.fixture(scope="module")
def subject(runs):
    return evals.load_subject(runs["kssm"], device="cpu")


@pytest.fixture(scope="module")
def prompts(subject):
    return evals.validation_prompts(subject.validation_ids(), 6, 12)


@pytest.fixture(scope="module")
def intervention_result(subject, prompts, tmp_path_factory):
    items = [Intervention("sync"), Intervention("pin", 0.3, layers=[1]), Intervention("disorder", layers=[])]
    out = tmp_path_factory.mktemp("iv") / "evals"
    return evals.r_intervention_eval(subject.model, subject.tokenizer, prompts, items, max_new_tokens=8, seed=3,
                                     temperature=1.0, batch_size=4, out_dir=out, progress=False, n_resamples=500), out


# ---------------------------------------------------------------- building blocks


def test_text_metrics_by_hand():
    ids = [1, 2, 1, 2, 1, 2, 3]
    assert evals.distinct_n(ids, 1) == 3 / 7
    assert evals.distinct_n(ids, 2) == 3 / 6  # (1,2) (2,1) (2,3)
    m = evals.text_metrics(ids)
    assert m["distinct_3"] == 3 / 5 and m["repetition"] == pytest.approx(1 - 3 / 4)  # 4-grams: 1212 2121 1212 2123
    assert evals.text_metrics([1, 2, 3, 4, 5])["repetition"] == 0.0


def test_kl_divergence_against_scipy():
    logits = torch.randn(2, 5, 11)
    logp, logq = F.log_softmax(logits, -1), F.log_softmax(logits + torch.randn_like(logits), -1)
    kl = evals.kl_divergence(logp, logq)
    expected = stats.entropy(logp.exp().numpy(), logq.exp().numpy(), axis=-1)
    assert np.allclose(kl.numpy(), expected, atol=1e-5)
    assert torch.equal(evals.kl_divergence(logp, logp), torch.zeros(2, 5))


def test_validation_prompts_are_deterministic_windows_of_the_validation_split(subject, raises_phaselm):
    val = subject.validation_ids()
    assert len(val) == 12_000 - int(12_000 * 0.9)  # the last 10 % of the (char-level) corpus
    p = evals.validation_prompts(val, 5, 10)
    assert p == evals.validation_prompts(val, 5, 10) and len({tuple(x) for x in p}) == 5
    assert p[0] == val[:10].tolist() and p[-1] == val[-10:].tolist()
    with raises_phaselm("at least 2 prompts, got 1"):
        evals.validation_prompts(val, 1, 10)
    with raises_phaselm("too short for 2000 distinct prompts"):
        evals.validation_prompts(val, 2000, 10)


@pytest.mark.parametrize("arch", ["kssm", "gpt"])
def test_sample_is_cached_greedy_decoding_and_seeded_sampling(runs, arch):
    s = evals.load_subject(runs[arch], device="cpu")
    prompt = torch.tensor(evals.validation_prompts(s.validation_ids(), 3, 8))
    new, orders = evals.sample(s.model, prompt, 6, temperature=0)
    reference = s.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
                                 attention_mask=torch.ones_like(prompt))
    assert torch.equal(new, reference[:, 8:])
    a, _ = evals.sample(s.model, prompt, 6, temperature=1.0, seed=7)
    b, _ = evals.sample(s.model, prompt, 6, temperature=1.0, seed=7)
    assert torch.equal(a, b)
    if arch == "kssm":
        full = s.model(torch.cat([prompt, new], 1)).orders
        assert orders.shape == (3, 2, 6) and torch.allclose(orders, full[:, :, 7:-1], atol=1e-6)
    else:
        assert orders is None


# ---------------------------------------------------------------- R intervention


def test_intervention_eval_measures_what_it_claims(intervention_result, subject, prompts):
    result, out = intervention_result
    sync, pin, noop = result["results"]
    assert result["n_prompts"] == 6 and [r["label"] for r in result["results"]] == ["sync @ layers all",
                                                                                    "pin 0.3 @ layers 1",
                                                                                    "disorder @ layers none"]
    # forced R is what was asked for, during generation
    assert sync["forced"]["r_per_layer"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert pin["forced"]["r_per_layer"][1] == pytest.approx(0.3, abs=1e-5)
    assert result["unforced"]["r_per_layer"] == noop["forced"]["r_per_layer"]
    assert 0.05 < result["unforced"]["r_per_layer"][1] < 0.99  # so R = 1 above is the intervention
    # the no-op changes nothing: KL exactly 0, identical text (same seed), p = 1
    forced_noop = result["per_prompt"]["forced"][2]
    assert forced_noop["kl"] == [0.0] * 6
    for m in ("distinct_1", "distinct_2", "distinct_3", "repetition", "perplexity", "mean_r"):
        assert forced_noop[m] == result["per_prompt"]["unforced"][m], m
        assert noop["comparisons"][m]["p_t"] == 1.0 and noop["comparisons"][m]["mean_diff"] == 0.0
    # sync changes the next-token distributions on every prompt
    assert min(result["per_prompt"]["forced"][0]["kl"]) > 0
    assert sync["comparisons"]["kl"]["p_t_holm"] < 0.05 and sync["comparisons"]["kl"]["significant"]
    # Holm over 3 interventions × 7 metrics
    for res in result["results"]:
        for c in res["comparisons"].values():
            assert c["n"] == 6 and {"p_t_holm", "p_wilcoxon_holm", "cohens_dz", "rank_biserial", "ci_low",
                                    "ci_high"} <= set(c)
            if c["p_t"] is not None:
                assert c["p_t_holm"] >= c["p_t"]
    assert result["interventions"][1] == {"kind": "pin", "value": 0.3, "layers": [1], "target_order": 0.3,
                                          "n_oscillators": 8,
                                          "arc_width": pytest.approx(result["interventions"][1]["arc_width"])}
    # files: JSON (strict) and a PNG
    saved = json.loads((out / "intervention.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert saved["results"][0]["label"] == "sync @ layers all"
    assert (out / "intervention.png").read_bytes()[:8] == PNG
    assert all(site.phase_transforms == [] for site in phase_sites(subject.model))


def test_intervention_eval_kl_and_perplexity_by_hand(intervention_result, subject, prompts):
    result, _ = intervention_result
    model = subject.model
    # regenerate prompt 0's unforced continuation with the eval's seed and batching (batch 0 starts at prompt 0)
    prompt = torch.tensor(prompts[:4])
    new, _ = evals.sample(model, prompt, 8, temperature=1.0, seed=3)
    full = torch.cat([prompt, new], 1)[:1]
    with torch.no_grad():
        logp = F.log_softmax(model(full).logits[0, 11:-1].float(), -1)
        with intervene(model, Intervention("sync")):
            logq = F.log_softmax(model(full).logits[0, 11:-1].float(), -1)
    kl = float((logp.exp() * (logp - logq)).sum(-1).mean())
    ppl = math.exp(float(-logp.gather(-1, new[0, :, None]).mean()))
    assert result["per_prompt"]["forced"][0]["kl"][0] == pytest.approx(kl, rel=1e-4)
    assert result["per_prompt"]["unforced"]["perplexity"][0] == pytest.approx(ppl, rel=1e-4)
    assert result["samples"]["unforced"][0] == subject.tokenizer.decode(new[0].tolist())


def test_intervention_eval_refuses_to_overwrite_and_bad_input(intervention_result, subject, prompts, runs,
                                                              raises_phaselm):
    _, out = intervention_result
    before = {p: p.read_bytes() for p in out.iterdir()}
    with raises_phaselm("already holds intervention.json"):
        evals.r_intervention_eval(subject.model, subject.tokenizer, prompts, [Intervention("sync")], out_dir=out,
                                  progress=False)
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    with raises_phaselm("at least 2 prompts, got 1"):
        evals.r_intervention_eval(subject.model, subject.tokenizer, prompts[:1], [Intervention("sync")], progress=False)
    with raises_phaselm("layer 3 is out of range"):
        evals.r_intervention_eval(subject.model, subject.tokenizer, prompts, [Intervention("sync", layers=[3])],
                                  progress=False)
    with raises_phaselm("max_new_tokens must be at least 4"):
        evals.r_intervention_eval(subject.model, subject.tokenizer, prompts, [Intervention("sync")], max_new_tokens=2,
                                  progress=False)
    gpt = evals.load_subject(runs["gpt"], device="cpu")
    with raises_phaselm("needs a model with oscillators"):
        evals.r_intervention_eval(gpt.model, gpt.tokenizer, prompts, [Intervention("sync")], progress=False)


def test_greedy_intervention_eval_on_text_prompts(subject):
    result = evals.r_intervention_eval(subject.model, subject.tokenizer, ["ROMEO:", "JULIET:", "First"],
                                       [Intervention("pin", 0.5, layers=[0])],
                                       max_new_tokens=5, temperature=0, progress=False, n_resamples=100)
    assert result["prompt_tokens"] == [5, 6, 7] and result["decoding"]["greedy"]
    assert result["results"][0]["forced"]["r_per_layer"][0] == pytest.approx(0.5, abs=1e-5)
    assert "files" not in result  # no out_dir: nothing written


# ---------------------------------------------------------------- temperature sweep


def test_temperature_sweep(subject, runs, prompts, tmp_path):
    result = evals.temperature_sweep(subject.model, subject.tokenizer, prompts[:4], [0, 1.0, 2.0], max_new_tokens=6,
                                     out_dir=tmp_path, progress=False)
    assert [r["temperature"] for r in result["rows"]] == [0.0, 1.0, 2.0]
    for row in result["rows"]:
        assert row["metrics"]["perplexity"]["n"] == 4 and 0 < row["metrics"]["mean_r"]["mean"] < 1
        assert len(row["r_per_layer"]) == 2
    again = evals.temperature_sweep(subject.model, subject.tokenizer, prompts[:4], [0], max_new_tokens=6,
                                    progress=False)
    assert again["rows"][0]["metrics"] == result["rows"][0]["metrics"]  # greedy is deterministic
    assert (tmp_path / "temperature.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "temperature.json").read_text())["rows"]
    gpt = evals.load_subject(runs["gpt"], device="cpu")
    res = evals.temperature_sweep(gpt.model, gpt.tokenizer, prompts[:3], [0.8], max_new_tokens=4,
                                  out_dir=tmp_path / "gpt", progress=False)
    assert res["rows"][0]["metrics"]["mean_r"] is None and "—" in res["markdown"]
    assert (tmp_path / "gpt" / "temperature.png").is_file()


def test_temperature_sweep_bad_input(subject, prompts, raises_phaselm):
    with raises_phaselm("temperature must be ≥ 0"):
        evals.temperature_sweep(subject.model, subject.tokenizer, prompts, [-1.0], progress=False)
    with raises_phaselm("listed twice"):
        evals.temperature_sweep(subject.model, subject.tokenizer, prompts, [1.0, 1.0], progress=False)


# ---------------------------------------------------------------- clamp sweep


def direct_ce(model, val, batch_size, seq_len, batches):
    total, count = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(sequential_batches(val, batch_size, seq_len)):
            if i >= batches:
                break
            total += float(F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    return total / count


def test_clamp_sweep(subject, tmp_path):
    val = subject.validation_ids()
    result = evals.clamp_sweep(subject.model, val, [(0.1, 10), (0.9, 1.1)], batch_size=2, seq_len=16, max_batches=3,
                               out_dir=tmp_path, progress=False)
    trained, same, tight = result["rows"]
    assert "not retraining" in result["note"] and "not retraining" in result["markdown"]
    assert trained["trained"] and trained["bounds"] == "as trained [0.1, 10]"
    assert trained["val_ce"] == pytest.approx(direct_ce(subject.model, val, 2, 16, 3), rel=1e-5)
    assert same["val_ce"] == trained["val_ce"] and same["u_mean"] == trained["u_mean"]  # the trained bounds again
    assert tight["u_min"] == 0.9 and tight["u_max"] == 1.1
    assert tight["u_at_bounds"] > 0.2 and tight["u_at_lower"] > 0 and tight["u_at_upper"] > 0
    assert 0.9 - 1e-6 <= tight["u_mean"] <= 1.1 + 1e-6 and tight["val_ce"] != trained["val_ce"]
    assert tight["tokens"] == 3 * 2 * 16 and len(tight["r_per_layer"]) == 2
    assert all((b.cfg.u_min, b.cfg.u_max) == (0.1, 10.0) for b in phase_sites(subject.model))  # restored
    assert (tmp_path / "clamp.png").read_bytes()[:8] == PNG


def test_clamp_sweep_bad_bounds_and_models(subject, runs, raises_phaselm, tmp_path):
    val = subject.validation_ids()
    with raises_phaselm("u_min < u_max, got u_min=2 ≥ u_max=1"):
        evals.clamp_sweep(subject.model, val, [(2.0, 1.0)], out_dir=tmp_path, progress=False)
    with raises_phaselm("need 0 < u_min"):
        evals.clamp_sweep(subject.model, val, [(0.0, 1.0)], out_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
    mono = evals.load_subject(runs["mono"], device="cpu")
    res = evals.clamp_sweep(mono.model, mono.validation_ids(), [(-1.0, 1.0)], batch_size=2, seq_len=16, max_batches=1,
                            progress=False)
    assert res["rows"][0]["bounds"] == "as trained (no clamp)" and res["rows"][0]["u_at_bounds"] is None
    assert res["rows"][1]["u_min"] == -1.0 and not res["trained_bistable"]
    gpt = evals.load_subject(runs["gpt"], device="cpu")
    with raises_phaselm("needs a model with oscillators"):
        evals.clamp_sweep(gpt.model, gpt.validation_ids(), progress=False)
    with raises_phaselm("bad bounds '1-2'"):
        evals.parse_bounds("1-2")
    assert evals.iter_bounds(["0.1:10,0.5:2", "1:3"]) == [(0.1, 10.0), (0.5, 2.0), (1.0, 3.0)]


# ---------------------------------------------------------------- R vs loss


def test_order_loss_correlation_against_scipy(subject, tmp_path):
    model, val = subject.model, subject.validation_ids()
    result = evals.order_loss_correlation(model, val, batch_size=2, seq_len=16, max_batches=2, out_dir=tmp_path,
                                          progress=False)
    ce, orders = [], []
    with torch.no_grad():
        for i, (x, y) in enumerate(sequential_batches(val, 2, 16)):
            if i >= 2:
                break
            out = model(x)
            ce.append(F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="none"))
            orders.append(out.orders.transpose(0, 1).flatten(1))
    ce, orders = torch.cat(ce).double().numpy(), torch.cat(orders, 1).double().numpy()
    layer1 = result["layers"][1]
    assert result["tokens"] == 64
    assert [layer["layer"] for layer in result["layers"]] == ["layer 0", "layer 1", "mean over layers"]
    assert layer1["pearson_r"] == pytest.approx(stats.pearsonr(orders[1], ce).statistic, abs=1e-5)
    assert layer1["spearman_rho"] == pytest.approx(stats.spearmanr(orders[1], ce).statistic, abs=1e-5)
    assert result["layers"][2]["pearson_r"] == pytest.approx(stats.pearsonr(orders.mean(0), ce).statistic, abs=1e-5)
    assert sum(b["n"] for b in layer1["binned"]) == 64
    assert "not independent" in result["note"]
    assert (tmp_path / "correlation.png").read_bytes()[:8] == PNG and (tmp_path / "correlation.json").is_file()


# ---------------------------------------------------------------- ablation table


def test_ablation_table(runs, tmp_path):
    order = ["kssm", "mono", "nomixer", "gpt"]
    result = evals.ablation_table([runs[k] for k in order], batch_size=2, max_batches=2, out_dir=tmp_path,
                                  progress=False, device="cpu")
    rows = {r["run"]: r for r in result["rows"]}
    assert [r["variant"] for r in result["rows"]] == ["K-SSM bistable", "K-SSM monostable", "K-SSM no-mixer", "GPT-2"]
    assert result["batches"]["seq_len"] == 16  # the runs' training seq_len
    gpt, kssm, mono = rows["gpt"], rows["kssm"], rows["mono"]
    assert gpt["r_mean"] is None and gpt["u_mean"] is None and gpt["u_at_bounds"] is None
    assert 0 < kssm["r_mean"] < 1 and kssm["u_at_bounds"] is not None
    assert mono["u_mean"] is not None and mono["u_at_bounds"] is None
    subject = evals.load_subject(runs["kssm"], device="cpu")
    assert kssm["val_ce"] == pytest.approx(direct_ce(subject.model, subject.validation_ids(), 2, 16, 2), rel=1e-5)
    assert kssm["val_ppl"] == pytest.approx(math.exp(kssm["val_ce"]))
    assert kssm["parameters"] == sum(p.numel()
                                     for p in subject.model.parameters()) and kssm["val_ce_at_training"] == 4.0
    lines = result["markdown"].splitlines()
    gpt_line = next(line for line in lines if line.startswith("| gpt "))
    assert gpt_line.count("—") == 5  # R mean, R std, u mean, u std, u at bounds
    assert (tmp_path / "ablation.md").read_text().strip() == result["markdown"].strip()
    assert (tmp_path / "ablation.png").read_bytes()[:8] == PNG


# ---------------------------------------------------------------- loading


def test_load_subject_accepts_a_run_or_its_model_folder(runs):
    a = evals.load_subject(runs["kssm"], device="cpu")
    b = evals.load_subject(runs["kssm"] / "model", device="cpu")
    assert a.model_dir == b.model_dir and a.corpus == b.corpus and a.train_seq_len == 16
    assert evals.default_out_dir(runs["kssm"] / "model") == runs["kssm"] / "evals"
    assert evals.default_out_dir(runs["kssm"]) == runs["kssm"] / "evals"


def test_load_subject_bad_paths(tmp_path, raises_phaselm):
    with raises_phaselm("does not exist"):
        evals.load_subject(tmp_path / "nope")
    with raises_phaselm("neither a run directory nor a model folder"):
        evals.load_subject(tmp_path)
    (tmp_path / "config.toml").write_text("[backbone]\n")  # a phase-mamba run opens for evals, once it has a checkpoint
    with raises_phaselm("cannot open the phase-mamba run .* holds no complete checkpoint"):
        evals.load_subject(tmp_path)
