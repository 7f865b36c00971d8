"""The registry of designs: every way PhaseLM evaluates a model, keyed by the name a protocol's
``[protocol] kind`` gives, run by the one runner :func:`phaselm.protocols.run_protocol`.

Two families share the runner:

* result designs (``observation``, ``intervention``, ``ablation_grid``, ``does_r_matter``), declared in TOML and
  checked by :func:`phaselm.protocols.load_protocol`: they return a body that the runner writes
  as results.json / results.md / results.png beside a copy of the protocol file;
* eval designs (``r_intervention``, ``temperature_sweep``, ``clamp_sweep``,
  ``order_loss_correlation``, ``ablation_table``, ``fusion_diagnostics``), built from the flags
  of ``phaselm eval …`` / ``phaselm diagnose`` (or from a TOML file's ``[eval]`` table) by
  :mod:`phaselm.protocols.eval_designs`: they write their own NAME.json / NAME.png, which the
  runner refuses to overwrite before opening any model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PhaseLMError
from . import eval_designs as ev
from .causal import run_does_r_matter
from .grid import grid_cells, run_ablation_grid
from .intervention import run_intervention
from .observation import run_observation
from .spec import Protocol


@dataclass(frozen=True)
class Design:
    """One design the runner knows. ``run`` is ``(protocol, subject, reference, progress) → body``
    for a result design and ``(protocol, subject, out_dir, progress, command) → result`` for an eval
    design (``output`` set: the file stem it writes, with ``suffixes``)."""

    name: str
    summary: str
    run: Callable
    units: Callable[[Protocol], int] | None = None  # result designs: progress steps
    output: str | None = None  # eval designs: NAME of NAME.json / NAME.png
    suffixes: tuple[str, ...] = (".json", ".png")
    open_subject: Callable[[Protocol], object] | None = ev.open_eval_subject  # None: the design opens its runs
    check_out: Callable[[Path], None] | None = None  # instead of refusing existing NAME.* files

    @property
    def writes_results(self) -> bool:
        """Whether the runner writes results.json / .md / .png from the body the design returns."""
        return self.output is None


def _generation_units(protocol: Protocol) -> int:
    return len(protocol.seeds) * protocol.n_prompts


def _grid_units(protocol: Protocol) -> int:
    return len(grid_cells(protocol)) + 1 if protocol.grid else 1


def _causal_units(protocol: Protocol) -> int:
    return 1 + len(protocol.runs)


def _run_observation(protocol, subject, reference, progress):
    return run_observation(protocol, subject, progress)


def _run_grid(protocol, subject, reference, progress):
    return run_ablation_grid(protocol, subject, progress)


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("observation", "blind vs measured generation, paired by prompt and seed", _run_observation,
           units=_generation_units),
    Design("intervention", "each condition vs none, paired by prompt and seed (declared test, one Holm family, "
           "perplexity under a reference model)", run_intervention, units=_generation_units),
    Design("ablation_grid", "evaluation-time changes over validation windows and seeds", _run_grid, units=_grid_units),
    Design("does_r_matter", "issue 15's causal test: oscillator ablation and R pin / sync / disorder (ΔCE, KL) and "
           "the R–loss correlation, paired per window, one Holm family, verdict by pre-declared thresholds",
           run_does_r_matter, units=_causal_units),
    Design("r_intervention", "forced vs unforced phases, one seed, paired t and Wilcoxon (perplexity under the "
           "unforced model)", ev.run_intervention_eval, output="intervention"),
    Design("temperature_sweep", "text quality per sampling temperature", ev.run_temperature_eval,
           output="temperature"),
    Design("clamp_sweep", "evaluation-time clamp bounds of K-SSM's u", ev.run_clamp_eval, output="clamp"),
    Design("order_loss_correlation", "R against the per-token loss, per layer", ev.run_correlation_eval,
           output="correlation"),
    Design("ablation_table", "several trained runs side by side", ev.run_ablation_eval, output="ablation",
           suffixes=(".json", ".md", ".png"), open_subject=None),
    Design("fusion_diagnostics", "the fusion family's D1–D4, state norms, gates and V5 metrics",
           ev.run_diagnostics_eval, output="diagnostics", open_subject=ev.open_fusion_subject,
           check_out=ev.check_diagnostics_out),
)}
RESULT_KINDS = tuple(name for name, d in DESIGNS.items() if d.writes_results)
EVAL_KINDS = tuple(name for name, d in DESIGNS.items() if not d.writes_results)


def design_of(kind: str) -> Design:
    """The registered design called ``kind``; an unknown name is a one-line error naming the closest."""
    if kind in DESIGNS:
        return DESIGNS[kind]
    close = difflib.get_close_matches(str(kind), list(DESIGNS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise PhaseLMError(f"{kind!r} is not a protocol design; choose one of {', '.join(DESIGNS)}{hint}")


def read_protocol(path) -> Protocol:
    """Read a protocol file of any design: a result design's file is checked by
    :func:`phaselm.protocols.load_protocol`; an eval design's holds ``[protocol] kind``,
    ``[model] path`` (and ``device``) and an ``[eval]`` table of the eval's options, the same as
    its command's flags (e.g. ``temperatures = [0, 1.0]``, ``prompts = 50``)."""
    import dataclasses
    import hashlib
    import inspect

    from ..config import tomllib
    from .spec import load_protocol

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return load_protocol(path)  # its one-line error says what is wrong with the file
    kind = (data.get("protocol") or {}).get("kind") if isinstance(data.get("protocol"), dict) else None
    if kind not in EVAL_KINDS:
        return load_protocol(path)
    for section in data:
        if section not in ("protocol", "model", "eval"):
            raise PhaseLMError(f"section [{section}] does not apply to a {kind} protocol; use [protocol], [model] and "
                               "[eval]")
    model = data.get("model") or {}
    if "path" not in model and kind != "ablation_table":
        raise PhaseLMError(f"protocol {path} is missing [model] path")
    options = dict(data.get("eval") or {})
    builder = ev.BUILDERS[kind]
    known = [p for p in inspect.signature(builder).parameters if p not in ("run_dir", "run_dirs", "path", "device")]
    known += ["runs"] if kind == "ablation_table" else []
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
            raise PhaseLMError(f"unknown key {key!r} in [eval] of a {kind} protocol{hint}")
    if kind == "ablation_table":
        protocol = builder(options.pop("runs", []), **options, device=model.get("device"))
    else:
        from .spec import resolve_path

        protocol = builder(str(resolve_path(model["path"], path.parent)), **options, device=model.get("device"))
    return dataclasses.replace(protocol, file=path, text=text, name=path.stem,
                               sha256=hashlib.sha256(path.read_bytes()).hexdigest())
