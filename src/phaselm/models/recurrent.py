"""What PhaseLM's recurrent language models share (K-SSM, the fusion family).

A Hugging Face base class in the manner of ``LlamaPreTrainedModel``: GPT-2-style init (N(0, 0.02),
zero biases, except modules marked ``_phaselm_initialised``), tied input/output embeddings
(``embed`` / ``lm_head``), a vocabulary check on the ids, the shifted next-token loss, and
cached generation: the cache counts the positions it has seen, so each step feeds only the new
tokens and costs O(1) in the context length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from ..errors import PhaseLMError


class RecurrentLM(PreTrainedModel, GenerationMixin):
    """Base of PhaseLM's recurrent causal LMs: init, tied embeddings, id check, shifted loss, cached generation."""

    _tied_weights_keys = {"lm_head.weight": "embed.weight"}  # noqa: RUF012  (transformers' own convention)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)) and not getattr(module, "_phaselm_initialised", False):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            module._phaselm_initialised = True

    def get_input_embeddings(self):
        """The token embedding (``embed``), for transformers' tying and resizing."""
        return self.embed

    def get_output_embeddings(self):
        """The LM head (``lm_head``), tied to the embedding."""
        return self.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state lives in the model's own cache, not a key/value cache

    def check_ids(self, input_ids: torch.Tensor) -> None:
        """One-line error for ids outside the vocabulary (a tokenizer/model mismatch).

        The check syncs with the GPU and breaks a compiled graph, so a compiled training step
        (whose ids come from the model's own tokenizer) skips it.
        """
        if torch.compiler.is_compiling():
            return
        if int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0:
            raise PhaseLMError(
                f"token id {int(input_ids.max())} is outside the model's vocabulary of {self.config.vocab_size}; "
                "use the tokenizer the model was trained with"
            )

    @staticmethod
    def shifted_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """HF convention: labels are the inputs; position t predicts label t + 1."""
        if labels is None:
            return None
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten())

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, use_cache=True, attention_mask=None, **kwargs
    ):
        """The model's inputs for one generation step: only the ids (B, T) the cache has not seen yet."""
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.seen :]
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
            "attention_mask": attention_mask,
        }

    @staticmethod
    def padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """The (B, length) columns of a padding mask that belong to this call's tokens, or None
        when there is no padding among them (the unmasked path is then taken, at no cost).

        A padded position leaves every recurrent state untouched (see the mixers), so a
        left-padded row computes exactly what it would alone: batched generation works.
        """
        if attention_mask is None:
            return None
        mask = attention_mask[:, -length:]
        if bool(mask.all()):
            return None
        return mask


def register_auto_classes(config_class, model_class) -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``config_class.model_type``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register(config_class.model_type, config_class)
        AutoModelForCausalLM.register(config_class, model_class)
    except ValueError:  # already registered
        pass
