"""The transformer baseline: Hugging Face GPT-2 (SDPA attention) with the recipe's few settings.

``GPTConfig`` is a ``GPT2Config`` whose keywords are the ``[gpt]`` table of a ``train-lm`` recipe;
it keeps GPT-2's ``model_type``, so a saved baseline is a plain GPT-2 folder that any Hugging
Face code opens. One ``dropout`` sets GPT-2's three dropout rates (residual, embedding,
attention), as nanoGPT's single ``dropout`` does.
"""

from __future__ import annotations

import inspect

from transformers import GPT2Config, GPT2LMHeadModel


class GPTConfig(GPT2Config):
    """The GPT baseline's one config; defaults are nanoGPT's "baby GPT" (6 layers of 384, 6 heads,
    256 positions, dropout 0.2), as recipes/gpt-baseline.toml."""

    recipe_excludes = ("vocab_size",)

    def __init__(
        self,
        vocab_size: int = 65,
        n_embd: int = 384,
        n_layer: int = 6,
        n_head: int = 6,
        n_positions: int = 256,
        dropout: float = 0.2,
        **kwargs,
    ):
        for rate in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            kwargs.setdefault(rate, dropout)
        # The character and BPE tokenizers have no BOS/EOS; GPT-2's default ids (50256) would
        # lie outside a small vocabulary.
        kwargs.setdefault("bos_token_id", None)
        kwargs.setdefault("eos_token_id", None)
        super().__init__(
            vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions, **kwargs
        )

    @property
    def dropout(self) -> float:
        """The one dropout rate (GPT-2's residual rate; a recipe sets all three to it)."""
        return self.resid_pdrop


def build_gpt(config: GPTConfig) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 LM with SDPA attention where this transformers version offers it."""
    if "attn_implementation" in inspect.signature(GPT2LMHeadModel.__init__).parameters:
        return GPT2LMHeadModel(config, attn_implementation="sdpa")
    return GPT2LMHeadModel(config)
