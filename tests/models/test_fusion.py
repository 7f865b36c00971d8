"""Fusion family (pure RWKV-6, pure Mamba-2, every hybrid fusion type): training, branch outputs,
bad inputs, diagnostics and the train-lm recipes. Causality, cached decoding, save/load, the
reference path and padding are the shared contract (tests/models/test_model_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY_MODEL, TINY_TRAIN, set_args, train_tiny
from cli_helpers import run_cli as cli
from phaselm.config import load_recipe
from phaselm.experiments.language_model import LMRecipe
from phaselm.models.fusion import FUSIONS, GATE_INITS, FusionConfig, FusionForCausalLM

TINY = dict(
    vocab_size=40, hidden_size=32, n_layers=2, rwkv_head_dim=16, rwkv_mix_rank=4, rwkv_decay_rank=8,
    rwkv_chunk_size=4, mamba_state_size=8, mamba_head_dim=16, mamba_chunk_size=8, dropout=0.0,
)
VARIANTS = [dict(mixer="hybrid", fusion=f) for f in FUSIONS] + [dict(mixer="rwkv6"), dict(mixer="mamba2")]
IDS = [v.get("fusion", v["mixer"]) for v in VARIANTS]


def tiny(**overrides) -> FusionForCausalLM:
    torch.manual_seed(0)
    return FusionForCausalLM(FusionConfig(**{**TINY, **overrides})).eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_trains_a_few_steps_with_finite_gradients_everywhere(variant):
    model = tiny(**variant).train()
    ids = torch.randint(0, 40, (4, 24))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None, f"{name} gets no gradient"
                assert torch.isfinite(p.grad).all(), name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_branch_outputs_gates_states_and_hidden_states(variant):
    model = tiny(**variant, gate_init=0.3)
    out = model(torch.randint(0, 40, (3, 9)), output_branches=True, output_hidden_states=True)
    mixer, fusion = variant["mixer"], variant.get("fusion")
    assert len(out.rwkv_outputs) == len(out.mamba_outputs) == len(out.gates) == len(out.states) == 2
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (3, 9, 32)
    fusion_parts = model.blocks[0].fusion
    if fusion_parts is not None:  # the parts add up to the fused output (CP, RF: up to the bias)
        r0, m0 = out.rwkv_outputs[0], out.mamba_outputs[0]
        a, b = fusion_parts.parts(r0, m0)
        bias = getattr(getattr(fusion_parts, "proj", None), "bias", None)
        torch.testing.assert_close(
            a + b + (bias if bias is not None else 0), fusion_parts(r0, m0)[0], rtol=1e-5, atol=1e-6
        )
    for layer in range(2):
        r, m, gate, states = out.rwkv_outputs[layer], out.mamba_outputs[layer], out.gates[layer], out.states[layer]
        assert (r is not None) == (mixer != "mamba2") and (m is not None) == (mixer != "rwkv6")
        if r is not None:
            assert r.shape == (3, 9, 32) and states["rwkv"].shape == (3, 2, 16, 16)
        if m is not None:
            assert m.shape == (3, 9, 32) and states["mamba"].shape == (3, 4, 16, 8)
        expected_gate = {"WS": (), "HY": (2, 32), "GF": (3, 9, 1), "HGF": (3, 9, 32)}.get(fusion)
        assert (gate is None) == (expected_gate is None)
        if fusion == "HY":
            torch.testing.assert_close(gate, torch.stack([torch.full((32,), 0.3), torch.full((32,), 0.7)]))
        elif gate is not None:
            assert gate.shape == expected_gate
            assert ((gate - 0.3).abs() < 0.05).all()  # the gate starts at gate_init
    assert out.rwkv_outputs[0] is None or out.mamba_outputs[0] is None or fusion is not None
    plain = model(torch.randint(0, 40, (1, 4)))
    assert plain.rwkv_outputs is None and plain.hidden_states is None


def test_ablating_a_branch_changes_the_output_and_keeps_the_other():
    model = tiny(fusion="GF")
    ids = torch.randint(0, 40, (2, 12))
    base = model(ids, output_branches=True)
    no_mamba = model(ids, ablate="mamba", output_branches=True)
    assert not torch.allclose(base.logits, no_mamba.logits)
    assert torch.count_nonzero(no_mamba.mamba_outputs[0]) == 0
    torch.testing.assert_close(no_mamba.rwkv_outputs[0], base.rwkv_outputs[0], rtol=0, atol=0)


def test_named_gate_inits():
    for name, ratio in GATE_INITS.items():
        assert FusionConfig(**TINY, gate_init=name).gate_init == ratio
    assert FusionConfig(**TINY, gate_init="GF-MH").gate_init == 0.3
    assert FusionConfig(**TINY, gate_init="gf-xm").gate_init == 0.03
    assert FusionConfig(**TINY, gate_init="GF-XR").gate_init == 0.97
    assert FusionConfig(**TINY, fusion="hgf").fusion == "HGF"
    gate = tiny(fusion="GF", gate_init="extreme-mamba").blocks[0].fusion.gate
    assert float(torch.sigmoid(gate.bias.detach())) == pytest.approx(0.03)


def test_bad_inputs(raises_phaselm):
    with raises_phaselm(r"unknown fusion type 'GX'; did you mean GF\? valid types: WS, HY, GF, HGF, CP, RF"):
        FusionConfig(**TINY, fusion="GX")
    with raises_phaselm(r"unknown fusion type 'attention'; valid types: WS, HY, GF, HGF, CP, RF"):
        FusionConfig(**TINY, fusion="attention")
    for bad in (0.0, 1.0, 1.5, -0.2):
        with raises_phaselm(r"gate_init must lie strictly between 0 and 1"):
            FusionConfig(**TINY, gate_init=bad)
    with raises_phaselm(r"unknown gate_init 'heavy'; use a number in \(0, 1\) or one of balanced \(0.5\)"):
        FusionConfig(**TINY, gate_init="heavy")
    with raises_phaselm(r"rwkv_head_dim 24 does not divide hidden_size 32"):
        FusionConfig(**{**TINY, "rwkv_head_dim": 24})
    with raises_phaselm(r"mamba_head_dim 24 does not divide mamba_expand·hidden_size = 64"):
        FusionConfig(**{**TINY, "mamba_head_dim": 24})
    FusionConfig(**{**TINY, "mixer": "mamba2", "rwkv_head_dim": 24})  # no RWKV branch: no RWKV heads
    with raises_phaselm(r"mixer must be one of hybrid, rwkv6, mamba2"):
        FusionConfig(**{**TINY, "mixer": "lstm"})
    with raises_phaselm(r"scan must be one of"):
        FusionConfig(**{**TINY, "scan": "triton"})
    with raises_phaselm(r"outside the model's vocabulary of 40"):
        tiny()(torch.tensor([[1, 2, 45]]))
    with raises_phaselm(r"ablate must be"):
        tiny()(torch.tensor([[1, 2]]), ablate="both")


# ---------------------------------------------------------------- recipes through train-lm

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
FUSION_RECIPES = ["fusion-gf-mh.toml", "fusion-gf-kuramoto.toml", "rwkv6.toml", "mamba2.toml",
                  "gpt2-fusion-baseline.toml"]


@pytest.mark.parametrize("name", FUSION_RECIPES)
def test_recipe_smoke(name, tmp_path, capsys):
    train_tiny(capsys, RECIPES / name, tmp_path / "run")
    code, out, err = cli(capsys, "generate", str(tmp_path / "run" / "model"), "-n", "4", "--json")
    assert code == 0, err
    assert len(json.loads(out)["text"]) > 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logged if "loss" in r]
    if name.startswith("fusion-gf"):  # the gate (RWKV share) of each layer is logged every step
        assert all(len(r["gate_rwkv_share"]) == 1 and 0 < r["gate_rwkv_share"][0] < 1 for r in train_rows)
    else:
        assert all("gate_rwkv_share" not in r for r in train_rows)
    # the Kuramoto branch's R, where the model has one
    assert all(("mixer_r_mean" in r) == (name == "fusion-gf-kuramoto.toml") for r in train_rows)


def test_recipe_shapes_hit_the_seed_sizes():
    """Char-level (65 symbols): GF-MH ~5.6M, pure RWKV-6 / Mamba-2 ~5M, GPT-2 ~6.8M (seed 004)."""
    from phaselm.experiments.language_model import build_lm

    targets = {
        "fusion-gf-mh.toml": 5.6e6,
        "fusion-gf-kuramoto.toml": 5.6e6,
        "rwkv6.toml": 5.0e6,
        "mamba2.toml": 5.0e6,
        "gpt2-fusion-baseline.toml": 6.8e6,
    }
    for name, target in targets.items():
        with torch.device("meta"):
            model = build_lm(load_recipe(LMRecipe, RECIPES / name), 65)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - target) / target < 0.06, (name, count)


def test_recipe_bad_fusion(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "fusion"\n[fusion]\nfusion = "XX"\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown fusion type 'XX'" in err and err.count("\n") == 1
    bad.write_text('arch = "fusion"\n[fusion]\ngate_init = 1.0\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "gate_init must lie strictly between 0 and 1" in err
    bad.write_text('arch = "fusion"\n[fusion]\nhidden_size = 100\n')
    code, _, err = cli(capsys, "train-lm", str(bad), "--out", str(tmp_path / "r"))
    assert code == 2 and "does not divide hidden_size 100" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- diagnostics

TINY_DIAG = dict(
    windows=4,
    short=8,
    long=32,
    positions=(8, 16, 32),
    frozen_inputs=4,
    gradient_windows=2,
    ucw_lengths=(8, 16, 32, 64),
    sps_turns=(1, 2),
    turn_tokens=8,
    fact_tokens=4,
    sps_samples=4,
    decode_tokens=4,
    segment=16,
)
CHECKS = [
    "D1_state_growth",
    "D2_frozen_state",
    "D3_balance",
    "D4_information_flow",
    "long_context",
    "state_norm_ratio",
    "output_entropy",
]


@pytest.mark.parametrize(
    "variant",
    [dict(mixer="hybrid", fusion="GF"), dict(mixer="hybrid", fusion="RF"), dict(mixer="mamba2")],
    ids=["GF", "RF", "mamba2"],
)
def test_diagnostics_produce_every_field_with_thresholds(variant):
    from phaselm.evals.diagnostics import DiagnosticsConfig, diagnose

    model = tiny(**variant)
    result = diagnose(model, torch.randint(0, 40, (3000,)), DiagnosticsConfig(**TINY_DIAG))
    hybrid = variant["mixer"] == "hybrid"
    assert set(result["checks"]) == set(CHECKS)
    for name, check in result["checks"].items():
        pair_check = name in ("D3_balance", "state_norm_ratio")
        if pair_check and not hybrid:
            assert check["status"] == "n/a" and check["value"] is None
        else:
            assert check["status"] in ("PASS", "WARN", "FAIL") and isinstance(check["value"], float), name
        assert check["rule"]
    norms = result["state_norms"]
    assert norms["positions"] == [8, 16, 32]
    assert ("rwkv" in norms) == hybrid and len(norms["mamba"]) == 2 and all(len(layer) == 3 for layer in norms["mamba"])
    assert len(result["depth"]["residual_variance"]) == 3 and result["depth"]["mamba"]["character"] in (
        "amplifier",
        "damper",
    )
    assert result["gradients"]["norms"]["mamba"] > 0
    assert set(result["ablation"]) >= {"ce", "ce_without_mamba", "delta_mamba"}
    if hybrid:
        assert 0 < result["balance"]["rwkv_share"] < 1 and len(result["balance"]["ratio_per_layer"]) == 2
        assert len(result["balance"]["gates"]) == (2 if variant["fusion"] == "GF" else 0)
        assert "mamba_over_rwkv" in result["gradients"]
    assert result["long_context"]["ppl_ratio"] > 0 and result["long_context"]["ce_by_position"]
    v5 = result["v5"]
    assert v5["CER"]["value"] > 0 and v5["UCW"]["value"] in (8, 16, 32, 64) and set(v5["SPS"]["by_turns"]) == {"1", "2"}
    json.dumps(result)  # everything is plain JSON


def test_threshold_grading():
    from phaselm.evals.diagnostics import status_below as _below

    assert [_below(v, 2, 10) for v in (1.9, 2.0, 9.9, 10.0, float("nan"))] == ["PASS", "WARN", "WARN", "FAIL", "FAIL"]


def test_diagnose_run_directory_with_gate_history(tmp_path, capsys):
    from phaselm.evals.diagnostics import DiagnosticsConfig
    from phaselm.protocols import run_diagnostics

    sets = set_args(TINY_TRAIN + TINY_MODEL["fusion"] + ["train.checkpoint_every=1", "train.steps=2"])
    code, _, err = cli(
        capsys, "train-lm", str(RECIPES / "fusion-gf-mh.toml"), "--out", str(tmp_path / "run"), "--json", *sets
    )
    assert code == 0, err
    result = run_diagnostics(tmp_path / "run", cfg=DiagnosticsConfig(**TINY_DIAG), device="cpu")
    written = json.loads((tmp_path / "run" / "diagnostics" / "diagnostics.json").read_text())
    assert written["checks"].keys() == result["checks"].keys()
    assert [h["step"] for h in written["gate_history"]] == [1, 2] and len(written["gate_history"][0]["gates"]) == 1
    assert [g["step"] for g in written["gate_training_log"]] == [1, 2] and len(
        written["gate_training_log"][0]["gate_rwkv_share"]
    ) == 1
    for name in ("diag_state_norms.png", "diag_depth.png", "diag_position_loss.png", "diag_gates.png"):
        assert (tmp_path / "run" / "diagnostics" / "plots" / name).is_file()
    before = (tmp_path / "run" / "diagnostics" / "diagnostics.json").read_bytes()
    code, _, err = cli(capsys, "diagnose", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "already holds diagnostics.json" in err
    assert (tmp_path / "run" / "diagnostics" / "diagnostics.json").read_bytes() == before


def test_diagnostics_refuse_a_model_without_branches(tmp_path, capsys, raises_phaselm):
    from phaselm.evals.diagnostics import diagnose
    from phaselm.protocols import run_diagnostics

    sets = set_args(TINY_TRAIN + TINY_MODEL["gpt2"])
    code, _, err = cli(
        capsys, "train-lm", str(RECIPES / "gpt2-fusion-baseline.toml"), "--out", str(tmp_path / "gpt"), "--json", *sets
    )
    assert code == 0, err
    with raises_phaselm(r"holds a 'gpt2' model, which has no RWKV-6 / Mamba-2 branches"):
        run_diagnostics(tmp_path / "gpt")
    code, _, err = cli(capsys, "diagnose", str(tmp_path / "gpt"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "gpt" / "diagnostics").exists()
    with raises_phaselm(r"nothing does not exist; pass a run directory"):
        run_diagnostics(tmp_path / "nothing")
    with raises_phaselm(r"diagnostics need a fusion-family model"):
        diagnose(torch.nn.Linear(2, 2), torch.zeros(10, dtype=torch.long))


def test_bench_measures_every_model_against_the_baseline():
    from phaselm.bench import BenchConfig, bench, table

    overrides = {
        "fusion.hidden_size": 32,
        "fusion.n_layers": 1,
        "fusion.rwkv_head_dim": 16,
        "fusion.mamba_head_dim": 16,
        "gpt.n_embd": 32,
        "gpt.n_layer": 1,
        "gpt.n_head": 2,
        "gpt.n_positions": 64,
    }
    # aot_eager: the compiled path (dynamo + autograd tracing) without a C++ toolchain's wait.
    cfg = BenchConfig(batches=(1, 2), seq_len=16, steps=1, warmup=1, decode_contexts=(8, 70), decode_tokens=2,
                      compile_batches=(2,), compile_backend="aot_eager")
    result = bench(
        [RECIPES / "fusion-gf-mh.toml", RECIPES / "mamba2.toml"],
        RECIPES / "gpt2-fusion-baseline.toml",
        cfg,
        "cpu",
        overrides,
    )
    assert result["baseline"]["arch"] == "gpt2" and [m["arch"] for m in result["models"]] == ["fusion", "fusion"]
    for m in result["models"]:
        assert set(m["train_step_ratio"]) == {"1", "2"} and all(v > 0 for v in m["infer_speed_ratio"].values())
        assert set(m["train_step_ratio_compiled"]) == {"2"} and m["train_step_ratio_compiled"]["2"] > 0
        assert all(v > 0 for v in m["decode_ms_per_token"].values()) and m["decode_growth"] > 0
    assert result["baseline"]["decode_ms_per_token"]["70"] is None  # past the baseline's 64 positions
    rows = table(result)
    assert len(rows) == (2 + 3 * 2) + (1 + 2 + 3) + (1 + 2 + 3)  # eager, compiled and decode tables
    assert rows[-3].startswith("| gpt2-fusion-baseline | ") and "| — | — |" in rows[-3]


def test_bench_command_writes_json_and_table_and_refuses_bad_input(tmp_path, capsys):
    sets = ["fusion.hidden_size=32", "fusion.n_layers=1", "fusion.rwkv_head_dim=16", "fusion.mamba_head_dim=16",
            "gpt.n_embd=32", "gpt.n_layer=1", "gpt.n_head=2", "gpt.n_positions=64"]
    args = ["bench", str(RECIPES / "mamba2.toml"), "--baseline", str(RECIPES / "gpt2-fusion-baseline.toml"),
            "--batches", "1", "--seq-len", "8", "--steps", "1", "--contexts", "8", "--out", str(tmp_path / "b")]
    args += [x for item in sets for x in ("--set", item)]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert (
        "| mamba2 | 1 |" in out
        and json.loads((tmp_path / "b" / "bench.json").read_text())["models"][0]["arch"] == "fusion"
    )
    code, _, err = cli(capsys, *args)  # the same --out again
    assert code == 2 and "already holds a bench result" in err and err.count("\n") == 1
    for bad in (["--batches", "0"], ["--contexts", "a"]):
        code, _, err = cli(capsys, "bench", str(RECIPES / "mamba2.toml"), *bad)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = cli(capsys, "bench", str(tmp_path / "missing.toml"))
    assert code == 2 and "recipe not found" in err


def test_scan_setting_reaches_both_branches():
    """"auto" is the chunked PyTorch path in both mixers; "kernels" opts into fla and our fused SSD."""
    for scan, rwkv_backend, ssd_backend in (
        ("auto", "auto", "auto"),
        ("kernels", "fla", "fused"),
        ("reference", "reference", "reference"),
    ):
        block = tiny(scan=scan).blocks[0]
        assert (block.rwkv.backend, block.mamba.scan) == (rwkv_backend, ssd_backend)
    with pytest.raises(Exception, match="scan must be one of auto, kernels, chunked, reference"):
        FusionConfig(**TINY, scan="fla")


# ---------------------------------------------------------------- a Kuramoto branch

KURAMOTO_TINY = dict(kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)


@pytest.mark.parametrize("branches", [("rwkv6", "kuramoto"), ("kuramoto", "mamba2")], ids=["rwkv-K", "K-mamba"])
def test_a_kuramoto_branch_trains_reports_its_r_and_ablates_by_name(branches):
    model = tiny(branches=branches, **KURAMOTO_TINY).train()
    first, second = model.config.branch_names
    assert (first, second) == tuple({"rwkv6": "rwkv", "mamba2": "mamba", "kuramoto": "kuramoto"}[b] for b in branches)
    ids = torch.randint(0, 40, (3, 10))
    loss = model(ids, labels=ids).loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    out = model(ids, output_branches=True)
    assert out.mixer_orders.shape == (3, 2, 10, 2) and ((out.mixer_orders > 0) & (out.mixer_orders <= 1)).all()
    assert out.kuramoto_outputs[0].shape == (3, 10, 32)
    assert all(set(states) == {first, second} - {"kuramoto"} for states in out.states)  # recurrent states only
    no_kuramoto = model(ids, ablate="kuramoto", output_branches=True)
    assert torch.count_nonzero(no_kuramoto.kuramoto_outputs[0]) == 0
    assert not torch.allclose(no_kuramoto.logits, out.logits)
    other = next(n for n in (first, second) if n != "kuramoto")
    torch.testing.assert_close(getattr(no_kuramoto, f"{other}_outputs")[0], getattr(out, f"{other}_outputs")[0])
    assert list(model.intervention_sites().branches) == [first, second, "fusion_gate", "mlp"]
    assert model(ids).mixer_orders is not None and tiny()(ids).mixer_orders is None


def test_branches_default_to_the_seed_hybrid_and_check_their_kinds(raises_phaselm, tmp_path):
    default = FusionConfig(**TINY)
    assert default.branches == ("rwkv6", "mamba2") and default.branch_names == ("rwkv", "mamba")
    assert tiny().blocks[0].kuramoto is None
    with raises_phaselm(r"branches \['mamba2', 'rwkv6'\] are not a fusion of two of rwkv6, mamba2, kuramoto"):
        FusionConfig(**TINY, branches=("mamba2", "rwkv6"))
    with raises_phaselm(r"not both kuramoto"):
        FusionConfig(**TINY, branches=("kuramoto", "kuramoto"))
    with raises_phaselm(r"branches must be two branch kinds"):
        FusionConfig(**TINY, branches="kuramoto")
    with raises_phaselm(r"branches apply to mixer = 'hybrid' only"):
        FusionConfig(**TINY, mixer="rwkv6", branches=("rwkv6", "kuramoto"))
    with raises_phaselm(r"kuramoto mixer needs dt > 0"):
        FusionConfig(**TINY, branches=("rwkv6", "kuramoto"), kuramoto_dt=0.0)
    with raises_phaselm(r"ablate must be None or a branch of this model \(rwkv, mamba\), got 'kuramoto'"):
        tiny()(torch.tensor([[1, 2]]), ablate="kuramoto")
    FusionConfig(**{**TINY, "branches": ("kuramoto", "mamba2"), "rwkv_head_dim": 24})  # no RWKV branch: no RWKV heads
    model = tiny(branches=["rwkv6", "kuramoto"], **KURAMOTO_TINY)  # a saved config.json gives a list
    assert model.config.branches == ("rwkv6", "kuramoto")
    model.save_pretrained(tmp_path)
    assert FusionForCausalLM.from_pretrained(tmp_path).config.branches == ("rwkv6", "kuramoto")


@pytest.mark.parametrize("branches", [("rwkv6", "kuramoto"), ("kuramoto", "mamba2")], ids=["rwkv-K", "K-mamba"])
def test_diagnostics_with_a_kuramoto_branch(branches):
    from phaselm.evals.diagnostics import DiagnosticsConfig, diagnose

    model = tiny(branches=branches, **KURAMOTO_TINY)
    first, second = model.config.branch_names
    recurrent = first if second == "kuramoto" else second
    result = diagnose(model, torch.randint(0, 40, (3000,)), DiagnosticsConfig(**TINY_DIAG))
    assert set(result["checks"]) == set(CHECKS) and result["model"]["branches"] == [first, second]
    ratio = result["checks"]["state_norm_ratio"]
    assert ratio["status"] == "n/a" and "Kuramoto branch" in ratio["why"]
    for name in set(CHECKS) - {"state_norm_ratio"}:
        assert result["checks"][name]["status"] in ("PASS", "WARN", "FAIL"), name
    assert set(result["state_norms"]) == {"positions", recurrent} and set(result["frozen_state"]) == {recurrent}
    assert set(result["checks"]["D4_information_flow"]["per_branch"]) == {first, second}
    assert 0 < result["balance"][f"{first}_share"] < 1 and result["balance"]["branches"] == [first, second]
    assert {first, second} <= set(result["depth"]) and result["gradients"]["norms"]["kuramoto"] > 0
    assert f"{second}_over_{first}" in result["gradients"]
    json.dumps(result)
