"""Where interventions act: the sites each model class declares.

As pyvene maps each model type to its modules, every PhaseLM class that can be intervened on
declares where (:class:`Intervenable`): its oscillator sites — a K-SSM phase bank (``"bank"``),
a grafted Phase Core (``"core"``) or a causal Kuramoto token mixer (``"mixer"``: K-SSM's
``mixer = "kuramoto"``, a fusion model's kuramoto branch) — whose phases, coupling and output
can be forced, and its
named branches (a block's bank, mixer or MLP, a fusion model's RWKV / Mamba / Kuramoto branch
or fusion gate, a grafted core) whose output can be ablated.

:func:`structure` reads a target's declarations: the target's own (K-SSM, fusion model, a bank),
those of handles attached to it through forward hooks (a ``Graft`` on a Hugging Face model), or,
for a module that declares nothing, those of its outermost declaring submodules. Nothing is found
by sniffing the attributes of foreign modules: a model that declares nothing (GPT-2, a plain
Mamba) has no sites, and an intervention on it is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import PhaseLMError
from .kinds import ALL_LAYERS, OSCILLATOR_KINDS


@dataclass
class Site:
    """One oscillator site.

    ``kind``: ``"bank"`` (a K-SSM phase bank), ``"core"`` (a grafted Phase Core) or ``"mixer"``
    (a Kuramoto token mixer). ``module`` has the two transform slots that one mechanism serves
    for all: ``phase_transforms`` and ``coupling_transforms`` (K → K before the coupling steps),
    applied in order inside its forward. A bank's and a core's phase transforms map θ (…, N) → θ
    after the dynamics, before the readout, and their forward output has ``order`` (B, T) and the
    oscillator output (a bank's ``out``; a core's ``hidden``). A mixer's phase transforms map the
    mean field each token couples to, (Re M, Im M) → the same, in every step (its R is across
    tokens; see ``phaselm.layers.kuramoto_mixer``); its output is (out, R (B, T, heads), cache)
    and its R per token is the mean over heads. ``n_oscillators``: per position (a mixer:
    heads × oscillators per head). ``layer`` counts the target's oscillator sites.
    """

    layer: int
    kind: str
    module: nn.Module
    n_oscillators: int

    def __post_init__(self) -> None:
        if self.kind not in OSCILLATOR_KINDS:
            raise PhaseLMError(f"oscillator site kind must be one of {', '.join(OSCILLATOR_KINDS)}, got {self.kind!r}")


@dataclass
class SiteMap:
    """What one class declares: the module a forward pass is called on, its oscillator sites in
    layer order, and its branches (branch → one entry per block, ``None`` where a block lacks
    it). ``label`` names what an attached handle adds (e.g. ``"grafted Phase Core"``)."""

    model: nn.Module
    oscillators: list[Site] = field(default_factory=list)
    branches: dict[str, list] = field(default_factory=dict)
    label: str = ""


class Intervenable:
    """Mixin of every class that declares where interventions act on it."""

    def intervention_sites(self) -> SiteMap:
        """The oscillator sites and branches of this model (see :class:`SiteMap`)."""
        raise NotImplementedError(f"{type(self).__name__} must declare its intervention sites")


@dataclass
class Structure:
    """What a target offers interventions: its oscillator sites and its named branches."""

    model: nn.Module  # what a forward pass is called on (calibration)
    name: str
    sites: list[Site]
    branches: dict[str, list]  # branch → one entry per block (None where that block lacks it)
    grafts: list = field(default_factory=list)  # attached handles (Graft), in layer order


def model_name(model: nn.Module) -> str:
    """The model's ``config.model_type`` (``"kssm"``, ``"gpt2"`` …), else its class name."""
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


def find_grafts(model: nn.Module) -> list[Intervenable]:
    """The handles attached to ``model`` that declare sites (``Graft``), found through their
    forward hooks on its modules or a routed Mamba mixer's ``scan_output_transform`` (a grafted
    PhaseBlock), in module (layer) order."""
    found: list = []
    for module in model.modules():
        attached = [*module._forward_hooks.values(), module.__dict__.get("scan_output_transform")]
        for hook in attached:
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, Intervenable) and owner not in found and owner.intervention_sites().model is model:
                found.append(owner)
    return found


def outermost_declarers(module: nn.Module) -> list[Intervenable]:
    """The submodules of ``module`` that declare sites, not descending into those that do."""
    found: list = []
    for child in module.children():
        if isinstance(child, Intervenable):
            found.append(child)
        else:
            found.extend(outermost_declarers(child))
    return found


def merge(model: nn.Module, maps: list[SiteMap], grafts: list) -> Structure:
    """One ``Structure`` from several declarations: sites numbered in order, branches joined."""
    sites: list[Site] = []
    branches: dict[str, list] = {}
    for declared in maps:
        sites += [replace(site, layer=len(sites) + i) for i, site in enumerate(declared.oscillators)]
        for branch, entries in declared.branches.items():
            branches.setdefault(branch, []).extend(entries)
    name = model_name(model)
    labels = list(dict.fromkeys(m.label for m in maps if m.label))
    if labels:
        name = f"{name} ({', '.join(labels)})"
    return Structure(model, name, sites, branches, list(grafts))


def structure(target) -> Structure:
    """Sites and branches of a K-SSM, a fusion model, a model with grafted cores, a ``Graft``
    handle, a K-SSM bank, or any module holding declaring modules."""
    if isinstance(target, Intervenable):
        declared = target.intervention_sites()
        if declared.model is not target:  # a handle attached to a model (a Graft) speaks for itself
            return merge(declared.model, [declared], [target])
        own = [declared]
    else:
        own = [m.intervention_sites() for m in outermost_declarers(target)]
    grafts = find_grafts(target)
    return merge(target, own + [g.intervention_sites() for g in grafts], grafts)


def oscillator_sites(target) -> list[Site]:
    """The oscillator sites of ``target`` (see :func:`structure`), in layer order."""
    return structure(target).sites


def phase_sites(model: nn.Module) -> list[nn.Module]:
    """K-SSM phase banks of ``model`` in layer order (grafted cores: :func:`oscillator_sites`)."""
    return [site.module for site in structure(model).sites if site.kind == "bank"]


def has_oscillators(model: nn.Module) -> bool:
    """Whether ``model`` has K-SSM phase banks."""
    return bool(phase_sites(model))


def require_oscillators(model: nn.Module, what: str = "this eval") -> list[nn.Module]:
    """The K-SSM phase banks of ``model``; none is a one-line error naming ``what`` needed them."""
    sites = phase_sites(model)
    if not sites:
        name = model_name(model)
        raise PhaseLMError(
            f"{what} needs a model with oscillators (K-SSM); this is a {name} model without an oscillator bank"
        )
    return sites


def require_oscillator_sites(model: nn.Module, what: str = "this eval") -> list[Site]:
    """The oscillator sites of ``model`` (K-SSM's banks or grafted Phase Cores); none is a
    one-line error naming ``what`` needed them."""
    sites = oscillator_sites(model)
    if not sites:
        raise PhaseLMError(
            f"{what} needs a model with oscillators (K-SSM or a grafted Phase Core); this {model_name(model)} model "
            "has none, so it has no R to read or force"
        )
    return sites


def require_sites(info: Structure, kind: str) -> list[Site]:
    """The oscillator sites of ``info``; none is the one-line "has no oscillators" error."""
    if not info.sites:
        raise PhaseLMError(
            f"intervention {kind!r} needs a model with oscillators (K-SSM or a grafted Phase Core); "
            f"this {info.name} model has no oscillators (it declares no oscillator sites)"
        )
    return info.sites


def sites_of_kind(info: Structure, site_kind: str | None, intervention: str) -> list[Site]:
    """The oscillator sites of ``info`` that ``intervention`` (a kind's name) acts on: every one
    for ``site_kind`` None, else those of that kind, in layer order; none is a one-line error."""
    sites = require_sites(info, intervention)
    if site_kind is None:
        return sites
    chosen = [site for site in sites if site.kind == site_kind]
    if not chosen:
        present = ", ".join(dict.fromkeys(site.kind for site in sites))
        raise PhaseLMError(
            f"intervention {intervention!r} targets {site_kind} sites, but this {info.name} model has none; "
            f"its oscillator sites are: {present}"
        )
    return chosen


def site_order(site: Site, output) -> torch.Tensor:
    """R (B, T) from a site's forward output: a bank's or core's ``order``; a mixer's R (B, T,
    heads) averaged over heads (the synchrony of the field each token couples to)."""
    if site.kind == "mixer":
        return output[1].mean(-1)
    return output.order


def resolve_layers(layers: tuple[int, ...] | str, n_sites: int, what: str = "oscillator layers") -> list[int]:
    """``"all"`` → every index below ``n_sites``; a tuple is checked against the range."""
    if layers == ALL_LAYERS:
        return list(range(n_sites))
    for layer in layers:
        if not 0 <= layer < n_sites:
            raise PhaseLMError(f"layer {layer} is out of range: this model has {n_sites} {what} (0..{n_sites - 1})")
    return list(layers)
