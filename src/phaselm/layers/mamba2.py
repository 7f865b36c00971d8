"""Mamba-2 mixer (SSD form): the token mixer of K-SSM and of the fusion models' Mamba branch.

    in_proj(x) → z (gate), xBC (conv input), Δ (one per head)
    xBC → causal depthwise conv (window of k−1 past inputs carried across calls) → SiLU → x, B, C
    Δ = softplus(Δ + dt_bias);  log decay a = −exp(A_log)·Δ  (one scalar per head and position)
    y = SSD scan over (x·Δ, a, B, C) + D·x          (phaselm.ops.ssd.ssd; float32 decays and state,
                                                    the chunked path's matmuls in autocast's dtype)
    out = out_proj(RMSNorm(y · SiLU(z)))

The state is ``(conv window (B, C_conv, k−1), SSM state (B, H, P, N))``; a single new token with a
state takes the O(1) :func:`~phaselm.ops.ssd.ssd_step` path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.causal_conv1d import causal_conv1d, causal_conv1d_reference
from ..ops.ssd import BACKENDS as SCANS
from ..ops.ssd import ssd, ssd_step
from ..oscillators import full_precision


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer with ``heads = expand·hidden_size / head_dim`` heads and one shared B, C group.

    ``scan``: a backend of :func:`phaselm.ops.ssd.ssd` — "auto" (the default; the chunked parallel
    scan until the fused kernel is checked on a GPU), "fused" (Triton), "chunked" or "reference"
    (sequential; for checks).
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        expand: int = 2,
        head_dim: int = 64,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        scan: str = "auto",
    ):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}, got {scan!r}")
        d, n = hidden_size, state_size
        self.d_inner = expand * d
        self.heads = self.d_inner // head_dim
        self.head_dim, self.state_size, self.kernel = head_dim, n, conv_kernel
        self.chunk_size, self.scan = chunk_size, scan
        self.conv_channels = self.d_inner + 2 * n
        self.in_proj = nn.Linear(d, 2 * self.d_inner + 2 * n + self.heads, bias=False)
        self.conv = nn.Conv1d(self.conv_channels, self.conv_channels, conv_kernel, groups=self.conv_channels)
        # Mamba-2 initialisation: Δ between 1e-3 and 1e-1, A in [1, 16].
        dt = torch.exp(
            torch.rand(self.heads) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
            + torch.log(torch.tensor(1e-3))
        )
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = nn.RMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)

    def forward(self, hidden: torch.Tensor, state=None, mask: torch.Tensor | None = None):
        """hidden (B, T, d), state None or (window, ssm), mask None or (B, T) with 0 at padding
        → (out (B, T, d), (window, ssm)).

        A padded position enters the convolution as a zero input and leaves the SSM state
        untouched (no input, decay 1), so a left-padded row computes what it would alone.
        """
        batch, length, _ = hidden.shape
        z, xbc, dt = self.in_proj(hidden).split([self.d_inner, self.conv_channels, self.heads], dim=-1)
        if mask is not None:
            xbc = xbc * mask[..., None].to(xbc.dtype)
        window = state[0] if state is not None else hidden.new_zeros(batch, self.conv_channels, self.kernel - 1)
        # The window holds the last k−1 inputs, carried to the next call (only the tail is joined).
        tail = xbc[:, -(self.kernel - 1) :].transpose(1, 2)
        new_window = torch.cat([window, tail], dim=-1)[..., -(self.kernel - 1) :]
        weight = self.conv.weight[:, 0]  # (C, k): the depthwise Conv1d's taps
        if state is None:
            # A fresh sequence (training, prefill): the resolved op, Triton on CUDA, where
            # PyTorch's depthwise conv costs three kernels of its own per step (forward, input
            # and weight gradients).
            xbc = causal_conv1d(xbc, weight, self.conv.bias, silu=True)
        else:  # a continuation (cached steps): the reference is the one path that takes a window
            xbc = causal_conv1d_reference(xbc, weight, self.conv.bias, silu=True, initial_state=window)
        x, b, c = xbc.split([self.d_inner, self.state_size, self.state_size], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        if mask is not None:
            dt = dt * mask[..., None].float()  # Δ = 0: decay 1 and no input at padding
        log_decay = -torch.exp(self.A_log.float()) * dt
        x = x.reshape(batch, length, self.heads, self.head_dim)
        b = b[:, :, None, :].expand(-1, -1, self.heads, -1).float()
        c = c[:, :, None, :].expand(-1, -1, self.heads, -1).float()
        ssm = state[1] if state is not None else None
        x_dt = x.float() * dt[..., None]
        # The scan's decays and states stay in float32 under bf16 autocast (as Mamba's kernels
        # keep them); only the chunked path's matmuls (C·Bᵀ, scores·X, …) take autocast's dtype,
        # which is what reaches the tensor cores.
        device_type = hidden.device.type
        matmul_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        with full_precision(device_type):
            if length == 1 and ssm is not None:
                y, ssm = ssd_step(ssm, x_dt[:, 0], log_decay[:, 0], b[:, 0], c[:, 0])
                y = y[:, None]
            else:  # every scan, the reference included, goes through the one resolver (logged, recorded)
                y, ssm = ssd(
                    x_dt, log_decay, b, c, ssm, backend=self.scan, chunk_size=self.chunk_size, matmul_dtype=matmul_dtype
                )
        y = (y + x.float() * self.D[:, None]).to(hidden.dtype).reshape(batch, length, self.d_inner)
        return self.out_proj(self.norm(y * F.silu(z))), (new_window, ssm)
