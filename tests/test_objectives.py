"""The objectives: a Phase Core objective trains only the core, logs the observables and drives the drift controller."""

from __future__ import annotations

import pytest
import torch

from phaselm.graft import graft
from phaselm.losses import LossConfig
from phaselm.objectives import PhaseCoreObjective
from phaselm.observables import TONE_NAMES, DriftConfig
from phaselm.phase_core import PhaseCoreConfig
from phaselm.training import train
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
