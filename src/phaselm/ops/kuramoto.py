"""Kuramoto integration as fused Triton kernels: every position at once, or one position after another.

The Phase Core integrates N oscillators per position with ``steps`` Euler updates

    θ ← θ + dt·(ω + K·(S·cos θ − C·sin θ)),   C = mean_j cos θ_j,  S = mean_j sin θ_j

(:func:`phaselm.oscillators.integrate`, always in float32). Written in PyTorch each update is a
dozen small kernels over a (rows, N) tensor, and the recurrent mode (position t starts from the
wrapped phases of position t − 1 plus a kick) loops over positions in Python: T × steps × a dozen
launches per layer, which is what makes it slow on a GPU.

- :func:`kuramoto_integrate`: θ (..., N) → θ after ``steps`` updates, every row independently
  (the "token" mode). The kernel holds a (BLOCK_M rows × N) tile in registers through all the
  updates: one read and one write of θ per call.
- :func:`kuramoto_recurrent`: the recurrent mode's whole sequence in one launch. One program per
  BLOCK_B batch rows walks the positions with the carried phases in registers.

Backward never stores the Euler trajectory in memory: each kernel replays a row's (or a
position's) updates in registers, keeping cos θ, sin θ, C and S of every update, then runs the
updates backwards. With g = ∂L/∂θ after an update and θ before it,

    ∂L/∂θ_i = g_i − dt·K·g_i·(S·sin θ_i + C·cos θ_i) + (dt·K/N)·(G_c·cos θ_i + G_s·sin θ_i),
    G_c = Σ_j g_j cos θ_j,  G_s = Σ_j g_j sin θ_j,
    ∂L/∂ω  += dt·Σ_rows g,     ∂L/∂K += dt·Σ_i g_i·(S·cos θ_i − C·sin θ_i).

∂L/∂ω and ∂L/∂K are sums over rows: each program writes its own partial sum and PyTorch adds
them afterwards (no atomics, so the result does not depend on scheduling). The recurrent
backward walks the sequence in reverse; the carry entering position t is recomputed as
remainder(out[t − 1], 2π) from the saved output (the initial state at t = 0), so it saves no more
than the forward's own output.

Both fast paths are ``torch.library`` custom ops (``phaselm::kuramoto_*``), so torch.compile
treats them as opaque calls. Which implementation runs is decided by
:func:`phaselm.ops.backend.resolve`: "auto" takes the kernels for CUDA tensors when Triton is
importable, the PyTorch reference otherwise (``PHASELM_BACKEND_KURAMOTO_INTEGRATE`` and
``PHASELM_BACKEND_KURAMOTO_RECURRENT`` refine "auto"). On a machine without a GPU,
``TRITON_INTERPRET=1`` runs the kernels in Triton's interpreter, which is how the CPU tests check
them.

Over a long sequence the kernels and the reference part ways by whole radians, as the float32
and float64 references do: the kicked dynamics are chaotic, so any two roundings diverge (with
random kicks, visibly after ~50 positions). Each position's update is still the same to ~1e-6.

Measured once on an H200 (B = 8, T = 256, N = 16, 8 steps, mask on): forward + backward 1.6 ms
for the kernels against 1.2 s for the Python loop; the forward alone 0.42 ms.

Shapes: θ (..., N); kick (B, T, N); ω (N,); K a 0-dim tensor; mask (B, T); state (B, N).
"""

# No ``from __future__ import annotations``: torch.library.custom_op reads the ops' schemas from
# the annotations themselves.
import math

import torch

from .. import oscillators
from .backend import Op, resolve, triton_on_cuda

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

TWO_PI = 2 * math.pi


KURAMOTO_INTEGRATE = Op("kuramoto_integrate", ("reference", "triton"), auto=triton_on_cuda)
KURAMOTO_RECURRENT = Op("kuramoto_recurrent", ("reference", "triton"), auto=triton_on_cuda)


# --------------------------------------------------------------------------------------------
# Public API


def kuramoto_integrate(
    theta: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor | float,
    dt: float,
    steps: int,
    backend: str = "auto",
) -> torch.Tensor:
    """θ (..., N) after ``steps`` Euler updates of size ``dt``, float32, shape of ``theta``.

    ω (N,); ``coupling`` one K for every row (a 0-dim tensor, which may require grad, or a
    float). Equals :func:`phaselm.oscillators.integrate` (the "reference" backend).
    """
    if resolve(KURAMOTO_INTEGRATE, backend, theta.device) == "reference":
        return oscillators.integrate(theta, omega, coupling, dt, steps)
    _check_steps(steps)
    k = _coupling_tensor(coupling, theta)
    return torch.ops.phaselm.kuramoto_integrate_fwd(theta.float(), omega.float(), k, float(dt), int(steps))


def kuramoto_recurrent(
    kick: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor | float,
    dt: float,
    steps: int,
    mask: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Phase Core's recurrent dynamics over a whole sequence → (phases (B, T, N), final state (B, N)).

    kick (B, T, N): the phase kick of each position; ω (N,); ``coupling`` a 0-dim tensor or a
    float; ``mask`` (B, T), nonzero for real tokens (a padded position keeps the carried phases);
    ``initial_state`` (B, N), the carry entering position 0 (zeros when None). The phases are
    unwrapped, float32; the final state is wrapped to [0, 2π) (when T ≥ 1). Equals
    :func:`kuramoto_recurrent_reference` (the "reference" backend).
    """
    if kick.dim() != 3 or omega.shape != kick.shape[-1:]:
        raise ValueError(f"kick must be (B, T, N) and omega (N,), got {tuple(kick.shape)} and {tuple(omega.shape)}")
    if mask is not None and mask.shape != kick.shape[:2]:
        raise ValueError(f"mask must be (B, T) = {tuple(kick.shape[:2])}, got {tuple(mask.shape)}")
    if initial_state is not None and initial_state.shape != (kick.shape[0], kick.shape[2]):
        want = (kick.shape[0], kick.shape[2])
        raise ValueError(f"initial_state must be (B, N) = {want}, got {tuple(initial_state.shape)}")
    if resolve(KURAMOTO_RECURRENT, backend, kick.device) == "reference":
        return kuramoto_recurrent_reference(kick, omega, coupling, dt, steps, mask, initial_state)
    _check_steps(steps)
    k = _coupling_tensor(coupling, kick)
    keep = None if mask is None else (mask != 0).to(torch.int8)  # any dtype in, one the kernel reads
    state = None if initial_state is None else initial_state.float()
    return torch.ops.phaselm.kuramoto_recurrent_fwd(kick.float(), omega.float(), k, keep, state, float(dt), int(steps))


def kuramoto_recurrent_reference(
    kick: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor | float,
    dt: float,
    steps: int,
    mask: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrent loop position by position, built on :func:`phaselm.oscillators.integrate`."""
    with oscillators.full_precision(kick.device.type):
        prev = initial_state if initial_state is not None else torch.zeros_like(kick[:, 0])
        out = []
        for t in range(kick.shape[1]):
            new = oscillators.integrate(prev + kick[:, t], omega, coupling, dt, steps)
            if mask is not None:
                new = torch.where(mask[:, t, None].bool(), new, prev)  # padding keeps the carried phases
            out.append(new)
            # The carry is wrapped (no sin/cos changes, float32 stays precise over long
            # sequences); remainder's gradient is 1.
            prev = torch.remainder(new, TWO_PI)
        if not out:
            return kick.new_zeros(kick.shape), prev
        return torch.stack(out, dim=1), prev


def _check_steps(steps: int) -> None:
    # steps is a compile-time constant of the kernels (unrolled), so a large one would compile
    # a large kernel; the Phase Core uses 8.
    if not 0 <= int(steps) <= 64:
        raise ValueError(f"the Kuramoto kernels unroll 0..64 Euler steps, got steps={steps}")


def _coupling_tensor(coupling: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(coupling, torch.Tensor):
        return torch.tensor(float(coupling), dtype=torch.float32, device=like.device)
    if coupling.numel() != 1:
        raise ValueError(f"the Kuramoto kernels take one coupling K for all rows, got shape {tuple(coupling.shape)}")
    return coupling.float()


# --------------------------------------------------------------------------------------------
# Launch configuration (untuned)


def _integrate_blocks(n: int, elements: int, per_thread: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): a tile of about ``elements`` float32 values per program,
    ``per_thread`` of them in each thread (1 to 16 warps)."""
    block_n = triton.next_power_of_2(n)
    block_m = max(1, elements // block_n)
    return block_m, block_n, max(1, min(16, block_m * block_n // (32 * per_thread)))


def _recurrent_block_rows(batch: int, block_n: int) -> int:
    """Batch rows per program of the recurrent kernels.

    The walk over positions is latency-bound (each update waits on two reductions over N), so
    one row per program, one warp each, as long as there are programs enough to fill the GPU;
    a big batch packs a few rows per program instead.
    """
    return max(1, min(triton.next_power_of_2(triton.cdiv(batch, 512)), 1024 // block_n))


def _recurrent_warps(block_b: int, block_n: int) -> int:
    # One warp keeps the reductions over N in warp shuffles (no shared memory, no barrier).
    return max(1, min(8, block_b * block_n // 256))


# --------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("phaselm::kuramoto_integrate_fwd", mutates_args=())
def _integrate_fwd(
    theta: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor, dt: float, steps: int
) -> torch.Tensor:
    rows = theta.reshape(-1, theta.shape[-1]).contiguous()
    m, n = rows.shape
    out = torch.empty_like(rows)
    if rows.numel():
        block_m, block_n, warps = _integrate_blocks(n, 1024, per_thread=8)
        _integrate_fwd_kernel[(triton.cdiv(m, block_m),)](
            rows, omega.contiguous(), coupling.contiguous(), out, m, n, dt,
            STEPS=steps, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )
    return out.reshape(theta.shape)


@_integrate_fwd.register_fake
def _(theta, omega, coupling, dt, steps):
    return theta.new_empty(theta.shape)  # contiguous, like the kernel's output


@torch.library.custom_op("phaselm::kuramoto_integrate_bwd", mutates_args=())
def _integrate_bwd(
    grad: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, coupling: torch.Tensor, dt: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂θ (..., N), ∂L/∂ω (N,), ∂L/∂K shaped like ``coupling``) from ∂L/∂output ``grad``."""
    rows = theta.reshape(-1, theta.shape[-1]).contiguous()
    m, n = rows.shape
    grad_rows = grad.reshape(m, n).float().contiguous()
    d_theta = torch.empty_like(rows)
    # Backward keeps 2·steps tiles of the replayed updates in registers: half forward's tile,
    # and half as many of its values per thread.
    block_m, block_n, warps = _integrate_blocks(n, 512, per_thread=4)
    programs = triton.cdiv(m, block_m)
    d_omega = torch.zeros(programs, n, device=theta.device, dtype=torch.float32)
    d_k = torch.zeros(programs, device=theta.device, dtype=torch.float32)
    if rows.numel():
        _integrate_bwd_kernel[(programs,)](
            rows, grad_rows, omega.contiguous(), coupling.contiguous(), d_theta, d_omega, d_k, m, n, dt,
            STEPS=steps, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )
    return d_theta.reshape(theta.shape), d_omega.sum(0), d_k.sum().reshape(coupling.shape)


@_integrate_bwd.register_fake
def _(grad, theta, omega, coupling, dt, steps):
    return theta.new_empty(theta.shape), torch.empty_like(omega), torch.empty_like(coupling)


def _integrate_setup_context(ctx, inputs, output):
    theta, omega, coupling, dt, steps = inputs
    ctx.save_for_backward(theta, omega, coupling)
    ctx.dt, ctx.steps = dt, steps


def _integrate_backward(ctx, grad):
    theta, omega, coupling = ctx.saved_tensors
    d_theta, d_omega, d_k = torch.ops.phaselm.kuramoto_integrate_bwd(grad, theta, omega, coupling, ctx.dt, ctx.steps)
    return d_theta, d_omega, d_k, None, None


_integrate_fwd.register_autograd(_integrate_backward, setup_context=_integrate_setup_context)


@torch.library.custom_op("phaselm::kuramoto_recurrent_fwd", mutates_args=())
def _recurrent_fwd(
    kick: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor,
    mask: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    dt: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(phases (B, T, N), final state (B, N)); ``mask`` (B, T) nonzero for real positions."""
    kick = kick.contiguous()
    batch, length, n = kick.shape
    out = torch.empty_like(kick)
    final = torch.empty(batch, n, device=kick.device, dtype=torch.float32)
    block_n = triton.next_power_of_2(n)
    block_b = _recurrent_block_rows(batch, block_n)
    if batch:
        _recurrent_fwd_kernel[(triton.cdiv(batch, block_b),)](
            kick, omega.contiguous(), coupling.contiguous(),
            _contiguous_or_unused(mask, kick), _contiguous_or_unused(initial_state, kick),
            out, final, batch, length, n, dt,
            STEPS=steps, HAS_MASK=mask is not None, HAS_INITIAL=initial_state is not None,
            BLOCK_B=block_b, BLOCK_N=block_n, num_warps=_recurrent_warps(block_b, block_n),
        )
    return out, final


@_recurrent_fwd.register_fake
def _(kick, omega, coupling, mask, initial_state, dt, steps):
    return kick.new_empty(kick.shape), kick.new_empty(kick.shape[0], kick.shape[2])


@torch.library.custom_op("phaselm::kuramoto_recurrent_bwd", mutates_args=())
def _recurrent_bwd(
    grad_out: torch.Tensor,
    grad_final: torch.Tensor,
    out: torch.Tensor,
    kick: torch.Tensor,
    omega: torch.Tensor,
    coupling: torch.Tensor,
    mask: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    dt: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂kick (B, T, N), ∂L/∂ω (N,), ∂L/∂K like ``coupling``, ∂L/∂initial state (B, N))."""
    kick, out = kick.contiguous(), out.contiguous()
    batch, length, n = kick.shape
    grad_out, grad_final = grad_out.float().contiguous(), grad_final.float().contiguous()
    d_kick = torch.empty_like(kick)
    d_initial = torch.empty(batch, n, device=kick.device, dtype=torch.float32)
    block_n = triton.next_power_of_2(n)
    block_b = _recurrent_block_rows(batch, block_n)
    programs = triton.cdiv(batch, block_b)
    d_omega = torch.zeros(programs, n, device=kick.device, dtype=torch.float32)
    d_k = torch.zeros(programs, device=kick.device, dtype=torch.float32)
    if batch:
        _recurrent_bwd_kernel[(programs,)](
            kick, omega.contiguous(), coupling.contiguous(),
            _contiguous_or_unused(mask, kick), _contiguous_or_unused(initial_state, kick),
            out, grad_out, grad_final, d_kick, d_initial, d_omega, d_k, batch, length, n, dt,
            STEPS=steps, HAS_MASK=mask is not None, HAS_INITIAL=initial_state is not None,
            BLOCK_B=block_b, BLOCK_N=block_n, num_warps=_recurrent_warps(block_b, block_n),
        )
    return d_kick, d_omega.sum(0), d_k.sum().reshape(coupling.shape), d_initial


@_recurrent_bwd.register_fake
def _(grad_out, grad_final, out, kick, omega, coupling, mask, initial_state, dt, steps):
    state = kick.new_empty(kick.shape[0], kick.shape[2])
    return kick.new_empty(kick.shape), torch.empty_like(omega), torch.empty_like(coupling), state


def _recurrent_setup_context(ctx, inputs, output):
    kick, omega, coupling, mask, initial_state, dt, steps = inputs
    out, _ = output
    # The output is all backward needs of the forward: it recomputes each position's carry from it.
    ctx.save_for_backward(out, kick, omega, coupling, mask, initial_state)
    ctx.dt, ctx.steps = dt, steps


def _recurrent_backward(ctx, grad_out, grad_final):
    out, kick, omega, coupling, mask, initial_state = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if grad_final is None:
        grad_final = out.new_zeros(out.shape[0], out.shape[2])
    d_kick, d_omega, d_k, d_initial = torch.ops.phaselm.kuramoto_recurrent_bwd(
        grad_out, grad_final, out, kick, omega, coupling, mask, initial_state, ctx.dt, ctx.steps
    )
    return d_kick, d_omega, d_k, None, (None if initial_state is None else d_initial), None, None


_recurrent_fwd.register_autograd(_recurrent_backward, setup_context=_recurrent_setup_context)


def _contiguous_or_unused(tensor: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The tensor for the kernel, or a fresh 1-element stand-in its constexpr flags never read
    (fresh rather than another argument, so torch.compile cannot mistake an alias)."""
    return like.new_empty(1) if tensor is None else tensor.contiguous()


# --------------------------------------------------------------------------------------------
# Kernels

if triton is not None:

    @triton.jit
    def _euler_step(theta, omega, k, dt, col_ok, N):
        """One update of a (rows, lanes) tile → (new θ, cos θ, sin θ, C, S), cos/sin zero on padded lanes."""
        c = tl.where(col_ok[None, :], tl.cos(theta), 0.0)  # padded lanes stay out of the means
        s = tl.where(col_ok[None, :], tl.sin(theta), 0.0)
        mean_c = tl.sum(c, axis=1) / N
        mean_s = tl.sum(s, axis=1) / N
        theta = theta + dt * (omega[None, :] + k * (mean_s[:, None] * c - mean_c[:, None] * s))
        return theta, c, s, mean_c, mean_s

    @triton.jit
    def _euler_step_grad(g, c, s, mean_c, mean_s, k, dt, N):
        """∂L/∂θ after an update → (∂L/∂θ before it, ∂L/∂K of each row), from its cos, sin, C, S."""
        gc = tl.sum(g * c, axis=1)
        gs = tl.sum(g * s, axis=1)
        d_k = dt * (mean_s * gc - mean_c * gs)
        g = g - (dt * k) * g * (mean_s[:, None] * s + mean_c[:, None] * c)  # through cos θ_i, sin θ_i
        g += (dt * k / N) * (gc[:, None] * c + gs[:, None] * s)  # through C and S
        return g, d_k

    @triton.jit
    def _replay_and_backprop(theta, g, omega, k, dt, col_ok, N, STEPS: tl.constexpr):
        """Run ``STEPS`` updates from θ keeping each one's cos, sin, C, S in registers, then push
        ``g`` (∂L/∂θ after the last) back through them.

        Returns (∂L/∂θ, Σ over updates of g (∂L/∂ω is dt times its sum over rows), ∂L/∂K per row).
        """
        cs = ()
        ss = ()
        mcs = ()
        mss = ()
        for _ in tl.static_range(STEPS):
            theta, c, s, mean_c, mean_s = _euler_step(theta, omega, k, dt, col_ok, N)
            cs = cs + (c,)
            ss = ss + (s,)
            mcs = mcs + (mean_c,)
            mss = mss + (mean_s,)
        g_sum = tl.zeros_like(g)
        d_k = tl.zeros((g.shape[0],), dtype=tl.float32)
        # The updates in reverse. The index stays an inline expression of constants: a named
        # constexpr cannot be reassigned in an unrolled loop, and the interpreter turns every
        # plain assignment into a tensor, which cannot index a tuple.
        for j in tl.static_range(STEPS):
            g_sum += g
            g, d_k_step = _euler_step_grad(
                g, cs[STEPS - 1 - j], ss[STEPS - 1 - j], mcs[STEPS - 1 - j], mss[STEPS - 1 - j], k, dt, N
            )
            d_k += d_k_step
        return g, g_sum, d_k

    @triton.jit
    def _wrap(x):
        """torch.remainder(x, 2π) up to rounding: the carried phases, in [0, 2π)."""
        return x - 6.283185307179586 * tl.floor(x / 6.283185307179586)

    @triton.jit
    def _integrate_fwd_kernel(
        theta_ptr, omega_ptr, k_ptr, out_ptr, M, N, dt,
        STEPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        tile_ok = (rows < M)[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        theta = tl.load(theta_ptr + offsets, mask=tile_ok, other=0.0)
        omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0)
        k = tl.load(k_ptr)
        for _ in tl.static_range(STEPS):
            theta, _c, _s, _mean_c, _mean_s = _euler_step(theta, omega, k, dt, col_ok, N)
        tl.store(out_ptr + offsets, theta, mask=tile_ok)

    @triton.jit
    def _integrate_bwd_kernel(
        theta_ptr, grad_ptr, omega_ptr, k_ptr, d_theta_ptr, d_omega_ptr, d_k_ptr, M, N, dt,
        STEPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        tile_ok = (rows < M)[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        theta = tl.load(theta_ptr + offsets, mask=tile_ok, other=0.0)
        g = tl.load(grad_ptr + offsets, mask=tile_ok, other=0.0)  # zero on padding: adds nothing below
        omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0)
        k = tl.load(k_ptr)
        g, g_sum, d_k = _replay_and_backprop(theta, g, omega, k, dt, col_ok, N, STEPS)
        tl.store(d_theta_ptr + offsets, g, mask=tile_ok)
        # This program's share of the sums over rows; the host adds the programs' shares.
        tl.store(d_omega_ptr + pid * N + cols, dt * tl.sum(g_sum, axis=0), mask=col_ok)
        tl.store(d_k_ptr + pid, tl.sum(d_k, axis=0))

    @triton.jit
    def _recurrent_fwd_kernel(
        kick_ptr, omega_ptr, k_ptr, mask_ptr, initial_ptr, out_ptr, final_ptr, B, T, N, dt,
        STEPS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_INITIAL: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < B
        col_ok = cols < N
        tile_ok = row_ok[:, None] & col_ok[None, :]
        state_offsets = rows[:, None] * N + cols[None, :]
        first = rows.to(tl.int64)[:, None] * T * N + cols[None, :]  # position 0 of each row
        omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0)
        k = tl.load(k_ptr)
        if HAS_INITIAL:
            prev = tl.load(initial_ptr + state_offsets, mask=tile_ok, other=0.0)
        else:
            prev = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        # A while loop over the runtime length: one compilation for every T (Triton 3.6's
        # interpreter cannot run range() over a runtime bound with NumPy ≥ 2.4, triton#9171).
        t = 0
        while t < T:
            offsets = first + t * N
            theta = prev + tl.load(kick_ptr + offsets, mask=tile_ok, other=0.0)
            for _ in tl.static_range(STEPS):
                theta, _c, _s, _mean_c, _mean_s = _euler_step(theta, omega, k, dt, col_ok, N)
            if HAS_MASK:
                keep = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
                theta = tl.where(keep[:, None], theta, prev)  # padding keeps the carried phases
            tl.store(out_ptr + offsets, theta, mask=tile_ok)
            prev = _wrap(theta)
            t += 1
        tl.store(final_ptr + state_offsets, prev, mask=tile_ok)

    @triton.jit
    def _recurrent_bwd_kernel(
        kick_ptr, omega_ptr, k_ptr, mask_ptr, initial_ptr, out_ptr, grad_out_ptr, grad_final_ptr,
        d_kick_ptr, d_initial_ptr, d_omega_ptr, d_k_ptr, B, T, N, dt,
        STEPS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_INITIAL: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.arange(0, BLOCK_N)
        row_ok = rows < B
        col_ok = cols < N
        tile_ok = row_ok[:, None] & col_ok[None, :]
        state_offsets = rows[:, None] * N + cols[None, :]
        first = rows.to(tl.int64)[:, None] * T * N + cols[None, :]
        omega = tl.load(omega_ptr + cols, mask=col_ok, other=0.0)
        k = tl.load(k_ptr)
        if HAS_INITIAL:
            initial = tl.load(initial_ptr + state_offsets, mask=tile_ok, other=0.0)
        else:
            initial = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        # ∂L/∂(carry leaving position t); the final state is the carry leaving T − 1.
        g_carry = tl.load(grad_final_ptr + state_offsets, mask=tile_ok, other=0.0)
        g_sum = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        d_k = tl.zeros((BLOCK_B,), dtype=tl.float32)
        t = T - 1
        while t >= 0:
            offsets = first + t * N
            # The carry entering t, exactly as forward computed it: wrap(out[t − 1]), or the
            # initial state (unwrapped) at t = 0.
            before = tl.load(out_ptr + offsets - N, mask=tile_ok & (t > 0), other=0.0)
            carry = tl.where(t > 0, _wrap(before), initial)
            theta = carry + tl.load(kick_ptr + offsets, mask=tile_ok, other=0.0)
            # ∂L/∂out[t]: its own gradient plus the carry's (remainder passes gradients through).
            g_new = tl.load(grad_out_ptr + offsets, mask=tile_ok, other=0.0) + g_carry
            g = g_new
            if HAS_MASK:
                keep = (tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0)[:, None]
                g = tl.where(keep, g_new, 0.0)  # a padded position's updates were discarded
            g, g_sum_t, d_k_t = _replay_and_backprop(theta, g, omega, k, dt, col_ok, N, STEPS)
            g_sum += g_sum_t
            d_k += d_k_t
            tl.store(d_kick_ptr + offsets, g, mask=tile_ok)
            g_carry = g
            if HAS_MASK:
                g_carry = tl.where(keep, g, g_new)  # padding passed the carry straight through
            t -= 1
        tl.store(d_initial_ptr + state_offsets, g_carry, mask=tile_ok)
        tl.store(d_omega_ptr + pid * N + cols, dt * tl.sum(g_sum, axis=0), mask=col_ok)
        tl.store(d_k_ptr + pid, tl.sum(d_k, axis=0))
