"""The Kuramoto kernels equal the PyTorch references, forward and gradients; the recurrent reference
is the Phase Core's recurrent dynamics.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run the compiled kernels.
"""

from __future__ import annotations

import math

import pytest
import torch

from phaselm import oscillators
from phaselm.ops import kuramoto as ops
from phaselm.ops.backend import resolve
from phaselm.phase_core import PhaseCore, PhaseCoreConfig

requires_triton = pytest.mark.skipif(ops.triton is None, reason="Triton is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DT = 0.1

# The kernels compute in float32 and are compared with the float64 reference, as max |error| over
# max |reference|. The interpreter's kernels land at ≤ 2e-6 here (the errors of a float32 Euler
# trajectory, a little amplified through a recurrent sequence); a wrong or missing term is ~1e-2.
# Sequences stay short: the kicked dynamics are chaotic, and over a long one any two float32
# computations part ways (with random kicks, the float32 and float64 references differ by 1e-5
# after 16 positions and by whole radians after 80), so elementwise comparison means nothing there.
TOLERANCE = 1e-5


def integrate64(theta, omega, coupling, dt, steps, drive=None):
    """oscillators.integrate without its float32 cast: the same updates in the inputs' dtype."""
    drift = omega if drive is None else omega + drive
    for _ in range(steps):
        theta = theta + dt * oscillators.velocity(theta, drift, coupling)
    return theta


@pytest.fixture
def float64_reference(monkeypatch):
    """The references (built on oscillators.integrate) compute in float64 for float64 inputs."""
    monkeypatch.setattr(oscillators, "integrate", integrate64)


@pytest.fixture
def two_rows_per_program(monkeypatch):
    """Pack two batch rows into each recurrent program, so an odd batch leaves one block ragged."""
    monkeypatch.setattr(ops, "_recurrent_block_rows", lambda batch, block_n: 2)


def relative_error(got: torch.Tensor, want: torch.Tensor | None) -> float:
    """max |got − want| / max |want| (float64, on the CPU); a missing or zero ``want`` needs exact zeros."""
    got = got.detach().double().cpu()
    want = torch.zeros_like(got) if want is None else want.detach().double().cpu()
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def float32_leaves(*tensors):
    return [t.detach().float().to(DEVICE).requires_grad_() for t in tensors]


def float64_leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def random_inputs(shape, n, seed=0):
    """Phases over several turns, ω ~ N(0, 1), K above the sync threshold, loss weights."""
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(*shape, n, generator=g, dtype=torch.float64) - 0.5) * 8
    omega = torch.randn(n, generator=g, dtype=torch.float64)
    coupling = torch.tensor(1.7, dtype=torch.float64)
    weights = torch.randn(*shape, n, generator=g, dtype=torch.float64)
    return theta, omega, coupling, weights


def test_float64_helper_is_oscillators_integrate():
    theta, omega, coupling, _ = random_inputs((4,), 7)
    theta, omega, coupling = theta.float(), omega.float(), coupling.float()
    assert torch.equal(integrate64(theta, omega, coupling, DT, 8), oscillators.integrate(theta, omega, coupling, DT, 8))


# --------------------------------------------------------------------------------------------
# kuramoto_integrate


@requires_triton
@pytest.mark.parametrize("n", [5, 16])
@pytest.mark.parametrize("steps", [0, 1, 8])
def test_integrate_kernel_matches_reference(float64_reference, n, steps):
    # 3 × 50 = 150 rows: not a multiple of any block, and several programs in each direction.
    theta, omega, coupling, weights = random_inputs((3, 50), n)
    exact = float64_leaves(theta, omega, coupling)
    want = ops.kuramoto_integrate(*exact, DT, steps, backend="reference")
    assert want.dtype == torch.float64  # the float64 reference really ran in float64
    grads_want = torch.autograd.grad((want * weights).sum(), exact, allow_unused=True)

    fast = float32_leaves(theta, omega, coupling)
    got = ops.kuramoto_integrate(*fast, DT, steps, backend="triton")
    grads = torch.autograd.grad((got * weights.float().to(DEVICE)).sum(), fast)

    assert got.shape == theta.shape and got.dtype == torch.float32
    for name, g, w in zip(["theta", "d theta", "d omega", "d coupling"], [got, *grads], [want, *grads_want]):
        assert relative_error(g, w) <= TOLERANCE, name


@requires_triton
def test_integrate_kernel_takes_a_float_coupling_and_any_leading_shape():
    theta, omega, _, _ = random_inputs((2, 3, 4), 6)
    theta, omega = theta.float().to(DEVICE), omega.float().to(DEVICE)
    got = ops.kuramoto_integrate(theta, omega, 2.0, DT, 8, backend="triton")
    want = oscillators.integrate(theta, omega, 2.0, DT, 8)
    assert relative_error(got, want) <= TOLERANCE


# --------------------------------------------------------------------------------------------
# kuramoto_recurrent

BATCH = 3


def padding_mask(length: int) -> torch.Tensor:
    """(3, T): a full row, a row with zeros in the middle, a left-padded row."""
    mask = torch.ones(BATCH, length, dtype=torch.long)
    if length == 1:
        mask[1] = 0
        return mask
    mask[1, length // 3 : length // 3 + 2] = 0
    mask[1, -1] = 0
    mask[2, : length // 2] = 0
    return mask


def recurrent_case(n, length, seed=0):
    kick, omega, coupling, weights = random_inputs((BATCH, length), n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    initial = (torch.rand(BATCH, n, generator=g, dtype=torch.float64) - 0.5) * 20  # not wrapped
    final_weights = torch.randn(BATCH, n, generator=g, dtype=torch.float64)
    return kick, omega, coupling, initial, weights, final_weights


@requires_triton
@pytest.mark.parametrize("n", [5, 16])
@pytest.mark.parametrize("steps", [0, 1, 8])
@pytest.mark.parametrize(
    "length,masked,with_initial",
    [(1, False, False), (7, True, True), (6, False, True), (5, True, False)],
)
def test_recurrent_kernel_matches_reference(
    float64_reference, two_rows_per_program, n, steps, length, masked, with_initial
):
    kick, omega, coupling, initial, weights, final_weights = recurrent_case(n, length)
    mask = padding_mask(length) if masked else None
    leaves = (kick, omega, coupling) + ((initial,) if with_initial else ())

    exact = float64_leaves(*leaves)
    want, want_final = ops.kuramoto_recurrent(
        *exact[:3], DT, steps, mask, exact[3] if with_initial else None, backend="reference"
    )
    assert want.dtype == torch.float64
    loss = (want * weights).sum() + (want_final * final_weights).sum()
    grads_want = torch.autograd.grad(loss, exact, allow_unused=True)

    fast = float32_leaves(*leaves)
    mask = None if mask is None else mask.to(DEVICE)
    got, got_final = ops.kuramoto_recurrent(
        *fast[:3], DT, steps, mask, fast[3] if with_initial else None, backend="triton"
    )
    loss = (got * weights.float().to(DEVICE)).sum() + (got_final * final_weights.float().to(DEVICE)).sum()
    grads = torch.autograd.grad(loss, fast)

    assert got.shape == kick.shape and got_final.shape == (BATCH, n)
    names = ["phases", "final state", "d kick", "d omega", "d coupling", "d initial state"]
    for name, g, w in zip(names, [got, got_final, *grads], [want, want_final, *grads_want]):
        assert relative_error(g, w) <= TOLERANCE, name


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("with_initial", [False, True])
def test_left_padding_leaves_a_row_as_it_would_be_alone(backend, with_initial):
    n, length, pad = 5, 5, 3
    kick, omega, coupling, initial, _, _ = recurrent_case(n, length + pad)
    kick, omega, coupling = kick.float().to(DEVICE), omega.float().to(DEVICE), coupling.float().to(DEVICE)
    # A carried state comes wrapped (it is a final state); padding wraps nothing else.
    state = torch.remainder(initial[:1].float(), 2 * math.pi).to(DEVICE) if with_initial else None
    alone = kick[:1, pad:].clone().requires_grad_()
    padded = kick[:1].clone().requires_grad_()  # its first `pad` kicks are noise the mask must drop
    mask = torch.tensor([[0] * pad + [1] * length], device=DEVICE)

    out_alone, final_alone = ops.kuramoto_recurrent(alone, omega, coupling, DT, 8, None, state, backend=backend)
    out_padded, final_padded = ops.kuramoto_recurrent(padded, omega, coupling, DT, 8, mask, state, backend=backend)
    torch.testing.assert_close(out_padded[:, pad:], out_alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(final_padded, final_alone, atol=1e-6, rtol=0)
    carried = torch.zeros(1, n, device=DEVICE) if state is None else state
    assert torch.equal(out_padded[:, :pad], carried[:, None].expand(1, pad, n))  # padding keeps the carry

    weights = torch.randn(1, length, n, device=DEVICE)
    (d_alone,) = torch.autograd.grad((out_alone * weights).sum(), alone)
    (d_padded,) = torch.autograd.grad((out_padded[:, pad:] * weights).sum(), padded)
    torch.testing.assert_close(d_padded[:, pad:], d_alone, atol=1e-6, rtol=0)
    assert torch.equal(d_padded[:, :pad], torch.zeros_like(d_padded[:, :pad]))


@pytest.mark.parametrize("with_state", [False, True])
def test_reference_is_the_phase_core_recurrent_dynamics(with_state):
    # On the CPU, where the kick's matrix product rounds the same way each time: equal bit for bit.
    core = PhaseCore(PhaseCoreConfig(hidden_size=8, n_oscillators=5, mode="recurrent"))
    hidden = torch.randn(3, 7, 8)
    state = torch.rand(3, 5) * 2 * math.pi if with_state else None
    mask = padding_mask(7)
    want, want_state = core.dynamics(hidden, state, mask)

    kick = core.to_phase(core.norm(hidden))
    cfg = core.config
    got, got_state = ops.kuramoto_recurrent_reference(kick, core.omega, core.coupling, cfg.dt, cfg.steps, mask, state)
    assert torch.equal(got, want) and torch.equal(got_state, want_state)
    if ops.triton is not None:
        core, kick = core.to(DEVICE), kick.to(DEVICE)
        state = None if state is None else state.to(DEVICE)
        fast, fast_state = ops.kuramoto_recurrent(
            kick, core.omega, core.coupling, cfg.dt, cfg.steps, mask.to(DEVICE), state, backend="triton"
        )
        assert relative_error(fast, want) <= TOLERANCE and relative_error(fast_state, want_state) <= TOLERANCE


# --------------------------------------------------------------------------------------------
# Custom ops and dispatch


@requires_triton
def test_custom_ops_pass_opcheck():
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False):
        return (torch.rand(*shape, generator=g) * 4 - 2).to(DEVICE).requires_grad_(grad)

    n, batch, length, params = 5, 2, 3, (DT, 2)
    theta, omega = rand(2, 3, n, grad=True), rand(n, grad=True)
    kick, initial = rand(batch, length, n, grad=True), rand(batch, n, grad=True)
    coupling = torch.tensor(1.5, device=DEVICE, requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [1, 0, 1]], dtype=torch.int8, device=DEVICE)
    torch.library.opcheck(torch.ops.phaselm.kuramoto_integrate_fwd, (theta, omega, coupling, *params))
    for m, s in ((mask, initial), (None, None)):
        torch.library.opcheck(torch.ops.phaselm.kuramoto_recurrent_fwd, (kick, omega, coupling, m, s, *params))

    theta, omega, coupling, kick, initial = (t.detach() for t in (theta, omega, coupling, kick, initial))
    torch.library.opcheck(torch.ops.phaselm.kuramoto_integrate_bwd, (rand(2, 3, n), theta, omega, coupling, *params))
    out, _ = torch.ops.phaselm.kuramoto_recurrent_fwd(kick, omega, coupling, mask, initial, *params)
    grads = (rand(batch, length, n), rand(batch, n))
    args = (*grads, out, kick, omega, coupling, mask, initial, *params)
    torch.library.opcheck(torch.ops.phaselm.kuramoto_recurrent_bwd, args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice for CPU tensors")
def test_auto_resolves_to_the_reference_on_cpu(monkeypatch):
    for op in (ops.KURAMOTO_INTEGRATE, ops.KURAMOTO_RECURRENT):
        monkeypatch.delenv(op.env_var, raising=False)
        assert resolve(op, "auto", "cpu") == "reference"  # even under the interpreter
    kick, omega, coupling, initial, _, _ = (t.float() for t in recurrent_case(4, 3))
    got = ops.kuramoto_integrate(kick, omega, coupling, DT, 8)
    assert torch.equal(got, oscillators.integrate(kick, omega, coupling, DT, 8))
    got = ops.kuramoto_recurrent(kick, omega, coupling, DT, 8, None, initial)
    want = ops.kuramoto_recurrent_reference(kick, omega, coupling, DT, 8, None, initial)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_unknown_backend_is_refused():
    theta, omega, coupling, _ = random_inputs((2,), 3)
    with pytest.raises(ValueError, match="backend"):
        ops.kuramoto_integrate(theta, omega, coupling, DT, 1, backend="magic")
    with pytest.raises(ValueError, match="backend"):
        ops.kuramoto_recurrent(theta[None], omega, coupling, DT, 1, backend="magic")
