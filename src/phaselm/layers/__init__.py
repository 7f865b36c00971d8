"""Token mixers shared by PhaseLM's language models.

- :mod:`phaselm.layers.mamba2` — Mamba-2 (SSD) mixer: in-proj, causal depthwise conv, input-dependent
  Δ, B, C, one decay per head, gated RMSNorm output.
- :mod:`phaselm.layers.rwkv6` — RWKV-6 ("Finch") time-mix: data-dependent token shift, data-dependent
  per-channel decay, bonus u, per-head group norm, SiLU gate.

Both take ``(hidden (B, T, d), state)`` and return ``(output (B, T, d), new state)``; ``state`` is
``None`` for a fresh sequence, and the returned state continues it exactly (prefill then one token
at a time gives the same outputs as one pass over the whole sequence).

- :mod:`phaselm.layers.kuramoto_mixer` — causal Kuramoto token mixer (issue 15): phases are the token
  states, attention weights the coupling kernel. It takes ``(hidden, attention_mask, cache)`` and
  also returns its per-token synchrony: ``(output (B, T, d), R (B, T, heads), new cache)``; its
  cache (earlier tokens' keys and phases) continues a sequence exactly in the same way.
"""
