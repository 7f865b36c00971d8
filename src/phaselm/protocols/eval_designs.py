"""The evals as designs of the one protocol runner: one builder per eval turns what
``phaselm eval …`` / ``phaselm diagnose`` take (their flags, or a TOML protocol's ``[eval]``
table) into a :class:`Protocol`, and one runner per eval runs it on a :class:`Subject`.

The designs write their own files (NAME.json and NAME.png, diagnostics.json and plots/), as
the commands always have; :func:`phaselm.protocols.run_protocol` refuses an out directory
that already holds them before any model is opened.

Two intervention designs exist on purpose, because their statistics differ:

* ``intervention`` (:mod:`phaselm.protocols.intervention`, declared in TOML): conditions ×
  prompts × seeds, perplexity under a reference model, the protocol's declared test with one
  Holm family, a power statement.
* ``r_intervention`` (:func:`phaselm.evals.intervention_eval`, ``phaselm eval intervention``):
  one seed, prompts decoded in batches with the recurrent cache, perplexity under the unforced
  model, a paired t-test and a Wilcoxon test each Holm-corrected over interventions × metrics,
  d_z, rank-biserial r and a bootstrap CI.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from ..errors import PhaseLMError
from ..evals.subject import METRICS as INTERVENTION_METRICS
from ..metrics import TEXT_METRICS
from ..subject import Subject
from .spec import Protocol

COMMAND_LINE = Path("<command line>")  # the "file" of a protocol built from flags
DEFAULT_ABLATION_OUT = Path("runs/ablation")


def eval_protocol(kind: str, model_path, settings: dict, *, seeds=(0,), n: int = 0, metrics=(),
                  device: str | None = None, file: Path = COMMAND_LINE, text: str | None = None) -> Protocol:
    """A protocol of an eval design: ``settings`` (the eval's options, None left out) are recorded
    as its ``[eval]`` table, and the TOML text they make (or the file's ``text``) is hashed."""
    import tomli_w

    settings = {k: v for k, v in settings.items() if v is not None}
    if text is None:
        text = tomli_w.dumps({"protocol": {"kind": kind}, "model": {"path": str(model_path)}, "eval": settings})
    return Protocol(
        file=file, text=text, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), kind=kind,
        name=kind if file == COMMAND_LINE else file.stem, description="", model_path=str(model_path), reference=None,
        device=device, seeds=list(seeds), samples_per_condition=n, metrics=list(metrics), test="t", alpha=0.05,
        settings=settings,
    )


# ------------------------------------------------------------------ flags → Protocol, one per eval


def _interventions(settings: dict):
    from ..interventions import Intervention, parse_layers

    layer_spec = parse_layers(settings.get("layers", "all"))
    return [Intervention.parse(k, layer_spec, settings.get("value")) for k in settings.get("kinds", ["sync"])]


def intervention_protocol(run_dir, kinds: list[str] | None = None, value: float | None = None, layers: str = "all",
                          prompts: int = 50, prompt_tokens: int = 32, max_new_tokens: int = 64,
                          temperature: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 16,
                          device: str | None = None) -> Protocol:
    """``phaselm eval intervention``'s flags → an ``r_intervention`` protocol (checked now)."""
    settings = {"kinds": [k.strip() for spec in (kinds or ["sync"]) for k in spec.split(",") if k.strip()],
                "value": value, "layers": layers, "prompts": prompts, "prompt_tokens": prompt_tokens,
                "max_new_tokens": max_new_tokens, "temperature": float(temperature), "top_k": top_k, "seed": seed,
                "batch_size": batch_size}
    items = _interventions(settings)
    if value is not None and not any(i.kind == "pin" for i in items):
        raise PhaseLMError("--value only applies to --kind pin; add --kind pin or drop --value")
    if prompts < 2:
        raise PhaseLMError(f"paired statistics need at least 2 prompts, got --prompts {prompts}; use 50 or more")
    return eval_protocol("r_intervention", run_dir, settings, seeds=[seed], n=prompts, metrics=INTERVENTION_METRICS,
                         device=device)


def temperature_protocol(run_dir, temperatures: str | list = "0,0.5,0.8,1.0,1.2,1.5", prompts: int = 50,
                         prompt_tokens: int = 32, max_new_tokens: int = 64, top_k: int = 0, seed: int = 0,
                         batch_size: int = 16, device: str | None = None) -> Protocol:
    """``phaselm eval temperature``'s flags → a ``temperature_sweep`` protocol."""
    from ..evals import parse_floats

    temps = parse_floats(temperatures, "temperatures") if isinstance(temperatures, str) else \
        [float(t) for t in temperatures]
    if prompts < 2:
        raise PhaseLMError(f"a temperature sweep needs at least 2 prompts, got --prompts {prompts}")
    settings = {"temperatures": temps, "prompts": prompts, "prompt_tokens": prompt_tokens,
                "max_new_tokens": max_new_tokens, "top_k": top_k, "seed": seed, "batch_size": batch_size}
    return eval_protocol("temperature_sweep", run_dir, settings, seeds=[seed], n=prompts, device=device,
                         metrics=TEXT_METRICS + ("perplexity", "mean_r"))


def clamp_protocol(run_dir, bounds: list | None = None, batch_size: int = 16, seq_len: int | None = None,
                   batches: int = 20, device: str | None = None) -> Protocol:
    """``phaselm eval clamp``'s flags (bounds as ``"lo:hi"`` texts or pairs) → a ``clamp_sweep`` protocol."""
    from ..evals import DEFAULT_BOUNDS, iter_bounds
    from ..interventions import check_clamp_bounds

    if not bounds:
        pairs = list(DEFAULT_BOUNDS)
    elif all(isinstance(b, str) for b in bounds):
        pairs = iter_bounds(bounds)
    else:
        pairs = [tuple(b) for b in bounds]
    for lo, hi in pairs:
        check_clamp_bounds(lo, hi, bistable=False)  # order and finiteness now; u_min > 0 once the model is known
    settings = {"bounds": [[float(lo), float(hi)] for lo, hi in pairs], "batch_size": batch_size, "seq_len": seq_len,
                "batches": batches}
    return eval_protocol("clamp_sweep", run_dir, settings, metrics=("loss", "r_mean"), device=device)


def correlation_protocol(run_dir, batch_size: int = 16, seq_len: int | None = None, batches: int = 20,
                         device: str | None = None) -> Protocol:
    """``phaselm eval correlation``'s flags → an ``order_loss_correlation`` protocol."""
    settings = {"batch_size": batch_size, "seq_len": seq_len, "batches": batches}
    return eval_protocol("order_loss_correlation", run_dir, settings, metrics=("loss", "r_mean"), device=device)


def ablation_protocol(run_dirs: list, batch_size: int = 16, seq_len: int | None = None, batches: int = 20,
                      device: str | None = None) -> Protocol:
    """``phaselm eval ablation``'s runs and flags → an ``ablation_table`` protocol."""
    runs = [str(p) for p in run_dirs]
    if not runs:
        raise PhaseLMError("give at least one run directory")
    settings = {"runs": runs, "batch_size": batch_size, "seq_len": seq_len, "batches": batches}
    return eval_protocol("ablation_table", runs[0], settings, metrics=("loss", "r_mean"), device=device)


def diagnostics_protocol(path, corpus: str | None = None, windows: int = 8, config=None,
                         device: str | None = None) -> Protocol:
    """``phaselm diagnose``'s flags → a ``fusion_diagnostics`` protocol. ``config`` (a
    :class:`phaselm.evals.diagnostics.DiagnosticsConfig` or its fields) overrides ``windows``."""
    from ..evals.diagnostics import DiagnosticsConfig

    if config is None:
        if windows < 1:
            raise PhaseLMError(f"--windows must be at least 1, got {windows}")
        config = DiagnosticsConfig(windows=windows)
    elif isinstance(config, dict):
        config = DiagnosticsConfig(**config)
    settings = {"corpus": corpus, "config": {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in asdict(config).items()}}
    return eval_protocol("fusion_diagnostics", path, settings, device=device)


BUILDERS = {"r_intervention": intervention_protocol, "temperature_sweep": temperature_protocol,
            "clamp_sweep": clamp_protocol, "order_loss_correlation": correlation_protocol,
            "ablation_table": ablation_protocol, "fusion_diagnostics": diagnostics_protocol}


# ------------------------------------------------------------------ runners: Protocol + Subject → files


def open_eval_subject(protocol: Protocol) -> Subject:
    """The protocol's run directory or model folder as a Subject (its corpus and validation split)."""
    from ..evals import load_subject

    return load_subject(protocol.model_path, protocol.device)


def open_fusion_subject(protocol: Protocol) -> Subject:
    """A fusion-family model as a Subject; any other run is a one-line error before loading weights."""
    import json

    from ..models.fusion import FusionConfig
    from ..runs import locate_run, open_run
    from ..subject import subject_of

    path = Path(protocol.model_path)
    location = locate_run(path)
    if location.model_dir is None:
        raise PhaseLMError(
            f"{path} is a {location.kind} run (a core grafted onto a backbone), which has no RWKV-6 / Mamba-2 branches "
            'to diagnose; use a fusion-family model (phaselm train-lm with arch = "fusion")'
        )
    with open(location.model_dir / "config.json", encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if model_type != FusionConfig.model_type:
        raise PhaseLMError(
            f"{path} holds a {model_type!r} model, which has no RWKV-6 / Mamba-2 branches to diagnose; "
            'use a fusion-family model (phaselm train-lm with arch = "fusion")'
        )
    return subject_of(open_run(path, protocol.device))


def _seq_len(subject: Subject, settings: dict) -> int:
    return settings.get("seq_len") or subject.train_seq_len or 256


def run_intervention_eval(protocol: Protocol, subject: Subject, out_dir: Path, progress: bool,
                          command: str | None) -> dict:
    """The ``r_intervention`` design: :func:`phaselm.evals.intervention_eval` on validation prompts."""
    from ..evals import intervention_eval, validation_prompts
    from ..interventions import require_oscillator_sites

    s = protocol.settings
    require_oscillator_sites(subject.model, "an R intervention eval")
    prompts = validation_prompts(subject.validation_ids(), s["prompts"], s["prompt_tokens"])
    return intervention_eval(subject, prompts, _interventions(s), max_new_tokens=s["max_new_tokens"], seed=s["seed"],
                             temperature=s["temperature"], top_k=s["top_k"] or None, batch_size=s["batch_size"],
                             out_dir=out_dir, progress=progress, model_name=protocol.model_path, command=command)


def run_temperature_eval(protocol: Protocol, subject: Subject, out_dir: Path, progress: bool,
                         command: str | None) -> dict:
    """The ``temperature_sweep`` design: :func:`phaselm.evals.temperature_eval` on validation prompts."""
    from ..evals import temperature_eval, validation_prompts

    s = protocol.settings
    prompts = validation_prompts(subject.validation_ids(), s["prompts"], s["prompt_tokens"])
    return temperature_eval(subject, prompts, s["temperatures"], max_new_tokens=s["max_new_tokens"], seed=s["seed"],
                            top_k=s["top_k"] or None, batch_size=s["batch_size"], out_dir=out_dir, progress=progress,
                            model_name=protocol.model_path, command=command)


def run_clamp_eval(protocol: Protocol, subject: Subject, out_dir: Path, progress: bool, command: str | None) -> dict:
    """The ``clamp_sweep`` design: :func:`phaselm.evals.clamp_eval` on the validation split."""
    from ..evals import clamp_eval

    s = protocol.settings
    return clamp_eval(subject, None, [tuple(b) for b in s["bounds"]], batch_size=s["batch_size"],
                      seq_len=_seq_len(subject, s), max_batches=s["batches"], out_dir=out_dir, progress=progress,
                      model_name=protocol.model_path, command=command)


def run_correlation_eval(protocol: Protocol, subject: Subject, out_dir: Path, progress: bool,
                         command: str | None) -> dict:
    """The ``order_loss_correlation`` design: :func:`phaselm.evals.correlation_eval` on the validation split."""
    from ..evals import correlation_eval
    from ..interventions import require_oscillator_sites

    s = protocol.settings
    require_oscillator_sites(subject.model, "an R–loss correlation")
    return correlation_eval(subject, None, batch_size=s["batch_size"], seq_len=_seq_len(subject, s),
                            max_batches=s["batches"], out_dir=out_dir, progress=progress,
                            model_name=protocol.model_path, command=command)


def run_ablation_eval(protocol: Protocol, subject: Subject | None, out_dir: Path, progress: bool,
                      command: str | None) -> dict:
    """The ``ablation_table`` design: :func:`phaselm.evals.ablation_table` (it opens every run itself)."""
    from ..evals import ablation_table

    s = protocol.settings
    return ablation_table(s["runs"], batch_size=s["batch_size"], seq_len=s.get("seq_len"), max_batches=s["batches"],
                          out_dir=out_dir, progress=progress, device=protocol.device, command=command)


def run_diagnostics_eval(protocol: Protocol, subject: Subject, out_dir: Path, progress: bool,
                         command: str | None) -> dict:
    """The ``fusion_diagnostics`` design: :func:`phaselm.evals.diagnostics.diagnostics_eval`."""
    from ..evals.diagnostics import DiagnosticsConfig, diagnostics_eval

    s = protocol.settings
    config = DiagnosticsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in s["config"].items()})
    return diagnostics_eval(subject, out_dir, s.get("corpus"), config)


def check_diagnostics_out(out_dir: Path) -> None:
    """Refuse an out directory that already holds diagnostics.json."""
    if (out_dir / "diagnostics.json").exists():
        raise PhaseLMError(f"{out_dir} already holds diagnostics.json; pass another --out or move it away")


def default_eval_out(protocol: Protocol) -> Path:
    """Where an eval writes without --out: RUN_DIR/evals (runs/ablation for an ablation table,
    PATH/diagnostics for the fusion diagnostics)."""
    from ..evals import default_out_dir

    if protocol.kind == "ablation_table":
        return DEFAULT_ABLATION_OUT
    if protocol.kind == "fusion_diagnostics":
        return Path(protocol.model_path) / "diagnostics"
    return default_out_dir(protocol.model_path)

