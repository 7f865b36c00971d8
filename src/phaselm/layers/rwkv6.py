"""RWKV-6 ("Finch") time-mix layer (Peng et al. 2024, "Eagle and Finch"), readable PyTorch.

For input x (B, T, d) and x' = x shifted one position right (the previous token; at the start of
a sequence the last token of the previous call, or zeros):

    δ = x' − x
    m_w, m_k, m_v, m_r, m_g = LoRA_mix(x + δ·μ_x)              data-dependent lerp amounts ("ddlerp")
    x_∗ = x + δ·(μ_∗ + m_∗)                                    for ∗ ∈ {w, k, v, r, g}
    r, k, v = W_r x_r, W_k x_k, W_v x_v;   g = SiLU(W_g x_g)
    w = −exp(decay + LoRA_decay(x_w))                          log decay per channel, data-dependent
    y = RWKV6(r, k, v, w, u)                                   per head (phaselm.ops.rwkv6), bonus u
    out = W_o(GroupNorm_heads(y) · g)

with LoRA(x) = tanh(x·A)·B. Heads: ``hidden_size / head_dim``; keys and values have the hidden
size (RWKV-6's attention dimension = model dimension). The initialisation follows the official
RWKV-6 code (layer-dependent lerp amounts, decay speeds from −6 to −1, zig-zag bonus, LoRA A = 0);
the linear projections are initialised by the model that owns the layer.

The carried state is ``(last input token (B, d), wkv state (B, H, K, V))``: enough to continue the
sequence exactly, one token at a time in O(1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.rwkv6 import BACKENDS, rwkv6, rwkv6_step
from ..oscillators import full_precision

MIX_NAMES = ("w", "k", "v", "r", "g")  # order of the five lerps (mix_w … mix_g) in the mix LoRA


class RWKV6TimeMix(nn.Module):
    """RWKV-6 time-mix layer: hidden (B, T, d) → (B, T, d), carrying (last token (B, d), wkv (B, H, K, V))."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int = 64,
        mix_rank: int = 32,
        decay_rank: int = 64,
        layer_id: int = 0,
        n_layers: int = 1,
        backend: str = "auto",
        chunk_size: int = 16,
    ):
        super().__init__()
        if hidden_size % head_dim:
            raise ValueError(f"head_dim {head_dim} must divide hidden_size {hidden_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        d = hidden_size
        self.hidden_size, self.head_dim, self.heads = d, head_dim, d // head_dim
        self.backend, self.chunk_size = backend, chunk_size

        # Official RWKV-6 initialisation, by depth: early layers mix in more of the previous token.
        ratio_0_to_1 = layer_id / max(n_layers - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_id / n_layers
        ddd = torch.arange(d) / d
        mu = 1.0 - ddd.pow(ratio_1_to_almost0)
        # Vectors stay 1-D (one per lerp, the bonus flattened) so that weight decay, which the
        # training loop applies to matrices only, leaves them alone as RWKV's own trainer does.
        self.shift_mix = nn.Parameter(mu.clone())  # μ_x
        self.mix_w = nn.Parameter(mu.clone())
        self.mix_k = nn.Parameter(mu.clone())
        self.mix_v = nn.Parameter(1.0 - (ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.mix_r = nn.Parameter(1.0 - ddd.pow(0.5 * ratio_1_to_almost0))
        self.mix_g = nn.Parameter(1.0 - ddd.pow(0.5 * ratio_1_to_almost0))
        self.mix_lora_a = nn.Parameter(torch.zeros(d, len(MIX_NAMES) * mix_rank))
        self.mix_lora_b = nn.Parameter(torch.empty(len(MIX_NAMES), mix_rank, d).uniform_(-0.01, 0.01))

        n = torch.arange(d, dtype=torch.float32)
        self.decay = nn.Parameter(-6 + 5 * (n / max(d - 1, 1)).pow(0.7 + 1.3 * ratio_0_to_1))
        self.decay_lora_a = nn.Parameter(torch.zeros(d, decay_rank))
        self.decay_lora_b = nn.Parameter(torch.empty(decay_rank, d).uniform_(-0.01, 0.01))
        zigzag = ((n + 1) % 3 - 1) * 0.1
        self.bonus = nn.Parameter(ratio_0_to_1 * (1 - n / max(d - 1, 1)) + zigzag)  # u, (H·K,)

        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.norm = nn.GroupNorm(self.heads, d, eps=64e-5)  # RWKV-6: 1e-5 · head_size_divisor² (8²)

    def forward(self, hidden: torch.Tensor, state=None, mask: torch.Tensor | None = None):
        """hidden (B, T, d), state None or (last token, wkv), mask None or (B, T) with 0 at padding
        → (out (B, T, d), (last token, wkv)).

        A padded position is a zero input (so the token shift after it sees what a sequence start
        sees) and leaves the wkv state untouched (no key, decay 1): a left-padded row computes
        what it would alone.
        """
        batch, length, d = hidden.shape
        if mask is not None:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        previous = state[0][:, None] if state is not None else hidden.new_zeros(batch, 1, d)
        delta = torch.cat([previous, hidden[:, :-1]], dim=1) - hidden

        lerp = torch.tanh((hidden + delta * self.shift_mix) @ self.mix_lora_a)
        lerp = lerp.view(batch, length, len(MIX_NAMES), -1)  # (B, T, 5, rank)
        lerp = torch.einsum("btfr,frd->btfd", lerp, self.mix_lora_b)  # (B, T, 5, d)
        base = (self.mix_w, self.mix_k, self.mix_v, self.mix_r, self.mix_g)
        x_w, x_k, x_v, x_r, x_g = (hidden + delta * (mu + lerp[:, :, i]) for i, mu in enumerate(base))

        r, k, v = self.receptance(x_r), self.key(x_k), self.value(x_v)
        g = F.silu(self.gate(x_g))
        decay = self.decay + torch.tanh(x_w @ self.decay_lora_a) @ self.decay_lora_b

        heads = (batch, length, self.heads, self.head_dim)
        wkv = state[1] if state is not None else None
        with full_precision(hidden.device.type):  # the recurrence runs in float32, as RWKV's kernels do
            r, k, v = (t.float().reshape(heads) for t in (r, k, v))
            w = -torch.exp(decay.float()).reshape(heads)
            if mask is not None:
                keep = mask[:, :, None, None].float()
                w, k = w * keep, k * keep
            u = self.bonus.float().reshape(self.heads, self.head_dim)
            if length == 1 and wkv is not None:
                y, wkv = rwkv6_step(wkv, r[:, 0], k[:, 0], v[:, 0], w[:, 0], u)
                y = y[:, None]
            else:
                y, wkv = rwkv6(r, k, v, w, u, wkv, backend=self.backend, chunk_size=self.chunk_size)
        y = self.norm(y.reshape(batch * length, d).to(hidden.dtype)).view(batch, length, d)
        return self.output(y * g), (hidden[:, -1], wkv)
