"""Evaluations of trained language models (K-SSM and the GPT baseline), each a JSON-able dict
plus a plot:

Each eval is a design of the one protocol runner (:mod:`phaselm.protocols.designs`); the
``phaselm eval …`` commands build a protocol from their flags and run it there. The functions
named ``*_eval`` take a :class:`phaselm.subject.Subject`; the older names (``r_intervention_eval``,
``temperature_sweep``, ``clamp_sweep``, ``order_loss_correlation``) take a bare model and wrap it.

* :func:`r_intervention_eval` — force the oscillator phases (sync / disorder / pin R) at chosen
  layers and measure what changes against the unforced model, paired by prompt.
* :func:`temperature_sweep` — quality of sampled text per temperature.
* :func:`clamp_sweep` — evaluation-time bounds of K-SSM's u and their effect on loss and R.
* :func:`order_loss_correlation` — per-token cross-entropy against R, per layer.
* :func:`ablation_table` — several trained runs side by side (params, val loss, R, u).

Definitions used throughout (per prompt, over the ``max_new_tokens`` generated tokens):

* distinct-n: unique n-grams / all n-grams of the continuation (n = 1, 2, 3);
* repetition: 1 − distinct-4, the share of the continuation's 4-grams that repeat an earlier
  one (the seeds' "distinct-4" turned into a rate that grows with repetition);
* perplexity: exp(mean −log p(token)) of the continuation given its prompt, under the
  *unforced* model at temperature 1 (so forced text is judged by the same model);
* KL: mean over positions of KL(p_unforced ‖ p_forced) of the next-token distributions, both
  evaluated (teacher forced) along the *unforced* continuation;
* mean R: the order parameter of the positions that produced the generated tokens, per layer
  and averaged over layers.

Prompts are windows of the validation split (the last ``val_fraction`` of the token stream, as
in training), evenly spaced, so the same run always gets the same prompts. Generation runs
batched with the model's recurrent cache; sampling uses its own seeded generator, and a
forced run reuses the unforced run's seed, so both draw the same random numbers.
"""

from .ablation import ablation_table
from .clamp import clamp_eval, clamp_sweep, iter_bounds, parse_bounds
from .correlation import correlation_eval, order_loss_correlation
from .intervention import intervention_eval, r_intervention_eval
from .outputs import prepare_outputs
from .sampling import distinct_n, kl_divergence, sample, text_metrics, validation_prompts
from .subject import (
    CLAMP_NOTE,
    CORRELATION_NOTE,
    DEFAULT_BOUNDS,
    DEFAULT_TEMPERATURES,
    METRIC_LABELS,
    METRICS,
    SAMPLES_SHOWN,
    TEXT_METRICS,
    default_device,
    default_out_dir,
    load_subject,
)
from .temperature import parse_floats, temperature_eval, temperature_sweep

__all__ = [
    "CLAMP_NOTE",
    "CORRELATION_NOTE",
    "DEFAULT_BOUNDS",
    "DEFAULT_TEMPERATURES",
    "METRICS",
    "METRIC_LABELS",
    "SAMPLES_SHOWN",
    "TEXT_METRICS",
    "ablation_table",
    "clamp_eval",
    "clamp_sweep",
    "correlation_eval",
    "default_device",
    "default_out_dir",
    "distinct_n",
    "intervention_eval",
    "iter_bounds",
    "kl_divergence",
    "load_subject",
    "order_loss_correlation",
    "parse_bounds",
    "parse_floats",
    "prepare_outputs",
    "r_intervention_eval",
    "sample",
    "temperature_eval",
    "temperature_sweep",
    "text_metrics",
    "validation_prompts",
]
