"""Experiment protocols: declared in TOML before running, hashed, run on any PhaseLM model.

This package is the one runner of every evaluation: :func:`run_protocol` runs each design of
the registry :data:`DESIGNS` (:mod:`.designs`). Besides the three kinds below, every eval is a
design (``r_intervention``, ``temperature_sweep``, ``clamp_sweep``, ``order_loss_correlation``,
``ablation_table``, ``fusion_diagnostics``): ``phaselm eval …`` and ``phaselm diagnose`` build
its :class:`Protocol` from their flags (:mod:`.eval_designs`, one builder per eval), and a TOML
file with ``[protocol] kind``, ``[model] path`` and an ``[eval]`` table of the same options
builds the same one (:func:`read_protocol`). Eval designs write the files their commands
always wrote (NAME.json, NAME.png; diagnostics.json and plots/).

    phaselm protocol run protocols/kssm-observation.toml --out runs/protocols/kssm-observation

A protocol file declares the model (a ``phaselm train-lm`` run, a model folder or a
Phase-Mamba run), the prompts, the conditions, the number of samples per condition, the seeds,
the decoding settings, the metrics and the statistical test — before anything runs. Its
SHA-256 is stored with the results (``results.json``, beside an exact copy ``protocol.toml``),
and results never attach to a changed protocol: running into an out directory whose results
belong to a different hash is refused.

Kinds (``[protocol] kind``):

* ``observation``   blind vs measured generation (the seeds' observer protocol), paired by
                    prompt and seed. Measured mode must not change the computation: the
                    protocol reports token agreement between the two, then whether any
                    difference in R is detectable — mean (paired t, Wilcoxon, sign-flip
                    permutation), spread (Brown–Forsythe, Levene, a permutation test of the
                    variance ratio), range — with bootstrap CIs, effect sizes, and the power
                    for the n used (the smallest d_z and variance ratio detectable at the
                    declared power).
* ``intervention``  each condition (one or more interventions of :mod:`phaselm.interventions`)
                    against the unforced model, paired by prompt and seed: KL of the
                    next-token distributions, perplexity under a reference model, distinct-n,
                    repetition, mean R.
* ``ablation_grid`` a grid of evaluation-time changes on a trained model (layer, K scale,
                    oscillator count, U regulation on/off, branch ablation) over validation
                    windows drawn with several seeds; loss and R per cell, each cell against
                    the model as trained.
* ``does_r_matter`` issue 15's causal test (:mod:`.causal`): the oscillator branch ablated and R
                    pinned / synchronised / disordered, each paired per validation window with
                    the intact model (ΔCE, KL), and the within-window R–loss ρ; ≥ 3 seeds, one
                    Holm family, and a verdict by the thresholds the file declares.

The file (every key is checked; a typo names the closest key; see protocols/*.toml):

    [protocol]   kind, name, description
    [model]      path (train-lm run, model folder or Phase-Mamba run), reference, device
    [prompts]    source = "validation" (count windows of tokens from the run's validation
                 split) | "file" (file, one prompt per line) | "list" (texts)
    [decoding]   max_new_tokens, temperature (0 = greedy: then one seed), top_k
    [design]     seeds, samples_per_condition (must equal prompts × seeds, or windows × seeds)
    [[conditions]]  intervention = "pin=0.3" or a list (composed), layers, name   (intervention)
    [grid]       layers, k_scale, oscillators, u_regulation, ablate               (ablation_grid)
    [evaluation] windows, seq_len, batch_size                       (ablation_grid, does_r_matter)
    [causal]     ablate (the oscillator branch), pin (R), layers                   (does_r_matter)
    [thresholds] ablation_nats, pin_dz (the verdict's bounds, hashed with the file) (does_r_matter)
    [metrics]    names
    [statistics] test = "t" | "wilcoxon" | "permutation", alpha, power, ci_level,
                 bootstrap_resamples, permutation_resamples

Generation: observation uses :func:`phaselm.generation.generate` one sample at a time (the very
blind and measured paths of ``phaselm generate``); intervention decodes K-SSM and fusion models
in batches with their recurrent cache (:func:`phaselm.evals.sample`) and other models one
sample at a time. R of a sample is R of the positions that produced its tokens, recomputed by
one teacher-forced forward pass (mean over oscillator sites).

In every kind the p-values of a protocol form one family, corrected by Holm, and every table
states n. ``run_protocol`` writes ``results.json``, ``results.md``, ``results.png`` and
``protocol.toml`` into the out directory; :func:`write_protocol_report` (results in, files out)
is the hook the HTML report builds on.
"""

from .designs import DESIGNS, EVAL_KINDS, RESULT_KINDS, Design, design_of, read_protocol
from .eval_designs import (
    ablation_protocol,
    clamp_protocol,
    correlation_protocol,
    diagnostics_protocol,
    intervention_protocol,
    temperature_protocol,
)
from .grid import grid_cells
from .run import run_diagnostics, run_protocol, write_protocol_report
from .spec import KINDS, METRICS, Condition, Protocol, check_out_dir, default_out_dir, load_protocol, sha256_of
from .subject import Subject, generate_many, generate_sample, load_subject

__all__ = [
    "DESIGNS", "EVAL_KINDS", "KINDS", "METRICS", "RESULT_KINDS", "Condition", "Design", "Protocol", "Subject",
    "ablation_protocol", "check_out_dir", "clamp_protocol", "correlation_protocol", "default_out_dir", "design_of",
    "diagnostics_protocol", "generate_many", "generate_sample", "grid_cells", "intervention_protocol", "load_protocol",
    "load_subject", "read_protocol", "run_diagnostics", "run_protocol", "sha256_of", "temperature_protocol",
    "write_protocol_report",
]
