"""Declared intervention sites: every model class PhaseLM ships says where it can be intervened
on, a model that declares nothing has no sites (one-line error), and the Phase Core's transform
slots act exactly as the bank's do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import phaselm.models  # noqa: F401  (imports every shipped model class)
from phaselm.bistable import BankConfig, BistableBank
from phaselm.graft import Graft, graft
from phaselm.interventions import (
    INSTALLERS,
    KINDS,
    Intervenable,
    Intervention,
    SiteMap,
    intervene,
    measure,
    structure,
)
from phaselm.models.fusion import FusionConfig, FusionForCausalLM
from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM
from phaselm.models.recurrent import RecurrentLM
from phaselm.oscillators import order_parameter
from phaselm.phase_core import PhaseCore, PhaseCoreConfig

pytestmark = pytest.mark.usefixtures("one_thread")

KSSM = dict(vocab_size=40, hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)
FUSION = dict(
    vocab_size=40,
    hidden_size=32,
    n_layers=2,
    rwkv_head_dim=16,
    rwkv_mix_rank=4,
    rwkv_decay_rank=8,
    rwkv_chunk_size=4,
    mamba_state_size=8,
    mamba_head_dim=16,
    mamba_chunk_size=8,
)


def all_subclasses(cls) -> set:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


def test_every_shipped_model_class_declares_its_sites():
    shipped = all_subclasses(RecurrentLM) | {Graft, BistableBank}
    assert {KSSMForCausalLM, FusionForCausalLM} <= shipped
    for cls in shipped:
        assert issubclass(cls, Intervenable), f"{cls.__name__} declares no intervention sites"
        assert cls.intervention_sites is not Intervenable.intervention_sites, (
            f"{cls.__name__} does not override intervention_sites"
        )


def test_the_declarations_of_kssm_fusion_and_a_bank():
    torch.manual_seed(0)
    kssm = KSSMForCausalLM(KSSMConfig(**KSSM)).eval()
    declared = kssm.intervention_sites()
    assert isinstance(declared, SiteMap) and declared.model is kssm
    assert [(s.layer, s.kind, s.module, s.n_oscillators) for s in declared.oscillators] == [
        (i, "bank", b.bank, 8) for i, b in enumerate(kssm.blocks)
    ]
    assert list(declared.branches) == ["bank", "mixer", "mlp"]
    fusion = FusionForCausalLM(FusionConfig(**FUSION)).eval()
    assert fusion.intervention_sites().oscillators == [] and structure(fusion).sites == []
    bank = BistableBank(16, BankConfig(n_oscillators=6, n_harmonics=2))
    assert [(s.kind, s.module, s.n_oscillators) for s in structure(bank).sites] == [("bank", bank, 6)]


def test_a_module_holding_declaring_modules_gets_their_sites():
    torch.manual_seed(0)
    inner = KSSMForCausalLM(KSSMConfig(**KSSM)).eval()
    wrapper = nn.ModuleDict({"lm": inner})
    info = structure(wrapper)
    assert [(s.layer, s.module) for s in info.sites] == [(i, b.bank) for i, b in enumerate(inner.blocks)]
    assert list(info.branches) == ["bank", "mixer", "mlp"]


def test_an_undeclared_model_has_no_oscillators_even_if_it_looks_like_one(raises_phaselm):
    class LooksLikeABank(nn.Module):  # the attributes the old sniffing looked for, but no declaration
        def __init__(self):
            super().__init__()
            self.phase_transforms: list = []
            self.coupling_transforms: list = []
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

    for model in (nn.Sequential(nn.Linear(4, 4)), LooksLikeABank()):
        info = structure(model)
        assert info.sites == [] and info.branches == {}
        with raises_phaselm(
            rf"intervention 'sync' needs a model with oscillators .*; this {type(model).__name__} model "
            r"has no oscillators \(it declares no oscillator sites\)$"
        ), intervene(model, Intervention("sync")):
            pass
        with raises_phaselm("has none"), measure(model):
            pass


def test_an_undeclared_hf_model_is_refused_in_one_line(tiny_model, raises_phaselm):
    with raises_phaselm(r"this gpt2 model has no oscillators"):
        with intervene(tiny_model("gpt2"), Intervention("pin", 0.5)):
            pass


def test_every_act_has_one_installer():
    assert {kind.act for kind in KINDS.values()} == set(INSTALLERS)


# ---------------------------------------------------------------- the Phase Core's slots


@pytest.mark.parametrize("mode", ["token", "recurrent"])
def test_core_phase_slot_forces_the_readout_and_keeps_the_free_state(mode):
    torch.manual_seed(0)
    core = PhaseCore(PhaseCoreConfig(hidden_size=12, n_oscillators=8, mode=mode, alpha_init=2.0, steps=3)).eval()
    hidden = torch.randn(2, 5, 12)
    with torch.no_grad():
        free = core(hidden)
        shift = lambda theta: theta * 0.5 + 1.0  # noqa: E731
        core.phase_transforms.append(shift)
        forced = core(hidden)
        core.phase_transforms.clear()
    phases = shift(free.phases)
    assert torch.equal(forced.phases, phases)
    assert torch.equal(forced.order, order_parameter(phases))
    assert torch.equal(forced.hidden, core.modulate(hidden, order_parameter(phases), phases))
    if mode == "recurrent":
        assert torch.equal(forced.state, free.state)  # the carried phases continue from the free dynamics
    assert torch.equal(core(hidden).hidden, free.hidden)  # an empty slot: the computation is unchanged


def test_core_coupling_slot_equals_a_core_with_that_coupling():
    torch.manual_seed(0)
    core = PhaseCore(PhaseCoreConfig(hidden_size=12, n_oscillators=8, coupling=1.0, alpha_init=2.0)).eval()
    scaled = PhaseCore(PhaseCoreConfig(hidden_size=12, n_oscillators=8, coupling=2.5, alpha_init=2.0)).eval()
    scaled.load_state_dict({k: v for k, v in core.state_dict().items() if k != "log_coupling"}, strict=False)
    hidden = torch.randn(2, 5, 12)
    with torch.no_grad():
        core.coupling_transforms.append(lambda k: k * 2.5)
        out = core(hidden)
        core.coupling_transforms.clear()
        assert not torch.allclose(out.order, core(hidden).order)
        assert torch.allclose(out.phases, scaled(hidden).phases, atol=1e-5)


def test_graft_interventions_use_the_core_slots_and_no_hooks(tiny_model):
    model = tiny_model("mamba")
    handle = graft(model, PhaseCoreConfig(n_oscillators=8, alpha_init=2.0, coupling=1.0), layer=1)
    try:
        hooks_before = sum(len(m._forward_hooks) for m in handle.core.modules())
        with intervene(model, Intervention("pin", 0.3), Intervention("k_scale", 0.5)):
            assert len(handle.core.phase_transforms) == 1 and len(handle.core.coupling_transforms) == 1
            assert sum(len(m._forward_hooks) for m in handle.core.modules()) == hooks_before
            assert float(handle.core.coupling_scale) == 1.0  # K is scaled in the slot, not by mutating the buffer
        assert handle.core.phase_transforms == [] and handle.core.coupling_transforms == []
    finally:
        handle.remove()
