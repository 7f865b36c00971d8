"""PhaseLM's own language models, as Hugging Face models.

Importing this package registers their model types ("kssm", "phaselm_fusion") with
``AutoConfig`` / ``AutoModelForCausalLM``, so ``from_pretrained`` on a saved folder works.
"""

from . import fusion, kssm  # noqa: F401  (imported for their Auto-class registration)
