"""``intervene``: validate every intervention, then install them, and undo exactly that on exit.

One planner per act (:data:`INSTALLERS`): each checks an intervention against the target's
declared sites and returns installers — functions that make one change and return its remover.
Nothing is installed until every intervention of the call has been planned, so a bad layer,
branch or value leaves the model untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PhaseLMError
from .geometry import arc_step, field_order_transform, kept_oscillators
from .hooks import OutputTransform, Remover, add_output_transform, append_transform, average_fusion, zero_output
from .kinds import KINDS, Intervention
from .measure import Calibration, calibrate
from .sites import Site, Structure, resolve_layers, sites_of_kind, structure

Installer = Callable[[], Remover]  # makes one change; returns what undoes it


@dataclass
class PlanContext:
    """What the planners of one ``intervene`` call share: the calibration text, the noise
    seed, and the calibration already computed (layer → mean, std, positions)."""

    calibration: Any
    seed: int
    calibrated: Calibration = field(default_factory=dict)


def chosen_sites(info: Structure, item: Intervention, record: dict) -> list[Site]:
    """The oscillator sites ``item`` acts on (its layers, which count the sites of ``item.sites``
    when it names a kind, recorded); no sites is a one-line error."""
    sites = sites_of_kind(info, item.sites, item.kind)
    layers = resolve_layers(item.layers, len(sites), f"{item.sites} sites" if item.sites else "oscillator layers")
    record["layers"] = layers
    return [sites[layer] for layer in layers]


# --------------------------------------------------------------------------------------------
# One planner per act
# --------------------------------------------------------------------------------------------


def plan_phases(info: Structure, item: Intervention, record: dict, context: PlanContext) -> list[Installer]:
    """sync / disorder / pin / oscillators: a phase transform in each chosen site's slot."""
    chosen = chosen_sites(info, item, record)
    target = item.target_order
    if target is not None:
        record["target_order"] = target
        arcs = [site for site in chosen if site.kind != "mixer"]  # a mixer forces its field, not an arc
        if arcs:
            n = arcs[0].n_oscillators
            record.update(n_oscillators=n, arc_width=arc_step(n, target) * (n - 1))
    steps: list[Installer] = []
    for site in chosen:
        if site.kind == "mixer":
            field_transform = mixer_transform(item)
            steps.append(lambda s=site, t=field_transform: append_transform(s.module.phase_transforms, t))
            continue
        transform = KINDS[item.kind].build(item.value, site.n_oscillators)  # validates (e.g. m divides N) now
        if item.kind == "oscillators":
            record.setdefault("n_oscillators", site.n_oscillators)
            record.setdefault("kept", kept_oscillators(site.n_oscillators, item.value))
        steps.append(lambda s=site, t=transform: append_transform(s.module.phase_transforms, t))
    return steps


def mixer_transform(item: Intervention):
    """A Kuramoto mixer site's phase transform for ``item``: the field each token couples to, at
    |M| = the kind's R with its phase kept (``field_order_transform``). ``oscillators m`` is
    refused: the mixer's R is across tokens, so there is no per-token ensemble to subsample."""
    target = item.target_order
    if target is None:
        raise PhaseLMError(
            f"intervention {item.kind!r} needs a bank or core site; a Kuramoto mixer's R is across tokens — "
            "use pin, sync, disorder or k_scale there, or sites='bank'"
        )
    return field_order_transform(target)


def plan_coupling(info: Structure, item: Intervention, record: dict, context: PlanContext) -> list[Installer]:
    """k_scale: K × factor in each chosen site's coupling slot (a bank's 2·sigmoid(u), a core's K)."""
    factor = item.value

    def scale(k: torch.Tensor) -> torch.Tensor:
        return k * factor

    return [
        lambda s=site: append_transform(s.module.coupling_transforms, scale)
        for site in chosen_sites(info, item, record)
    ]


def plan_clamp(info: Structure, item: Intervention, record: dict, context: PlanContext) -> list[Installer]:
    """unclamp: a K-SSM bank's clamp of u switched off."""
    chosen = chosen_sites(info, item, record)
    if any(site.kind != "bank" for site in chosen):
        raise PhaseLMError(
            "intervention 'unclamp' needs K-SSM banks (the clamp of u); a grafted Phase Core or a Kuramoto mixer "
            "has no clamp — pass sites='bank', or compare separately trained runs"
        )
    return [lambda s=site: unclamp(s.module) for site in chosen]


def plan_output(info: Structure, item: Intervention, record: dict, context: PlanContext) -> list[Installer]:
    """mean_output / noise_output: each chosen site's oscillator output replaced, from calibration."""
    chosen = chosen_sites(info, item, record)
    if not chosen:
        return []
    if context.calibration is None:
        raise PhaseLMError(
            f"intervention {item.kind!r} needs calibration text: intervene(..., calibration=ids) with token ids "
            "whose oscillator output gives the mean and std"
        )
    calibrated = context.calibrated
    missing = [s.layer for s in chosen if s.layer not in calibrated]
    if missing:
        calibrated.update(calibrate(info, context.calibration, missing))
    record["calibration_positions"] = calibrated[chosen[0].layer][2]
    record["output_std"] = [float(calibrated[s.layer][1].mean()) for s in chosen]
    if item.kind == "noise_output":
        record["seed"] = context.seed
    steps: list[Installer] = []
    for site in chosen:
        mean, std, _ = calibrated[site.layer]
        replacement = output_replacement(site, item.kind, mean, std, context.seed)
        steps.append(lambda s=site, r=replacement: add_output_transform(s.module, r))
    return steps


def plan_branch(info: Structure, item: Intervention, record: dict, context: PlanContext) -> list[Installer]:
    """ablate: the output of a declared branch zeroed in the chosen blocks (its state advances)."""
    branch = item.value
    if branch not in info.branches:
        raise branch_error(info, branch)
    entries = info.branches[branch]
    layers = resolve_layers(item.layers, len(entries), "blocks" if branch != "phase_core" else "grafted cores")
    missing = [layer for layer in layers if entries[layer] is None]
    if missing:
        raise PhaseLMError(f"block {missing[0]} of this {info.name} model has no {branch!r} branch; pick other layers")
    record["layers"] = layers
    if branch == "phase_core":  # the bare backbone, exactly as Graft.disabled()
        return [lambda g=entries[layer]: disable_graft(g) for layer in layers]
    transform = average_fusion if branch == "fusion_gate" else zero_output
    return [lambda m=entries[layer]: add_output_transform(m, transform) for layer in layers]


Planner = Callable[[Structure, Intervention, dict, PlanContext], list[Installer]]

INSTALLERS: dict[str, Planner] = {
    "phases": plan_phases,
    "coupling": plan_coupling,
    "clamp": plan_clamp,
    "output": plan_output,
    "branch": plan_branch,
}


# --------------------------------------------------------------------------------------------
# What the planners install
# --------------------------------------------------------------------------------------------


def output_replacement(site: Site, kind: str, mean: torch.Tensor, std: torch.Tensor, seed: int) -> OutputTransform:
    """An output transform replacing a site's oscillator output (B, T, D) by ``mean`` (D,)
    (``mean_output``) or by Gaussian noise with per-channel ``mean`` and ``std`` (D,),
    drawn from a generator seeded by ``seed`` + the site's layer (``noise_output``)."""
    generators: dict = {}

    def replacement(like: torch.Tensor) -> torch.Tensor:
        m = mean.to(like.device)
        if kind == "mean_output":
            return m.expand_as(like).clone()
        if like.device not in generators:
            generators[like.device] = torch.Generator(device=like.device).manual_seed(seed + site.layer)
        noise = torch.randn(like.shape, generator=generators[like.device], device=like.device, dtype=torch.float32)
        return m + std.to(like.device) * noise

    if site.kind == "bank":
        return lambda args, out: dataclasses.replace(out, out=replacement(out.out.float()).to(out.out.dtype))
    if site.kind == "mixer":  # (out, R, cache): R and the cache are the mixer's own
        return lambda args, out: (replacement(out[0].float()).to(out[0].dtype), *out[1:])

    def core(args, out):
        hidden = args[0]
        return dataclasses.replace(out, hidden=(hidden.float() + replacement(hidden.float())).to(hidden.dtype))

    return core


def disable_graft(handle) -> Remover:
    """Switch a ``Graft`` off (the bare backbone); the remover restores its previous state."""
    previous, handle.enabled = handle.enabled, False

    def restore() -> None:
        handle.enabled = previous

    return restore


def unclamp(bank: nn.Module) -> Remover:
    """Switch a K-SSM bank's clamp of u off; the remover restores its previous setting."""
    previous, bank.cfg.bistable = bank.cfg.bistable, False

    def restore() -> None:
        bank.cfg.bistable = previous

    return restore


def branch_error(info: Structure, branch: str) -> PhaseLMError:
    """The one-line error for a branch ``info`` does not declare (with a "did you mean")."""
    if not info.branches:
        return PhaseLMError(
            f"this {info.name} model has no branch PhaseLM can ablate (K-SSM: bank, mixer, mlp; fusion: rwkv, mamba, "
            "kuramoto, fusion_gate, mlp; a grafted model: phase_core)"
        )
    close = difflib.get_close_matches(branch, list(info.branches), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return PhaseLMError(
        f"this {info.name} model has no branch {branch!r}; its branches are: {', '.join(info.branches)}{hint}"
    )


# --------------------------------------------------------------------------------------------
# intervene
# --------------------------------------------------------------------------------------------


@dataclass
class Applied:
    """What ``intervene`` did, for run metadata (``records``: one dict per intervention)."""

    records: list[dict] = field(default_factory=list)
    model: str = ""

    def to_json(self) -> list[dict]:
        """The records as JSON-ready dicts (copies)."""
        return [dict(r) for r in self.records]


def plan(info: Structure, item: Intervention, context: PlanContext) -> tuple[dict, list[Installer]]:
    """Validate one intervention and return (its record, installers). Installs nothing."""
    if not isinstance(item, Intervention):
        raise PhaseLMError(f"expected an Intervention, got {type(item).__name__}")
    act = KINDS[item.kind].act
    if act not in INSTALLERS:  # pragma: no cover - a Kind with an unknown act
        raise PhaseLMError(f"intervention {item.kind!r} has no installer for {act!r}")
    record = item.to_dict()
    return record, INSTALLERS[act](info, item, record, context)


@contextlib.contextmanager
def intervene(target, *interventions: Intervention, calibration=None, seed: int = 0) -> Iterator[Applied]:
    """Apply ``interventions`` (in order) to ``target`` for the ``with`` block.

    ``target``: a K-SSM, a fusion model, a model with grafted Phase Cores, a ``Graft`` or a
    module holding K-SSM banks. ``calibration``: token ids (B, T) or a list of sequences, for
    ``mean_output`` / ``noise_output``. ``seed``: the noise generator's seed.
    Everything is validated before anything is installed; exiting (normally or by an
    exception) removes exactly what was installed, in reverse order.
    """
    info = structure(target) if interventions else None
    applied = Applied(model=info.name if info else "")
    context = PlanContext(calibration, seed)
    installers: list[Installer] = []
    for item in interventions:
        record, steps = plan(info, item, context)
        applied.records.append(record)
        installers.extend(steps)
    undo: list[Remover] = []
    try:
        for install in installers:
            undo.append(install())
        yield applied
    finally:
        for remove in reversed(undo):
            remove()
