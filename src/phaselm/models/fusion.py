"""Fusion hybrids (seed 004; departures in docs/seeds-vs-phaselm.md): RWKV-6 and Mamba-2 side
by side in every block, as one Hugging Face model family — and the pure RWKV-6 and pure
Mamba-2 models, which are the same model with one branch. ``branches`` may put the causal Kuramoto
token mixer (phaselm.layers.kuramoto_mixer) in the place of either (``branches = ["rwkv6",
"kuramoto"]`` or ``["kuramoto", "mamba2"]``; its settings are the ``kuramoto_*`` keys, defaults
``KuramotoMixerConfig``'s; phaselm.models.fusion_branches): below, r is the first branch and m
the second, whatever their kinds.

    token → embedding → n_layers × Block → RMSNorm → tied LM head

    Block:  x_n = RMSNorm(h)
            r = RWKV6(x_n);  m = Mamba2(x_n)               both branches on the same input
            h += fuse(r, m)                                (pure models: h += r or h += m)
            h += MLP(RMSNorm(h))                           GELU, 4×

Fusion types (``fusion``), with σ the logistic sigmoid and g₀ = ``gate_init``:

    WS   α·r + (1−α)·m                 one scalar α = σ(a), a learned, α = g₀ at init
    HY   r⊙g_r + m⊙g_m                 per-channel gains, g_r = g₀ and g_m = 1 − g₀ at init
    GF   γ·r + (1−γ)·m                 γ = σ(Linear([r, m]) → 1): a gate per position
    HGF  γ⊙r + (1−γ)⊙m                 γ = σ(Linear([r, m]) → d): per position and channel
    CP   Linear([r, m]) (2d → d)       concat + project
    RF   r + Linear(m)                 RWKV plus projected Mamba

GF / HGF gate biases start at logit(g₀) with small weights, so γ ≈ g₀ at initialisation; the
seed's named inits are ``GATE_INITS`` (balanced 0.5, RWKV-heavy 0.7, Mamba-heavy 0.3 = GF-MH,
extremes 0.03 = GF-XM and 0.97 = GF-XR). CP and RF have no gate; ``gate_init`` does not apply.

``forward(..., output_branches=True)`` returns, per layer, the RWKV, Mamba and Kuramoto branch
outputs (None for a branch the model lacks), the gate values (WS: α; HY: (g_r, g_m); GF: γ
(B, T, 1); HGF: γ (B, T, d); CP, RF: None) and the recurrent states after the input (RWKV wkv
(B, H, K, V), Mamba SSM (B, H, P, N); the Kuramoto branch has none of fixed size);
``output_hidden_states=True`` the residual stream after the embedding and after each block
(n_layers + 1 tensors, before the final norm);
``ablate="rwkv"``, ``"mamba"`` or ``"kuramoto"`` zeroes that branch's output before the fusion
(its state still advances), for ablation studies. A model with a Kuramoto branch always returns
its per-token synchrony R as ``mixer_orders`` (B, n_layers, T, heads), as K-SSM does.

Generation carries, per layer, the RWKV (last token, wkv state) and the Mamba (conv window, SSM
state), so each new token costs O(1) in the context length; a Kuramoto branch keeps every
earlier token's keys and phases (O(T) per new token, like attention's KV cache).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

from ..errors import PhaseLMError
from ..interventions.sites import Intervenable, Site, SiteMap
from ..layers.kuramoto_mixer import KuramotoMixerConfig
from .fusion_branches import (
    BRANCH_NAMES,
    DEFAULT_BRANCHES,
    RECURRENT,
    build_branch,
    check_branches,
    run_branch,
)
from .recurrent import RecurrentLM, register_auto_classes

MIXERS = ("hybrid", "rwkv6", "mamba2")
FUSIONS = ("WS", "HY", "GF", "HGF", "CP", "RF")
GATED = ("WS", "HY", "GF", "HGF")  # the fusion types ``gate_init`` initialises
SCANS = ("auto", "kernels", "chunked", "reference")
GATE_INITS = {  # the seed's GF initialisations: the RWKV share γ at the start
    "balanced": 0.5,
    "rwkv-heavy": 0.7,
    "mamba-heavy": 0.3,
    "extreme-mamba": 0.03,
    "extreme-rwkv": 0.97,
}
GATE_INIT_ALIASES = {
    "gf": "balanced",
    "gf-rh": "rwkv-heavy",
    "gf-mh": "mamba-heavy",
    "gf-xm": "extreme-mamba",
    "gf-xr": "extreme-rwkv",
}


def resolve_gate_init(value) -> float:
    """A number in (0, 1), or one of the names of ``GATE_INITS`` (or the seed's GF-MH, GF-XM, …)."""
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "-")
        key = GATE_INIT_ALIASES.get(key, key)
        if key not in GATE_INITS:
            names = ", ".join(f"{name} ({ratio})" for name, ratio in GATE_INITS.items())
            raise PhaseLMError(f"unknown gate_init {value!r}; use a number in (0, 1) or one of {names}")
        return GATE_INITS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise PhaseLMError(
            f"gate_init must lie strictly between 0 and 1 (a sigmoid gate never reaches 0 or 1), got {value!r}"
        )
    return float(value)


def _fusion_name(value: str) -> str:
    name = str(value).strip().upper()
    if name not in FUSIONS:
        close = difflib.get_close_matches(name, FUSIONS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise PhaseLMError(f"unknown fusion type {value!r}; {hint}valid types: {', '.join(FUSIONS)}")
    return name


class FusionConfig(PretrainedConfig):
    """The fusion family's one config: the ``[fusion]`` table of a ``train-lm`` recipe builds it
    directly (every keyword below except ``vocab_size``, from the tokenizer, and
    ``tie_word_embeddings``). Defaults are GF-MH at ~5.6M parameters char-level (7 layers of 192,
    a 30 % RWKV share at init) trained at dropout 0.2, as recipes/fusion-gf-mh.toml. The Kuramoto
    branch's ``kuramoto_*`` settings default to ``KuramotoMixerConfig``'s and are unused without one."""

    model_type = "phaselm_fusion"
    recipe_excludes = ("vocab_size", "tie_word_embeddings")

    def __init__(
        self,
        vocab_size: int = 65,
        hidden_size: int = 192,
        n_layers: int = 7,
        mixer: str = "hybrid",  # "hybrid" (two branches, fused), "rwkv6" or "mamba2" (one branch)
        # hybrid only: the first (r) and second (m) branch; "kuramoto" may take either place
        branches: tuple[str, str] = DEFAULT_BRANCHES,
        fusion: str = "GF",  # WS, HY, GF, HGF, CP or RF; hybrid only
        # the first branch's (RWKV's) share at init, in (0, 1), or a name of GATE_INITS (GF-MH: 0.3)
        gate_init: float | str = 0.3,
        rwkv_head_dim: int = 64,
        rwkv_mix_rank: int = 32,
        rwkv_decay_rank: int = 64,
        rwkv_chunk_size: int = 16,
        mamba_state_size: int = 16,
        mamba_expand: int = 2,
        mamba_head_dim: int = 64,
        mamba_conv_kernel: int = 4,
        mamba_chunk_size: int = 64,
        kuramoto_heads: int = KuramotoMixerConfig.heads,
        kuramoto_oscillators: int = KuramotoMixerConfig.oscillators,  # per head
        kuramoto_key_dim: int = KuramotoMixerConfig.key_dim,  # per head
        kuramoto_steps: int = KuramotoMixerConfig.steps,
        kuramoto_dt: float = KuramotoMixerConfig.dt,
        kuramoto_coupling_init: float = KuramotoMixerConfig.coupling_init,
        kuramoto_readout: str = KuramotoMixerConfig.readout,  # "phases" or "field" (+ the field seen from each phase)
        kuramoto_rotary: bool = KuramotoMixerConfig.rotary,  # rotary positions on the coupling kernel's q, k
        kuramoto_backend: str = KuramotoMixerConfig.backend,  # "auto" (= "sdpa"), "sdpa", "reference"
        # "auto" (= "chunked" for now), "kernels" (fla's RWKV-6 and our fused SSD on CUDA), "chunked", "reference"
        scan: str = "auto",
        mlp_ratio: int = 4,
        dropout: float = 0.2,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if mixer not in MIXERS:
            raise PhaseLMError(f"mixer must be one of {', '.join(MIXERS)}, got {mixer!r}")
        if scan not in SCANS:
            raise PhaseLMError(f"scan must be one of {', '.join(SCANS)}, got {scan!r}")
        fusion = _fusion_name(fusion)
        gate_init = resolve_gate_init(gate_init)
        branches = check_branches(branches, mixer)
        self.mixer = mixer
        self.branches = branches
        if "rwkv" in self.branch_names and (rwkv_head_dim <= 0 or hidden_size % rwkv_head_dim):
            raise PhaseLMError(
                f"rwkv_head_dim {rwkv_head_dim} does not divide hidden_size {hidden_size}; "
                "RWKV-6 needs a whole number of heads (e.g. hidden_size a multiple of 64)"
            )
        if "mamba" in self.branch_names and (mamba_head_dim <= 0 or (mamba_expand * hidden_size) % mamba_head_dim):
            raise PhaseLMError(
                f"mamba_head_dim {mamba_head_dim} does not divide "
                f"mamba_expand·hidden_size = {mamba_expand * hidden_size}; "
                "Mamba-2 needs a whole number of heads"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.fusion = fusion
        self.gate_init = gate_init
        self.rwkv_head_dim = rwkv_head_dim
        self.rwkv_mix_rank = rwkv_mix_rank
        self.rwkv_decay_rank = rwkv_decay_rank
        self.rwkv_chunk_size = rwkv_chunk_size
        self.mamba_state_size = mamba_state_size
        self.mamba_expand = mamba_expand
        self.mamba_head_dim = mamba_head_dim
        self.mamba_conv_kernel = mamba_conv_kernel
        self.mamba_chunk_size = mamba_chunk_size
        self.kuramoto_heads = kuramoto_heads
        self.kuramoto_oscillators = kuramoto_oscillators
        self.kuramoto_key_dim = kuramoto_key_dim
        self.kuramoto_steps = kuramoto_steps
        self.kuramoto_dt = kuramoto_dt
        self.kuramoto_coupling_init = kuramoto_coupling_init
        self.kuramoto_readout = kuramoto_readout
        self.kuramoto_rotary = kuramoto_rotary
        self.kuramoto_backend = kuramoto_backend
        self.scan = scan
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.kuramoto_config()  # validates the Kuramoto settings now, not at the first forward

    @property
    def branch_kinds(self) -> tuple[str, ...]:
        """The kinds of the branches every block holds, in fusion order: (r, m) for a hybrid."""
        return tuple(self.branches) if self.mixer == "hybrid" else (self.mixer,)

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The module names of the branches ("rwkv", "mamba", "kuramoto"), in fusion order."""
        return tuple(BRANCH_NAMES[kind] for kind in self.branch_kinds)

    @property
    def has_rwkv(self) -> bool:
        """Does every block have an RWKV-6 branch?"""
        return "rwkv" in self.branch_names

    @property
    def has_mamba(self) -> bool:
        """Does every block have a Mamba-2 branch?"""
        return "mamba" in self.branch_names

    @property
    def has_kuramoto(self) -> bool:
        """Does every block have a Kuramoto token-mixer branch?"""
        return "kuramoto" in self.branch_names

    def kuramoto_config(self) -> KuramotoMixerConfig:
        """The Kuramoto branch's config, from this config's ``kuramoto_*`` fields."""
        return KuramotoMixerConfig.from_model_config(self)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Fusion(nn.Module):
    """fuse(r, m) → (fused (B, T, d), gate values or None); see the module docstring."""

    def __init__(self, kind: str, hidden_size: int, gate_init: float):
        super().__init__()
        d = hidden_size
        self.kind = kind
        if kind == "WS":
            self.alpha_logit = nn.Parameter(torch.tensor(_logit(gate_init)))
        elif kind == "HY":
            self.rwkv_gain = nn.Parameter(torch.full((d,), gate_init))
            self.mamba_gain = nn.Parameter(torch.full((d,), 1.0 - gate_init))
        elif kind in ("GF", "HGF"):
            self.gate = nn.Linear(2 * d, 1 if kind == "GF" else d)
            with torch.no_grad():
                nn.init.normal_(self.gate.weight, std=0.02)
                self.gate.bias.fill_(_logit(gate_init))
            self.gate._phaselm_initialised = True  # the model's weight init must not zero the bias
        elif kind == "CP":
            self.proj = nn.Linear(2 * d, d)
        else:  # RF
            self.proj = nn.Linear(d, d)

    def forward(self, r: torch.Tensor, m: torch.Tensor):
        """r, m (B, T, d) → (fused (B, T, d), gate values or None: see the module docstring)."""
        if self.kind == "WS":
            alpha = torch.sigmoid(self.alpha_logit)
            return alpha * r + (1 - alpha) * m, alpha
        if self.kind == "HY":
            return r * self.rwkv_gain + m * self.mamba_gain, torch.stack([self.rwkv_gain, self.mamba_gain])
        if self.kind in ("GF", "HGF"):
            gate = torch.sigmoid(self.gate(torch.cat([r, m], dim=-1)))
            return gate * r + (1 - gate) * m, gate
        if self.kind == "CP":
            return self.proj(torch.cat([r, m], dim=-1)), None
        return r + self.proj(m), None

    def parts(self, r: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What each branch puts into the fused output: fused = RWKV part + Mamba part (+ the
        projection bias for CP and RF, which belongs to neither). Used by the balance diagnostic."""
        if self.kind == "WS":
            alpha = torch.sigmoid(self.alpha_logit)
            return alpha * r, (1 - alpha) * m
        if self.kind == "HY":
            return r * self.rwkv_gain, m * self.mamba_gain
        if self.kind in ("GF", "HGF"):
            gate = torch.sigmoid(self.gate(torch.cat([r, m], dim=-1)))
            return gate * r, (1 - gate) * m
        if self.kind == "CP":
            w_r, w_m = self.proj.weight.split(r.shape[-1], dim=1)
            return r @ w_r.T, m @ w_m.T
        return r, m @ self.proj.weight.T


@dataclass
class BlockOutput:
    """One block's branch outputs, fusion gate and carried states, kept for ``output_branches``."""

    outputs: dict  # branch name → its output (B, T, d), for the branches present
    gate: torch.Tensor | None
    state: dict  # {"rwkv": (last token, wkv), "mamba": (conv window, ssm), "kuramoto": (keys, phases, real)}
    order: torch.Tensor | None = None  # the Kuramoto branch's R (B, T, heads), if the block has one


class FusionBlock(nn.Module):
    """One fusion block: the branches on RMSNorm(h), their fusion and an MLP, each added to h (B, T, d)."""

    def __init__(self, config: FusionConfig, layer_id: int):
        super().__init__()
        d = config.hidden_size
        self.norm = nn.RMSNorm(d)
        self.branch_names = config.branch_names
        # One attribute per possible branch (None where absent), so parameter names stay "blocks.i.rwkv.…".
        self.rwkv = self.mamba = self.kuramoto = None
        for kind, name in zip(config.branch_kinds, config.branch_names):
            setattr(self, name, build_branch(kind, config, layer_id))
        self.fusion = Fusion(config.fusion, d, config.gate_init) if config.mixer == "hybrid" else None
        self.mlp_norm = nn.RMSNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        h: torch.Tensor,
        state: dict | None = None,
        ablate: str | None = None,
        mask: torch.Tensor | None = None,
        keep_state: bool = True,
    ):
        """h (B, T, d), state None or the branches' dict, mask None or (B, T) → (h (B, T, d), BlockOutput).

        ``ablate`` (a branch name) zeroes that branch's output before the fusion; ``keep_state``
        False lets a Kuramoto branch skip building its cache.
        """
        x = self.norm(h)
        state = state or {}
        outputs, new_state, order = {}, {}, None
        for name in self.branch_names:
            out, branch_state, branch_order = run_branch(getattr(self, name), x, state.get(name), mask, keep_state)
            if branch_state is not None:
                new_state[name] = branch_state
            order = branch_order if branch_order is not None else order
            outputs[name] = torch.zeros_like(out) if ablate == name else out
        gate = None
        if self.fusion is not None:
            fused, gate = self.fusion(*outputs.values())
        else:
            (fused,) = outputs.values()
        h = h + self.drop(fused)
        h = h + self.drop(self.mlp(self.mlp_norm(h)))
        return h, BlockOutput(outputs, gate, new_state, order)


class FusionCache:
    """Per-layer branch states plus the number of positions already seen."""

    def __init__(self):
        self.layers: dict[int, dict] = {}
        self.seen = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder every state's batch rows by ``beam_idx`` (B,), for beam search."""
        self.layers = {
            i: {name: tuple(t.index_select(0, beam_idx) for t in pair) for name, pair in branches.items()}
            for i, branches in self.layers.items()
        }


SHARE_FUSIONS = ("WS", "GF", "HGF")  # fusions whose gate is the RWKV share of the output


@dataclass
class FusionOutput(CausalLMOutput):
    """A fusion model's CausalLMOutput plus its cache, branch outputs, gates and states (see the module docstring)."""

    past_key_values: FusionCache | None = None
    rwkv_outputs: tuple | None = None  # per layer (B, T, d), or None for a model without the branch
    mamba_outputs: tuple | None = None
    kuramoto_outputs: tuple | None = None
    gates: tuple | None = None  # per layer: see the module docstring
    states: tuple | None = None  # per layer {"rwkv": wkv (B, H, K, V), "mamba": ssm (B, H, P, N)}
    # (n_layers,) mean share of the first branch (RWKV-6, or the Kuramoto mixer in its place) in
    # the fused output, for the fusions with a share in (0, 1) (WS, GF, HGF); always returned (it
    # is computed anyway), so training can log the gates.
    gate_means: torch.Tensor | None = None
    # (B, n_layers, T, heads): the Kuramoto branch's R, always returned by a model that has one
    mixer_orders: torch.Tensor | None = None


class FusionForCausalLM(RecurrentLM, Intervenable):
    """The fusion family as a Hugging Face causal LM: hybrid RWKV-6 + Mamba-2 (either may be the
    Kuramoto mixer), or RWKV-6 or Mamba-2 alone."""

    config_class = FusionConfig
    base_model_prefix = "fusion"

    def __init__(self, config: FusionConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(FusionBlock(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        past_key_values: FusionCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        output_branches: bool = False,
        output_hidden_states: bool | None = None,
        ablate: str | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, T) or (B, past + T); 0 at padding
        **kwargs,
    ) -> FusionOutput:
        """input_ids (B, T) → FusionOutput: logits (B, T, V), loss if ``labels``, cache if ``use_cache``.

        ``output_branches`` adds the per-layer branch outputs, gates and states; ``ablate`` zeroes a branch.
        """
        if ablate is not None and ablate not in self.config.branch_names:
            raise PhaseLMError(
                f"ablate must be None or a branch of this model ({', '.join(self.config.branch_names)}), got {ablate!r}"
            )
        self.check_ids(input_ids)
        length = input_ids.shape[1]
        offset = past_key_values.seen if past_key_values is not None else 0
        mask = self.padding_mask(attention_mask, length)
        cache = past_key_values if past_key_values is not None else (FusionCache() if use_cache else None)
        h = self.embed(input_ids)
        hidden, outs = [], []
        hidden.append(h)
        for i, block in enumerate(self.blocks):
            h, out = block(h, cache.layers.get(i) if cache is not None else None, ablate, mask, cache is not None)
            if cache is not None:
                cache.layers[i] = out.state
            outs.append(out)
            hidden.append(h)
        if cache is not None:
            cache.seen = offset + length
        logits = self.lm_head(self.norm(h))
        loss = self.shifted_loss(logits, labels)
        extra = {}
        if self.config.mixer == "hybrid" and self.config.fusion in SHARE_FUSIONS:
            extra["gate_means"] = torch.stack([o.gate.detach().float().mean() for o in outs])
        if self.config.has_kuramoto:
            extra["mixer_orders"] = torch.stack([o.order for o in outs], 1)
        if output_hidden_states:
            extra["hidden_states"] = tuple(hidden)
        if output_branches:
            extra.update(
                {f"{name}_outputs": tuple(o.outputs.get(name) for o in outs) for name in ("rwkv", "mamba", "kuramoto")},
                gates=tuple(o.gate for o in outs),
                # the recurrent states only: the Kuramoto branch's cache is its earlier tokens, not a state
                states=tuple({name: o.state[name][1] for name in RECURRENT if name in o.state} for o in outs),
            )
        return FusionOutput(loss=loss, logits=logits, past_key_values=cache, **extra)

    def intervention_sites(self) -> SiteMap:
        """Oscillator sites: each block's Kuramoto branch (kind ``"mixer"``, heads × oscillators per
        head), if the model has one; the branches the model has (rwkv, mamba, kuramoto:
        ``branch_names``), fusion_gate (learned fusions: ablating it averages the branches) and
        mlp, one entry per block."""
        blocks = list(self.blocks)
        mixers = [b.kuramoto for b in blocks if b.kuramoto is not None]
        sites = [Site(i, "mixer", m, m.cfg.heads * m.cfg.oscillators) for i, m in enumerate(mixers)]
        branches = {name: [getattr(b, name) for b in blocks] for name in self.config.branch_names}
        gates = [b.fusion if b.fusion is not None and b.fusion.kind in GATED else None for b in blocks]
        if any(gate is not None for gate in gates):
            branches["fusion_gate"] = gates
        branches["mlp"] = [b.mlp for b in blocks]
        return SiteMap(self, sites, branches)


register_auto_classes(FusionConfig, FusionForCausalLM)
