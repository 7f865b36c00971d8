"""The objectives: a Phase Core objective trains only the core, logs the observables and drives the drift controller;
a model with the Kuramoto token mixer logs the mixer's R (mixer_r_mean)."""

from __future__ import annotations

import pytest
import torch

from phaselm.graft import graft
from phaselm.losses import LossConfig
from phaselm.objectives import LanguageModelObjective, PhaseCoreObjective, step_metrics
from phaselm.observables import TONE_NAMES, DriftConfig
from phaselm.phase_core import PhaseCoreConfig
from phaselm.training import train
from tiny_models import VOCAB
from training_helpers import CFG, read_jsonl, token_streams


@pytest.fixture
def ids():
    return token_streams()


def test_core_training_moves_only_the_core_and_logs_observables(tmp_path, tiny_model, ids):
    model = tiny_model("mamba")
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    handle = graft(model, PhaseCoreConfig())
    core_before = {k: v.clone() for k, v in handle.core.state_dict().items()}
    drift = DriftConfig(enabled=True, brake_above=0.02, boost_below=0.01)  # R always "too high": BRAKE
    result = train(PhaseCoreObjective(handle, LossConfig(), drift), *ids, CFG, tmp_path / "run", "", progress=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    assert not torch.equal(handle.core.to_phase.weight, core_before["to_phase.weight"])
    assert handle.core.alpha.item() != 0.0
    # The controller acted: six BRAKEs scaled K by 0.9 each.
    assert result.drift_actions == {"BRAKE": 6}
    assert float(handle.core.coupling_scale) == pytest.approx(0.9**6)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("split") != "val"]
    for r in records:
        for key in ("ce", "uncertainty_reg", "presence", "tonal", "r_mean", "r_min", "r_max", "u_mean", "ru_mean",
                    "goldilocks_residence", "drift_action", "coupling_scale", "lr", "tokens_per_s"):
            assert key in r, key
        assert set(r["tones"]) == set(TONE_NAMES) and sum(r["tones"].values()) == CFG.batch_size * CFG.seq_len
        assert r["drift_counts"] == {"BRAKE": 2}
    assert "val_ppl_without_core" in result.evaluation


def test_drift_off_leaves_coupling_alone(tmp_path, tiny_model, ids):
    handle = graft(tiny_model("mamba"), PhaseCoreConfig())
    objective = PhaseCoreObjective(handle, LossConfig(), DriftConfig())
    result = train(objective, *ids, CFG, tmp_path / "run", "", progress=False)
    assert result.drift_actions == {} and float(handle.core.coupling_scale) == 1.0


def kuramoto_models() -> dict:
    """Tiny models with the Kuramoto token mixer: K-SSM's mixer and a fusion branch."""
    from phaselm.models.fusion import FusionConfig, FusionForCausalLM
    from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

    kuramoto = dict(kuramoto_heads=2, kuramoto_oscillators=4, kuramoto_key_dim=8)
    torch.manual_seed(0)
    return {
        "kssm": KSSMForCausalLM(KSSMConfig(vocab_size=VOCAB, hidden_size=32, n_layers=2, n_oscillators=8,
                                           n_harmonics=4, mixer="kuramoto", dropout=0.0, **kuramoto)),
        "fusion": FusionForCausalLM(FusionConfig(vocab_size=VOCAB, hidden_size=32, n_layers=2, rwkv_head_dim=16,
                                                 rwkv_mix_rank=4, rwkv_decay_rank=8, rwkv_chunk_size=4,
                                                 branches=("rwkv6", "kuramoto"), dropout=0.0, **kuramoto)),
    }


@pytest.mark.parametrize("name", ["kssm", "fusion"])
def test_the_kuramoto_mixers_r_is_logged_apart_from_the_banks(name, ids):
    model = kuramoto_models()[name].eval()  # deterministic, so the two forwards below agree
    x = ids[0][:16].view(2, 8)
    out = LanguageModelObjective(model)(x, x)
    expected = model(input_ids=x).mixer_orders  # (B, n_layers, T, heads)
    metrics = step_metrics(out)
    assert metrics["mixer_r_mean"] == pytest.approx(float(expected.detach().mean()), rel=1e-5)
    assert 0 < metrics["mixer_r_min"] <= metrics["mixer_r_mean"] <= metrics["mixer_r_max"] <= 1
    assert ("r_mean" in metrics) == (name == "kssm")  # the bank's R, only K-SSM has a bank


def test_models_without_the_kuramoto_mixer_log_no_mixer_r(ids):
    from phaselm.models.fusion import FusionConfig, FusionForCausalLM

    torch.manual_seed(0)
    model = FusionForCausalLM(FusionConfig(vocab_size=VOCAB, hidden_size=32, n_layers=1, rwkv_head_dim=16,
                                           mamba_head_dim=16, dropout=0.0))
    x = ids[0][:16].view(2, 8)
    assert not any(key.startswith("mixer_r") for key in step_metrics(LanguageModelObjective(model)(x, x)))


def test_training_a_fusion_kuramoto_branch_writes_mixer_r_to_metrics(tmp_path, ids):
    train(LanguageModelObjective(kuramoto_models()["fusion"]), *ids, CFG, tmp_path / "run", "", progress=False)
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("split") != "val" and "loss" in r]
    assert records and all(0 < r["mixer_r_mean"] <= 1 and "gate_rwkv_share" in r for r in records)
