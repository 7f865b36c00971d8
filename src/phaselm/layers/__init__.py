"""Token mixers shared by PhaseLM's language models.

- :mod:`phaselm.layers.mamba2` — Mamba-2 (SSD) mixer: in-proj, causal depthwise conv, input-dependent
  Δ, B, C, one decay per head, gated RMSNorm output.
- :mod:`phaselm.layers.rwkv6` — RWKV-6 ("Finch") time-mix: data-dependent token shift, data-dependent
  per-channel decay, bonus u, per-head group norm, SiLU gate.

Both take ``(hidden (B, T, d), state)`` and return ``(output (B, T, d), new state)``; ``state`` is
``None`` for a fresh sequence, and the returned state continues it exactly (prefill then one token
at a time gives the same outputs as one pass over the whole sequence).
"""
