"""One intervention API for every PhaseLM model: force, scale, replace or ablate while it runs.

    from phaselm.interventions import Intervention, intervene

    with intervene(model, Intervention("pin", 0.3, layers=[1])) as applied:
        logits = model(ids).logits          # layer 1's phases sit on an arc with R = 0.3 exactly
    # here the model is exactly as before; ``applied.to_json()`` records what was done

``model`` is a K-SSM, a fusion model (RWKV-6 / Mamba-2), any Hugging Face model with grafted
Phase Cores (``phaselm.graft``; the grafts are found through their hooks), or a ``Graft``
handle: each declares its sites (``Intervenable``); a model that declares none has no sites.
Oscillator sites are of three kinds (``OSCILLATOR_KINDS``): ``bank`` (K-SSM's phase bank),
``core`` (a grafted Phase Core) and ``mixer`` (the causal Kuramoto token mixer: K-SSM's
``mixer = "kuramoto"``, a fusion model's kuramoto branch). ``layers`` counts the model's
oscillator sites for the oscillator kinds (K-SSM: one bank per block, then one mixer per block
with a Kuramoto mixer; a grafted model: its cores, usually just layer 0) and its blocks for
``ablate``. ``Intervention(..., sites="mixer")`` (or ``"bank"``, ``"core"``) acts on the sites
of that kind only, and ``layers`` then counts those; left out, every oscillator site.

Kinds (``KINDS``; ``Intervention.parse`` reads ``"pin=0.3"``, ``"k_scale=0.5"``, ``"ablate=mamba"``):

* ``sync``          all phases at the current mean phase ψ: R = 1.
* ``disorder``      phases spread evenly over the whole circle, starting from ψ: R = 0.
* ``pin r``         phases evenly spaced on an arc centred at ψ whose width is solved (bisection)
                    so that the discrete order parameter of the N phases equals r exactly.
                    ``sync`` is ``pin 1`` and ``disorder`` is ``pin 0``.
* ``oscillators m`` the readout (and R) use m of the N oscillators, evenly spaced by index
                    (m must divide N: each kept phase fills N/m slots, so every mean over the N
                    slots is the mean over the m kept). Evaluation time: the coupling step still
                    runs all N, and nothing is retrained with m oscillators.
* ``k_scale f``     the coupling K multiplied by f ≥ 0 (K-SSM: K = 2·sigmoid(u) of each
                    position; a Phase Core: its K × drift scale; a Kuramoto mixer: K_h per
                    head) before the coupling steps.
* ``mean_output``   the oscillator output replaced by its mean over positions;
* ``noise_output``  … or by Gaussian noise with the same per-channel mean and std.
                    (K-SSM: the bank's contribution to the residual stream; a Phase Core: its
                    modulation h' − h.) The mean and std are taken per channel over every
                    position of calibration text (``intervene(..., calibration=ids)``), never
                    over the positions being predicted, so nothing leaks from later tokens and
                    cached generation sees the same replacement as a full forward pass. Noise
                    is drawn from a generator seeded by ``intervene(..., seed=)``.
* ``unclamp``       K-SSM: u's clamp [u_min, u_max] switched off (the monostable map at
                    evaluation time; "U regulation off"). A grafted core has no clamp.
* ``ablate b``      zero the output of branch b in the chosen blocks; its state still advances.
                    K-SSM: ``bank``, ``mixer``, ``mlp``; fusion: ``rwkv``, ``mamba``, ``kuramoto``
                    (those it has; exactly the model's own ``forward(ablate=…)``), ``fusion_gate`` (the learned fusion
                    replaced by the plain average (r + m)/2), ``mlp``; a grafted model:
                    ``phase_core`` (the bare backbone, as ``Graft.disabled()``).

Phase kinds (sync, disorder, pin, oscillators) replace θ after the dynamics (the coupling step)
and before the readout, through the site's ``phase_transforms`` slot (K-SSM's bank and the
Phase Core have the same two slots, ``phase_transforms`` and ``coupling_transforms``, applied
inside their forward) (the harmonics Z_n of a bank, the modulation of a core), so the forced
phases are what the model reads, in a plain forward pass and in cached generation alike. A
recurrent core's carried state continues from its free dynamics: only the readout is forced.
The readout is a mean over oscillators, so which oscillator gets which slot of the arc does not
change the output; ψ is kept from the free dynamics, so only the spread (R, and with it every
higher harmonic) is forced.

A Kuramoto mixer site is token-coupled: its R is the synchrony |M_t| of the field
M_t = Σ_{s≤t} A_ts e^{iθ_s} that token t couples to (per head and oscillator; ``measure`` and the
protocols read per token the mean over its heads and oscillators). No causal assignment of token
phases can pin that (token 0 always sees only itself), so there ``sync`` / ``disorder`` /
``pin r`` act on the field through the same ``phase_transforms`` slot: |M_t| set to 1 / 0 / r
with its phase kept (``field_order_transform``), in every Euler step, so the coupling's pull and
the readout's R both see it. ``k_scale`` scales its K_h; ``mean_output`` / ``noise_output``
replace its output; ``oscillators m`` is refused there (no per-token ensemble to subsample).

Interventions compose: nested ``intervene`` blocks or several interventions in one call act in
order (the last registered acts last). Everything is validated before anything is installed (a
bad layer, branch or value leaves the model untouched); on exit — also after an exception —
exactly what was installed is removed, and an intervention on no layers installs nothing, so
the model is bit-exact. ``measure(model)`` records R per site and position without changing
anything (the "measured" observer).

Evaluation-time clamp bounds for K-SSM's u (``override_clamp``) live here too: they change
what a trained model computes without retraining, and restore the same way.

The package, one concept per module: ``kinds`` (the Kind table, ``Intervention``, parsing and
value checks), ``geometry`` (the arc, the mean phase, the kept oscillators), ``sites`` (the sites
each model class declares through ``Intervenable.intervention_sites``), ``hooks`` (transform slots
and output transforms), ``install`` (one planner per act, ``intervene``), ``measure``
(calibration, ``measure``) and ``clamp`` (``override_clamp``).
"""

from .clamp import check_clamp_bounds, override_clamp
from .geometry import (
    FieldTransform,
    PhaseTransform,
    arc_offsets,
    arc_order,
    arc_step,
    arc_transform,
    check_order_value,
    field_order_transform,
    kept_oscillators,
    mean_phase,
    subset_transform,
)
from .hooks import OutputTransform, add_output_transform, append_transform
from .install import INSTALLERS, Applied, intervene
from .kinds import (
    ALL_LAYERS,
    KINDS,
    OSCILLATOR_KINDS,
    VALUE_CHECKS,
    VALUE_HINTS,
    Intervention,
    Kind,
    check_branch,
    check_count,
    check_factor,
    check_kind,
    parse_layers,
)
from .measure import Measurement, calibrate, measure
from .sites import (
    Intervenable,
    Site,
    SiteMap,
    Structure,
    find_grafts,
    has_oscillators,
    oscillator_sites,
    phase_sites,
    require_oscillator_sites,
    require_oscillators,
    resolve_layers,
    site_order,
    sites_of_kind,
    structure,
)

__all__ = [
    "ALL_LAYERS",
    "INSTALLERS",
    "KINDS",
    "OSCILLATOR_KINDS",
    "VALUE_CHECKS",
    "VALUE_HINTS",
    "Applied",
    "FieldTransform",
    "Intervenable",
    "Intervention",
    "Kind",
    "Measurement",
    "OutputTransform",
    "PhaseTransform",
    "Site",
    "SiteMap",
    "Structure",
    "add_output_transform",
    "append_transform",
    "arc_offsets",
    "arc_order",
    "arc_step",
    "arc_transform",
    "calibrate",
    "check_branch",
    "check_clamp_bounds",
    "check_count",
    "check_factor",
    "check_kind",
    "check_order_value",
    "field_order_transform",
    "find_grafts",
    "has_oscillators",
    "intervene",
    "kept_oscillators",
    "mean_phase",
    "measure",
    "oscillator_sites",
    "override_clamp",
    "parse_layers",
    "phase_sites",
    "require_oscillator_sites",
    "require_oscillators",
    "resolve_layers",
    "site_order",
    "sites_of_kind",
    "structure",
    "subset_transform",
]
