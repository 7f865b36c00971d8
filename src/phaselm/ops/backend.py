"""One switch for every op's implementation: which one runs is decided here, logged and recorded.

Each op in :mod:`phaselm.ops` offers some of these implementations:

- ``"reference"``: plain PyTorch written for clarity (sequential where the math is); the
  ground truth the tests compare every other path with;
- ``"chunked"``: plain PyTorch, parallel over the sequence in chunks;
- ``"triton"``: our Triton kernels (CUDA tensors; any device under ``TRITON_INTERPRET=1``, which
  is how the CPU tests run them);
- ``"external"``: another library's kernels (fla, mamba_ssm) where they are installed.

``"auto"`` means the fastest implementation that is correct on the tensors' device; each op
states its own rule (an :class:`Op`'s ``auto``). The environment variable
``PHASELM_BACKEND_<OP>`` (``PHASELM_BACKEND_SELECTIVE_SCAN=reference``, say) refines ``"auto"``
only: a backend asked for in code or a recipe wins over it.

Every resolution outside a ``torch.compile`` trace is logged once per (op, backend, device) on
the ``phaselm.ops`` logger (the CLI prints it as a ``note:`` line; the plain reference that "auto"
picks on a CPU only at DEBUG level) and kept in :func:`chosen`, which run metadata and
``phaselm bench`` report, so which path ran is never silent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

try:  # Triton ships with CUDA builds of torch; the CPU test environment installs it for the interpreter.
    import triton
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None

# Words recipes and saved model configs used before there was one switch; they keep working.
ALIASES = {"fused": "triton", "fla": "external"}
logger = logging.getLogger("phaselm.ops")
_chosen: dict[str, str] = {}


@dataclass(frozen=True)
class Op:
    """An op's name, the implementations it offers, and its rule for ``"auto"`` on a device."""

    name: str
    offers: tuple[str, ...]
    auto: Callable[[torch.device], str]

    @property
    def env_var(self) -> str:
        """The environment variable that refines this op's ``"auto"``: ``PHASELM_BACKEND_<NAME>``."""
        return "PHASELM_BACKEND_" + self.name.upper()


def triton_runs_on(device: torch.device | str) -> bool:
    """Can our Triton kernels run on tensors of this device (CUDA, or anything when interpreting)?"""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or interpreting()


def triton_on_cuda(device: torch.device) -> str:
    """The usual rule for "auto": our Triton kernels on CUDA tensors, the reference elsewhere.

    The interpreter runs the kernels on any device, but only to test them: "auto" wants CUDA.
    """
    return "triton" if device.type == "cuda" and triton_runs_on(device) else "reference"


def interpreting() -> bool:
    """Is Triton running its CPU interpreter (``TRITON_INTERPRET=1``) instead of compiling?"""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(op: Op, requested: str, device: torch.device | str) -> str:
    """The implementation of ``op`` that runs for ``requested`` ("auto" or one of ``op.offers``)."""
    requested = ALIASES.get(requested, requested)
    if requested != "auto" and requested not in op.offers:
        raise ValueError(f"{op.name} backend must be 'auto' or one of {', '.join(op.offers)}, got {requested!r}")
    device = torch.device(device)
    backend = requested
    if backend == "auto":
        refined = os.environ.get(op.env_var, "")
        backend = op.auto(device) if refined in ("", "auto") else ALIASES.get(refined, refined)
        if backend not in op.offers:
            raise ValueError(f"{op.env_var}={backend!r}: {op.name} offers {', '.join(op.offers)}")
    if backend == "triton" and not triton_runs_on(device):
        raise RuntimeError(
            f"{op.name}: the Triton kernels need Triton and CUDA tensors (or TRITON_INTERPRET=1); "
            f"the tensors are on {device.type}: ask for 'auto' or one of {', '.join(b for b in op.offers if b != 'triton')}"
        )
    if not torch.compiler.is_compiling():
        key = f"{op.name}@{device.type}"
        if _chosen.get(key) != backend:
            _chosen[key] = backend
            routine = requested == "auto" and device.type == "cpu" and backend == "reference"
            logger.log(logging.DEBUG if routine else logging.INFO, "%s on %s: %s", op.name, device.type, backend)
    return backend


def accepted(op: Op) -> tuple[str, ...]:
    """Every word a config may give for ``op``: "auto", its implementations, and their aliases."""
    return ("auto", *op.offers, *(old for old, new in ALIASES.items() if new in op.offers))


def chosen() -> dict[str, str]:
    """``{"op@device": backend}`` for every op resolved so far in this process (latest choice)."""
    return dict(_chosen)
