"""K-SSM: a language model whose blocks couple a selective state-space mixer with a bistable
Kuramoto bank (seed 003; docs/seeds-vs-phaselm.md lists where we depart from it), as a
Hugging Face model.

    token → embedding → n_layers × Block → RMSNorm → tied LM head

    Block:  h += Mixer(norm(h))      selective SSM (Mamba-2 style: in-proj, causal depthwise conv,
                                     input-dependent Δ, B, C, one decay per head, gated RMSNorm)
            h += Bank(norm(h))       bistable Kuramoto bank (phaselm.bistable)
            h += MLP(norm(h))        GELU, 4×

``mixer = "kuramoto"`` replaces the selective SSM by the causal Kuramoto token mixer
(phaselm.layers.kuramoto_mixer: phases are the token states, attention weights the coupling
kernel; issue 15); its per-token synchrony R (B, T, heads) per layer is the output's
``mixer_orders``.

``mixer = "none"`` drops the mixer: every position is then predicted from its own token (and a
learned position embedding, as in the original), which is the original code's behaviour and
the control that shows what token mixing is worth.

Generation carries, per layer, the conv window and the SSM state, so each new token costs O(1)
in the context length (the Kuramoto mixer instead keeps every earlier token's keys and phases, a
KV cache); the bank has no state across positions unless ``bank_carry_phases`` (a driven bank,
phaselm.bistable), whose carried phases (B, N) per layer the cache then holds too.

The driven-bank options (issue 15) are the ``bank_*`` fields after ``reg_through_hidden``:
``bank_phase_input``, ``bank_omega_init`` / ``bank_omega_std``, ``bank_carry_phases``,
``bank_readout`` (with ``bank_steps``); phaselm.bistable's docstring gives their equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

from ..bistable import BankConfig, BistableBank
from ..errors import PhaseLMError
from ..interventions.sites import Intervenable, Site, SiteMap
from ..layers.kuramoto_mixer import KuramotoMixer, KuramotoMixerConfig
from ..layers.mamba2 import Mamba2Mixer
from ..ops.ssd import BACKENDS as SSD_BACKENDS
from .recurrent import RecurrentLM, register_auto_classes

MIXERS = ("ssd", "kuramoto", "none")


class KSSMConfig(PretrainedConfig):
    """K-SSM's one config: the ``[kssm]`` table of a ``train-lm`` recipe builds it directly (every
    keyword below except ``vocab_size``, which comes from the tokenizer, and
    ``tie_word_embeddings``). Defaults are the seed's size trained at nanoGPT's "baby GPT" budget
    (dropout 0.2, as every shipped recipe and docs/results.md). The bank's own settings default to
    ``BankConfig``'s and the Kuramoto mixer's (``kuramoto_*``) to ``KuramotoMixerConfig``'s;
    ``bank_config()`` and ``kuramoto_config()`` build those configs from these fields, so each
    default is written once."""

    model_type = "kssm"
    recipe_excludes = ("vocab_size", "tie_word_embeddings")

    def __init__(
        self,
        vocab_size: int = 65,
        hidden_size: int = 384,
        n_layers: int = 6,
        # "ssd", "kuramoto" (token-coupled oscillators) or "none" (the original's token-independent model)
        mixer: str = "ssd",
        state_size: int = 16,
        expand: int = 2,
        head_dim: int = 64,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        scan: str = "auto",  # SSD backend: "auto" (= "chunked" for now), "fused" (Triton), "chunked", "reference"
        kuramoto_heads: int = KuramotoMixerConfig.heads,
        kuramoto_oscillators: int = KuramotoMixerConfig.oscillators,  # per head
        kuramoto_key_dim: int = KuramotoMixerConfig.key_dim,  # per head
        kuramoto_steps: int = KuramotoMixerConfig.steps,
        kuramoto_dt: float = KuramotoMixerConfig.dt,
        kuramoto_coupling_init: float = KuramotoMixerConfig.coupling_init,
        kuramoto_readout: str = KuramotoMixerConfig.readout,  # "phases" or "field" (+ the field seen from each phase)
        kuramoto_rotary: bool = KuramotoMixerConfig.rotary,  # rotary positions on the coupling kernel's q, k
        kuramoto_backend: str = KuramotoMixerConfig.backend,  # "auto" (= "sdpa"), "sdpa", "reference"
        bank: bool = True,  # False: blocks without the bistable bank (the seed's no-bank ablation)
        n_oscillators: int = BankConfig.n_oscillators,
        n_harmonics: int = BankConfig.n_harmonics,
        bistable: bool = BankConfig.bistable,  # False: the monostable ablation
        u_min: float = BankConfig.u_min,
        u_max: float = BankConfig.u_max,
        bank_steps: int = BankConfig.steps,
        spread_init: float = BankConfig.spread_init,
        reg_weight: float = 0.5,
        # True: the regulariser also trains the hidden state (stalls learning)
        reg_through_hidden: bool = BankConfig.reg_through_hidden,
        bank_phase_input: str = BankConfig.phase_input,  # "mean" or "projected" (θ_i += (W_φ h)_i)
        bank_omega_init: str = BankConfig.omega_init,  # "even" or "random" (ω₀ ~ N(0, bank_omega_std²))
        bank_omega_std: float = BankConfig.omega_std,
        bank_carry_phases: bool = BankConfig.carry_phases,  # phases carried along the sequence
        bank_readout: str = BankConfig.readout,  # "harmonics", "harmonics+R" or "phases"
        mlp_ratio: int = 4,
        dropout: float = 0.2,
        position_embedding: bool = False,
        max_position_embeddings: int = 1024,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if mixer not in MIXERS:
            raise PhaseLMError(f"mixer must be one of {', '.join(MIXERS)}, got {mixer!r}")
        if scan not in SSD_BACKENDS:
            raise PhaseLMError(f"scan must be one of {', '.join(SSD_BACKENDS)}, got {scan!r}")
        if mixer == "ssd" and (expand * hidden_size) % head_dim:
            raise PhaseLMError(f"head_dim {head_dim} must divide expand·hidden_size = {expand * hidden_size}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.mixer = mixer
        self.state_size = state_size
        self.expand = expand
        self.head_dim = head_dim
        self.conv_kernel = conv_kernel
        self.chunk_size = chunk_size
        self.scan = scan
        self.kuramoto_heads = kuramoto_heads
        self.kuramoto_oscillators = kuramoto_oscillators
        self.kuramoto_key_dim = kuramoto_key_dim
        self.kuramoto_steps = kuramoto_steps
        self.kuramoto_dt = kuramoto_dt
        self.kuramoto_coupling_init = kuramoto_coupling_init
        self.kuramoto_readout = kuramoto_readout
        self.kuramoto_rotary = kuramoto_rotary
        self.kuramoto_backend = kuramoto_backend
        self.bank = bank
        self.n_oscillators = n_oscillators
        self.n_harmonics = n_harmonics
        self.bistable = bistable
        self.u_min = u_min
        self.u_max = u_max
        self.bank_steps = bank_steps
        self.spread_init = spread_init
        self.reg_weight = reg_weight
        self.reg_through_hidden = reg_through_hidden
        self.bank_phase_input = bank_phase_input
        self.bank_omega_init = bank_omega_init
        self.bank_omega_std = bank_omega_std
        self.bank_carry_phases = bank_carry_phases
        self.bank_readout = bank_readout
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.position_embedding = position_embedding
        self.max_position_embeddings = max_position_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.bank_config()  # validates the clamp bounds now, not at the first forward
        self.kuramoto_config()  # likewise the mixer's settings

    def bank_config(self) -> BankConfig:
        """The bistable bank's config, from this config's fields (bank-only constants keep BankConfig's)."""
        return BankConfig(
            n_oscillators=self.n_oscillators,
            n_harmonics=self.n_harmonics,
            bistable=self.bistable,
            u_min=self.u_min,
            u_max=self.u_max,
            steps=self.bank_steps,
            spread_init=self.spread_init,
            reg_through_hidden=self.reg_through_hidden,
            phase_input=self.bank_phase_input,
            omega_init=self.bank_omega_init,
            omega_std=self.bank_omega_std,
            carry_phases=self.bank_carry_phases,
            readout=self.bank_readout,
        )

    def kuramoto_config(self) -> KuramotoMixerConfig:
        """The Kuramoto mixer's config (``mixer = "kuramoto"``), from this config's ``kuramoto_*`` fields."""
        return KuramotoMixerConfig.from_model_config(self)


class KSSMCache:
    """Per-layer mixer state — (conv window, SSM state), or the Kuramoto mixer's (keys, phases,
    real) — the bank's carried phases (B, N) per layer (``bank_carry_phases`` only), plus the
    number of positions already seen. Every state tensor is batch first."""

    def __init__(self):
        self.layers: dict[int, tuple[torch.Tensor, ...]] = {}
        self.bank_phases: dict[int, torch.Tensor] = {}
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder every state's batch rows by ``beam_idx`` (B,), for beam search."""
        self.layers = {i: tuple(t.index_select(0, beam_idx) for t in state) for i, state in self.layers.items()}
        self.bank_phases = {i: phases.index_select(0, beam_idx) for i, phases in self.bank_phases.items()}


class Block(nn.Module):
    """One K-SSM block: an optional mixer (Mamba-2 or Kuramoto), the bistable bank and an MLP,
    each added to h (B, T, d)."""

    def __init__(self, config: KSSMConfig):
        super().__init__()
        d = config.hidden_size
        self.mixer: nn.Module | None = None
        if config.mixer == "ssd":
            self.mixer = Mamba2Mixer(
                d, config.state_size, config.expand, config.head_dim, config.conv_kernel, config.chunk_size, config.scan
            )
        elif config.mixer == "kuramoto":
            self.mixer = KuramotoMixer(d, config.kuramoto_config())
        self.mixer_norm = nn.RMSNorm(d) if self.mixer is not None else None
        self.bank_norm = nn.RMSNorm(d) if config.bank else None
        self.bank = BistableBank(d, config.bank_config()) if config.bank else None
        self.mlp_norm = nn.RMSNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        h: torch.Tensor,
        state=None,
        mask: torch.Tensor | None = None,
        keep_state: bool = True,
        bank_phases: torch.Tensor | None = None,
    ):
        """h (B, T, d), mixer state or None, mask None or (B, T), the bank's carried phases None
        or (B, N) → (h (B, T, d), BankOutput (its ``state``: the phases to carry on, or None) or
        None without a bank, new mixer state, the Kuramoto mixer's R (B, T, heads) or None).

        ``keep_state`` False lets the Kuramoto mixer skip building its cache (training)."""
        new_state = mixer_order = None
        if isinstance(self.mixer, KuramotoMixer):
            mixed, mixer_order, new_state = self.mixer(self.mixer_norm(h), mask, state, use_cache=keep_state)
            h = h + self.drop(mixed)
        elif self.mixer is not None:
            mixed, new_state = self.mixer(self.mixer_norm(h), state, mask)
            h = h + self.drop(mixed)
        bank = None
        if self.bank is not None:
            bank = self.bank(self.bank_norm(h), bank_phases, mask)
            h = h + self.drop(bank.out)
        h = h + self.drop(self.mlp(self.mlp_norm(h)))
        return h, bank, new_state, mixer_order


@dataclass
class KSSMOutput(CausalLMOutput):
    """K-SSM's CausalLMOutput plus its cache, R and u per layer and the bank regulariser."""

    past_key_values: KSSMCache | None = None
    orders: torch.Tensor | None = None  # (B, n_layers, T) R per layer and position
    reg: torch.Tensor | None = None  # scalar: mean bank regulariser over layers and positions
    u: torch.Tensor | None = None  # (B, n_layers, T)
    mixer_orders: torch.Tensor | None = None  # (B, n_layers, T, heads): the Kuramoto mixer's R, if that is the mixer


class KSSMForCausalLM(RecurrentLM, Intervenable):
    """K-SSM as a Hugging Face causal LM: blocks of an optional mixer (Mamba-2 or Kuramoto) and the bistable bank."""

    config_class = KSSMConfig
    base_model_prefix = "kssm"

    def __init__(self, config: KSSMConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_embed = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.position_embedding else None
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        past_key_values: KSSMCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        output_orders: bool = False,
        attention_mask: torch.Tensor | None = None,  # (B, T) or (B, past + T); 0 at padding
        **kwargs,
    ) -> KSSMOutput:
        """input_ids (B, T) → KSSMOutput: logits (B, T, V), orders (B, n_layers, T), reg, loss if
        ``labels``; with the Kuramoto mixer, mixer_orders (B, n_layers, T, heads).

        ``output_orders`` adds u (B, n_layers, T); ``use_cache`` returns the cache to continue from.
        """
        _batch, length = input_ids.shape
        self.check_ids(input_ids)
        offset = past_key_values.seen if past_key_values is not None else 0
        mask = self.padding_mask(attention_mask, length)
        if mask is not None and self.pos_embed is not None:
            raise PhaseLMError(
                "padding with position embeddings is not supported: a padded row's positions would shift; "
                "pass unpadded sequences one by one, or use a model without position embeddings"
            )
        h = self.embed(input_ids)
        if self.pos_embed is not None:
            if offset + length > self.config.max_position_embeddings:
                raise PhaseLMError(
                    f"sequence of {offset + length} tokens is longer than the model allows "
                    f"({self.config.max_position_embeddings} positions); use shorter inputs"
                )
            h = h + self.pos_embed(torch.arange(offset, offset + length, device=h.device))
        cache = past_key_values if past_key_values is not None else (KSSMCache() if use_cache else None)
        orders, regs, us, mixer_orders = [], [], [], []
        for i, block in enumerate(self.blocks):
            state = cache.layers.get(i) if cache is not None else None
            bank_phases = cache.bank_phases.get(i) if cache is not None else None
            h, bank, new_state, mixer_order = block(h, state, mask, cache is not None, bank_phases)
            if cache is not None and new_state is not None:
                cache.layers[i] = new_state
            if bank is not None:
                if cache is not None and bank.state is not None:
                    cache.bank_phases[i] = bank.state
                orders.append(bank.order)
                regs.append(bank.reg)
                us.append(bank.u)
            if mixer_order is not None:
                mixer_orders.append(mixer_order)
        if cache is not None:
            cache.seen = offset + length
        logits = self.lm_head(self.norm(h))
        loss = self.shifted_loss(logits, labels)
        return KSSMOutput(
            loss=loss,
            logits=logits,
            past_key_values=cache,
            orders=torch.stack(orders, 1) if orders else None,  # None: no bank, no R
            reg=torch.stack(regs).mean() if regs else logits.new_zeros((), dtype=torch.float32),
            u=torch.stack(us, 1) if output_orders and us else None,
            mixer_orders=torch.stack(mixer_orders, 1) if mixer_orders else None,
        )

    def intervention_sites(self) -> SiteMap:
        """Each block's phase bank is an oscillator site, then each Kuramoto mixer (``mixer =
        "kuramoto"``: heads × oscillators per head), so the banks keep their layer numbers; the
        branches are bank, mixer (unless there is none) and mlp, one entry per block."""
        blocks = list(self.blocks)
        sites = [Site(i, "bank", b.bank, b.bank.cfg.n_oscillators) for i, b in enumerate(blocks) if b.bank is not None]
        branches = {"bank": [b.bank for b in blocks]} if sites else {}
        mixers = [b.mixer for b in blocks if isinstance(b.mixer, KuramotoMixer)]
        sites += [Site(len(sites) + i, "mixer", m, m.cfg.heads * m.cfg.oscillators) for i, m in enumerate(mixers)]
        if any(b.mixer is not None for b in blocks):
            branches["mixer"] = [b.mixer for b in blocks]
        branches["mlp"] = [b.mlp for b in blocks]
        return SiteMap(self, sites, branches)


register_auto_classes(KSSMConfig, KSSMForCausalLM)
