"""The fused bistable bank equals the PyTorch bank (the reference), forward and every gradient.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run the compiled kernels.
"""

from __future__ import annotations

import logging

import pytest
import torch

from phaselm.bistable import BankConfig, BistableBank
from phaselm.ops import bistable_bank as bank_ops

requires_triton = pytest.mark.skipif(bank_ops.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 both ways; the fused harmonics recurrence loses about an ulp per harmonic (as
# ops/harmonics.py), so 1e-4 relative leaves room, while a wrong or missing term is ~1e-2 or more.
TOLERANCE = 1e-4


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def twin_banks(cfg: BankConfig, hidden_size=12, seed=0):
    torch.manual_seed(seed)
    reference = BistableBank(hidden_size, cfg).to(DEVICE)
    with torch.no_grad():  # a map spread enough that some rows clamp at each bound and some do not
        reference.to_params.weight.normal_(std=0.8)
        reference.spread.fill_(-0.3)  # negative: |δ|'s gradient carries the sign
        # Away from the evenly spread start (where every Z_n ≈ 0 and |Z_n| = 1e-6 is all ε), so
        # the comparison measures the harmonics rather than rounding around zero.
        reference.omega0.normal_(std=1.0)
    fused = BistableBank(hidden_size, cfg).to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    reference.backend, fused.backend = "reference", "triton"
    return reference, fused


def run(bank, hidden, seed=1):
    torch.manual_seed(seed)  # the same noise draw for both banks
    leaf = hidden.clone().requires_grad_()
    out = bank(leaf)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=g).to(DEVICE) for t in (out.out, out.order, out.u, out.delta, out.reg)]
    loss = sum((t * w).sum() for t, w in zip((out.out, out.order, out.u, out.delta, out.reg), weights))
    names = ["hidden", *(name for name, _ in bank.named_parameters())]
    grads = torch.autograd.grad(loss, [leaf, *bank.parameters()], allow_unused=True)  # δ: unused without noise
    return out, dict(zip(names, grads))


@requires_triton
@pytest.mark.parametrize(
    "shape,n_oscillators,n_harmonics,bistable,training,through_hidden",
    [
        ((2, 7), 12, 5, True, False, False),  # ragged: 14 rows, N not a power of two
        ((1, 19), 16, 4, True, True, True),  # noise drawn (training), regulariser through the hidden state
        ((3, 5), 10, 3, False, True, False),  # monostable: u not clamped
    ],
)
def test_fused_bank_matches_the_reference_forward_and_every_gradient(
    shape, n_oscillators, n_harmonics, bistable, training, through_hidden
):
    cfg = BankConfig(
        n_oscillators=n_oscillators, n_harmonics=n_harmonics, bistable=bistable, reg_through_hidden=through_hidden
    )
    reference, fused = twin_banks(cfg)
    reference.train(training), fused.train(training)
    hidden = torch.randn(*shape, 12, device=DEVICE)
    want, want_grads = run(reference, hidden)
    got, got_grads = run(fused, hidden)
    if bistable:  # the inputs reach both sides of the clamp and its inside
        assert (
            (want.u == cfg.u_min).any()
            and (want.u == cfg.u_max).any()
            and ((want.u > cfg.u_min) & (want.u < cfg.u_max)).any()
        )
    for name in ("out", "order", "u", "delta", "reg"):
        assert relative_error(getattr(got, name), getattr(want, name)) <= TOLERANCE, name
    assert set(got_grads) == {
        "hidden",
        "to_params.weight",
        "to_params.bias",
        "omega0",
        "spread",
        "readout.weight",
        "readout.bias",
    }
    for name, want_grad in want_grads.items():
        if name == "spread" and not training:
            assert want_grad is None and got_grads[name] in (None, 0)
            continue
        assert relative_error(got_grads[name], want_grad) <= TOLERANCE, name


@requires_triton
def test_installed_transforms_take_the_reference(caplog, monkeypatch):
    import phaselm.bistable as bistable_module

    cfg = BankConfig(n_oscillators=8, n_harmonics=3)
    reference, fused = twin_banks(cfg)
    reference.eval(), fused.eval()
    hidden = torch.randn(2, 3, 12, device=DEVICE)
    for bank in (reference, fused):
        bank.phase_transforms.append(lambda theta: theta * 0.0)  # every phase pinned: R = 1
        bank.coupling_transforms.append(lambda k: k * 3.0)
    called = []
    original = bank_ops.bistable_bank_triton
    # The layer calls the kernel through the name it imported: patch that one.
    monkeypatch.setattr(bistable_module, "bistable_bank_triton", lambda *a, **k: called.append(1) or original(*a, **k))
    got = fused(hidden)
    want = reference(hidden)
    assert torch.equal(got.out, want.out) and torch.allclose(got.order, torch.ones_like(got.order))
    assert not called
    fused.phase_transforms.clear(), fused.coupling_transforms.clear()
    with caplog.at_level(logging.INFO, logger="phaselm.ops"):
        fused(hidden)
    assert called, "without transforms the fused kernel runs (and the patch above sees it)"
    assert f"bistable_bank on {torch.device(DEVICE).type}: triton" in caplog.text


@requires_triton
def test_fused_bank_compiles_without_a_graph_break():
    cfg = BankConfig(n_oscillators=8, n_harmonics=3)
    _, fused = twin_banks(cfg)
    fused.eval()
    hidden = torch.randn(2, 3, 12, device=DEVICE)
    compiled = torch.compile(lambda h: fused(h).out.sum(), backend="eager", fullgraph=True)
    assert torch.equal(compiled(hidden), fused(hidden).out.sum())


@requires_triton
@pytest.mark.parametrize("with_noise", [False, True])
def test_bank_custom_ops_pass_opcheck(with_noise):
    g = torch.Generator().manual_seed(0)
    rows, n, harmonics = 5, 6, 3
    params = torch.randn(rows, 10, generator=g).to(DEVICE)
    centre, omega0 = torch.randn(rows, generator=g).to(DEVICE), torch.randn(n, generator=g).to(DEVICE)
    spread = torch.tensor([0.2], device=DEVICE)
    noise = torch.randn(rows, n, generator=g).to(DEVICE) if with_noise else None
    settings = (harmonics, True, 0.1, 10.0, 1e-6)
    fwd_args = (
        params.requires_grad_(),
        centre.requires_grad_(),
        omega0.requires_grad_(),
        spread.requires_grad_(),
        noise,
        *settings,
    )
    torch.library.opcheck(torch.ops.phaselm.bistable_bank_fwd.default, fwd_args)
    delta, u, features = torch.ops.phaselm.bistable_bank_fwd(*fwd_args)
    bwd_args = (*(t.detach() for t in (params, centre, omega0, spread)), noise, features.detach(),
                torch.randn_like(delta), torch.randn_like(u), torch.randn_like(features), *settings)
    torch.library.opcheck(torch.ops.phaselm.bistable_bank_bwd.default, bwd_args)
