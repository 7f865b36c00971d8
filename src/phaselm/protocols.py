"""Experiment protocols: declared in TOML before running, hashed, run on any PhaseLM model.

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

The file (every key is checked; a typo names the closest key; see protocols/*.toml):

    [protocol]   kind, name, description
    [model]      path (train-lm run, model folder or Phase-Mamba run), reference, device
    [prompts]    source = "validation" (count windows of tokens from the run's validation
                 split) | "file" (file, one prompt per line) | "list" (texts)
    [decoding]   max_new_tokens, temperature (0 = greedy: then one seed), top_k
    [design]     seeds, samples_per_condition (must equal prompts × seeds, or windows × seeds)
    [[conditions]]  intervention = "pin=0.3" or a list (composed), layers, name   (intervention)
    [grid]       layers, k_scale, oscillators, u_regulation, ablate               (ablation_grid)
    [evaluation] windows, seq_len, batch_size                                      (ablation_grid)
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

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import statistics as st
from .errors import PhaseLMError
from .interventions import ALL_LAYERS, Intervention, intervene, measure, structure

KINDS = ("observation", "intervention", "ablation_grid")
TESTS = {"t": "paired t-test", "paired_t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test",
         "permutation": "sign-flip permutation test"}
PROMPT_SOURCES = ("validation", "file", "list")
METRICS = {
    "observation": ("r_mean", "r_std", "r_range", "u_mean"),
    "intervention": ("kl", "perplexity", "distinct_1", "distinct_2", "distinct_3", "repetition", "mean_r"),
    "ablation_grid": ("loss", "r_mean"),
}
METRIC_LABELS = {
    "r_mean": "R mean", "r_std": "R std (within sample)", "r_range": "R range (max − min within sample)", "u_mean": "U mean",
    "kl": "KL(unforced ‖ forced)", "perplexity": "perplexity (reference model)", "distinct_1": "distinct-1",
    "distinct_2": "distinct-2", "distinct_3": "distinct-3", "repetition": "repetition (1 − distinct-4)", "mean_r": "mean R",
    "loss": "loss (CE, nats)",
}
OSCILLATOR_METRICS = ("r_mean", "r_std", "r_range", "mean_r")
RESULTS = "results.json"
PROTOCOL_COPY = "protocol.toml"
MAX_SCATTER = 5000
# R recorded during cached generation and R of one full forward pass over the same text differ
# by float rounding only (~1e-6); more than this means measuring changed the computation.
RECORDED_TOLERANCE = 1e-4

# section → key → (types, required for which kinds: a tuple of kinds, () = optional)
_GEN = ("observation", "intervention")
SCHEMA: dict[str, dict[str, tuple[tuple, tuple]]] = {
    "protocol": {"kind": ((str,), KINDS), "name": ((str,), ()), "description": ((str,), ())},
    "model": {"path": ((str,), KINDS), "reference": ((str,), ()), "device": ((str,), ())},
    "prompts": {"source": ((str,), _GEN), "count": ((int,), ()), "tokens": ((int,), ()), "file": ((str,), ()), "texts": ((list,), ())},
    "decoding": {"max_new_tokens": ((int,), _GEN), "temperature": ((float, int), _GEN), "top_k": ((int,), ())},
    "design": {"seeds": ((list,), KINDS), "samples_per_condition": ((int,), KINDS)},
    "metrics": {"names": ((list,), KINDS)},
    "statistics": {"test": ((str,), KINDS), "alpha": ((float,), KINDS), "power": ((float,), ()), "ci_level": ((float,), ()),
                   "bootstrap_resamples": ((int,), ()), "permutation_resamples": ((int,), ())},
    "grid": {"layers": ((list,), ()), "k_scale": ((list,), ()), "oscillators": ((list,), ()), "u_regulation": ((list,), ()),
             "ablate": ((list,), ())},
    "evaluation": {"windows": ((int,), ("ablation_grid",)), "seq_len": ((int,), ("ablation_grid",)), "batch_size": ((int,), ())},
}
CONDITION_KEYS = {"name": (str,), "intervention": (str, list), "layers": (str, int, list)}
SECTIONS_FOR = {
    "observation": ("protocol", "model", "prompts", "decoding", "design", "metrics", "statistics"),
    "intervention": ("protocol", "model", "prompts", "decoding", "design", "conditions", "metrics", "statistics"),
    "ablation_grid": ("protocol", "model", "design", "grid", "evaluation", "metrics", "statistics"),
}


# --------------------------------------------------------------------------------------------
# The protocol file
# --------------------------------------------------------------------------------------------


@dataclass
class Condition:
    """One arm of an intervention protocol: interventions applied together (composed in order)."""

    name: str
    interventions: tuple[Intervention, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "interventions": [i.to_dict() for i in self.interventions]}


@dataclass
class Protocol:
    file: Path
    text: str
    sha256: str
    kind: str
    name: str
    description: str
    model_path: str
    reference: str | None
    device: str | None
    seeds: list[int]
    samples_per_condition: int
    metrics: list[str]
    test: str
    alpha: float
    power: float = 0.8
    ci_level: float = 0.95
    bootstrap_resamples: int = 10_000
    permutation_resamples: int = 10_000
    prompt_source: str | None = None
    prompt_count: int | None = None
    prompt_tokens: int = 32
    prompt_texts: list[str] | None = None  # source = list or file (read at load time)
    prompt_file: str | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    conditions: list[Condition] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    windows: int = 0
    seq_len: int = 0
    batch_size: int = 8

    @property
    def n_prompts(self) -> int:
        return self.windows if self.kind == "ablation_grid" else int(self.prompt_count or 0)

    def header(self) -> dict:
        return {"kind": self.kind, "name": self.name, "description": self.description, "file": str(self.file), "sha256": self.sha256}


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _where(section: str, key: str | None = None) -> str:
    return f"[{section}] {key}" if key else f"[{section}]"


def _typename(types: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "true or false"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_type(value, types: tuple, where: str):
    ok = any(
        isinstance(value, t) and not (isinstance(value, bool) and t in (int, float)) for t in types
    ) or (float in types and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise PhaseLMError(f"{where} must be {_typename(types)}, got {value!r}")
    return float(value) if types[0] is float else value


def _unknown_key(key: str, known, where: str) -> PhaseLMError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return PhaseLMError(f"unknown key {key!r} in {where}{hint}")


def _resolve_path(text: str, base: Path) -> Path:
    """A path as written (relative to the working directory), else relative to the protocol file."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists():
        return path
    beside = base / path
    return beside if beside.exists() else path


def _seeds(values: list) -> list[int]:
    seeds = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PhaseLMError(f"[design] seeds must be integers, got {value!r}")
        if value in seeds:
            raise PhaseLMError(f"[design] seeds lists {value} twice; give each seed once")
        seeds.append(value)
    if not seeds:
        raise PhaseLMError("[design] seeds is empty; give at least one seed, e.g. seeds = [0, 1, 2]")
    return seeds


def _layers_value(value, where: str):
    """``"all"``, an index, a list of indices or ``"0,2"`` → ``"all"`` or a tuple of indices."""
    if value == ALL_LAYERS:
        return ALL_LAYERS
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if isinstance(value, str):
        try:
            return tuple(int(p) for p in value.split(",") if p.strip())
        except ValueError:
            pass
    raise PhaseLMError(f"{where} must be \"all\", a layer index or a list of indices, got {value!r}")


def _conditions(raw, file: Path) -> list[Condition]:
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise PhaseLMError("[[conditions]] must be one or more tables, each with intervention = \"sync\" (or a list to compose)")
    out, names = [], set()
    for i, table in enumerate(raw):
        where = f"[[conditions]] #{i + 1}"
        for key in table:
            if key not in CONDITION_KEYS:
                raise _unknown_key(key, CONDITION_KEYS, where)
        if "intervention" not in table:
            raise PhaseLMError(f"protocol {file} is missing {where} intervention")
        specs = table["intervention"]
        specs = [specs] if isinstance(specs, str) else specs
        if not isinstance(specs, list) or not specs or not all(isinstance(s, str) for s in specs):
            raise PhaseLMError(f"{where} intervention must be a name like \"pin=0.3\" or a list of them, got {table['intervention']!r}")
        layers = _layers_value(table.get("layers", ALL_LAYERS), f"{where} layers")
        items = tuple(Intervention.parse(spec, layers) for spec in specs)
        name = table.get("name") or " + ".join(item.label for item in items)
        if not isinstance(name, str):
            raise PhaseLMError(f"{where} name must be a string, got {name!r}")
        if name in names or name == "none":
            raise PhaseLMError(f"{where} repeats the condition name {name!r}; give each condition its own name")
        names.add(name)
        out.append(Condition(name, items))
    return out


def load_protocol(path: str | os.PathLike) -> Protocol:
    """Read and check a protocol file; every mistake is a one-line :class:`PhaseLMError`."""
    from .config import tomllib

    path = Path(path)
    if not path.is_file():
        raise PhaseLMError(f"protocol file {path} does not exist")
    raw_bytes = path.read_bytes()
    try:
        text = raw_bytes.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PhaseLMError(f"protocol file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PhaseLMError(f"protocol file {path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    kind = data.get("protocol", {}).get("kind") if isinstance(data.get("protocol"), dict) else None
    if kind is None:
        raise PhaseLMError(f"protocol {path} is missing [protocol] kind (one of {', '.join(KINDS)})")
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise PhaseLMError(f"[protocol] kind {kind!r} is not a protocol kind; choose one of {', '.join(KINDS)}{hint}")
    allowed = SECTIONS_FOR[kind]
    for section, value in data.items():
        if section not in SCHEMA and section != "conditions":
            close = difflib.get_close_matches(section, list(SCHEMA) + ["conditions"], n=1, cutoff=0.6)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise PhaseLMError(f"unknown section [{section}] in {path}{hint}")
        if section not in allowed:
            raise PhaseLMError(f"section [{section}] does not apply to a {kind} protocol; remove it (sections: {', '.join(allowed)})")
        if section != "conditions" and not isinstance(value, dict):
            raise PhaseLMError(f"[{section}] must be a table")
    missing = []
    values: dict[str, dict] = {}
    for section in allowed:
        if section == "conditions":
            if "conditions" not in data:
                missing.append("[[conditions]]")
            continue
        table = data.get(section, {})
        for key in table:
            if key not in SCHEMA[section]:
                raise _unknown_key(key, SCHEMA[section], _where(section))
        values[section] = {}
        for key, (types, required_for) in SCHEMA[section].items():
            if key in table:
                values[section][key] = _check_type(table[key], types, _where(section, key))
            elif kind in required_for:
                missing.append(_where(section, key))
    if missing:
        raise PhaseLMError(f"protocol {path} is missing {', '.join(missing)}")
    v = values
    seeds = _seeds(v["design"]["seeds"])
    n = v["design"]["samples_per_condition"]
    if n < st.MIN_N:
        raise PhaseLMError(f"[design] samples_per_condition = {n}: a statistical test needs n ≥ {st.MIN_N} (50 or more for real power)")
    test = v["statistics"]["test"]
    if test not in TESTS:
        raise PhaseLMError(f"[statistics] test {test!r} is not known; choose one of t, wilcoxon, permutation")
    test = "t" if test == "paired_t" else test
    alpha = v["statistics"]["alpha"]
    if not 0 < alpha < 0.5:
        raise PhaseLMError(f"[statistics] alpha must be in (0, 0.5), got {alpha}")
    power = v["statistics"].get("power", 0.8)
    if not alpha < power < 1:
        raise PhaseLMError(f"[statistics] power must be in (alpha, 1), got {power}")
    ci_level = v["statistics"].get("ci_level", 0.95)
    if not 0 < ci_level < 1:
        raise PhaseLMError(f"[statistics] ci_level must be in (0, 1), got {ci_level}")
    resamples = {k: v["statistics"].get(k, 10_000) for k in ("bootstrap_resamples", "permutation_resamples")}
    for key, value in resamples.items():
        if value < 100:
            raise PhaseLMError(f"[statistics] {key} must be at least 100, got {value}")
    metrics = v["metrics"]["names"]
    if not metrics or not all(isinstance(m, str) for m in metrics):
        raise PhaseLMError(f"[metrics] names must be a non-empty list of metric names ({', '.join(METRICS[kind])})")
    for m in metrics:
        if m not in METRICS[kind]:
            close = difflib.get_close_matches(m, METRICS[kind], n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise PhaseLMError(f"[metrics] {m!r} is not a metric of a {kind} protocol; {hint}choose from {', '.join(METRICS[kind])}")
    if len(set(metrics)) != len(metrics):
        raise PhaseLMError("[metrics] names lists a metric twice; give each once")
    model = v["model"]
    protocol = Protocol(
        file=path, text=text, sha256=hashlib.sha256(raw_bytes).hexdigest(), kind=kind,
        name=v["protocol"].get("name") or path.stem, description=v["protocol"].get("description", ""),
        model_path=model["path"], reference=model.get("reference") or None, device=model.get("device") or None,
        seeds=seeds, samples_per_condition=n, metrics=list(metrics), test=test, alpha=alpha, power=power, ci_level=ci_level,
        **resamples,
    )
    if model.get("reference") and kind != "intervention":
        raise PhaseLMError("[model] reference applies to intervention protocols only (perplexity under a reference model)")
    if kind in _GEN:
        _load_generation_design(protocol, v, path)
    else:
        _load_grid_design(protocol, v)
    if kind == "intervention":
        protocol.conditions = _conditions(data["conditions"], path)
    design = protocol.n_prompts * len(seeds)
    unit = "windows" if kind == "ablation_grid" else "prompts"
    if design != n:
        raise PhaseLMError(
            f"[design] samples_per_condition = {n} but the design gives {protocol.n_prompts} {unit} × {len(seeds)} seeds = {design}; "
            "make them agree"
        )
    return protocol


def _load_generation_design(protocol: Protocol, v: dict, path: Path) -> None:
    prompts, decoding = v["prompts"], v["decoding"]
    source = prompts["source"]
    if source not in PROMPT_SOURCES:
        raise PhaseLMError(f"[prompts] source {source!r} is not known; choose one of {', '.join(PROMPT_SOURCES)}")
    protocol.prompt_source = source
    protocol.prompt_tokens = prompts.get("tokens", 32)
    if protocol.prompt_tokens < 1:
        raise PhaseLMError(f"[prompts] tokens must be at least 1, got {protocol.prompt_tokens}")
    count = prompts.get("count")
    if source == "validation":
        if count is None:
            raise PhaseLMError(f"protocol {path} is missing [prompts] count (how many validation windows)")
        if "file" in prompts or "texts" in prompts:
            raise PhaseLMError("[prompts] source = \"validation\" takes count and tokens, not file or texts")
    elif source == "file":
        if "file" not in prompts:
            raise PhaseLMError(f"protocol {path} is missing [prompts] file (one prompt per line)")
        file = _resolve_path(prompts["file"], path.parent)
        if not file.is_file():
            raise PhaseLMError(f"[prompts] file {prompts['file']} does not exist")
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        count = len(lines) if count is None else count
        if len(lines) < count:
            raise PhaseLMError(f"[prompts] file {prompts['file']} has {len(lines)} prompts, fewer than count = {count}")
        protocol.prompt_file, protocol.prompt_texts = str(file), lines[:count]
    else:
        texts = prompts.get("texts")
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise PhaseLMError("[prompts] source = \"list\" needs texts = [\"ROMEO:\", …] (non-empty strings)")
        if count is not None and count != len(texts):
            raise PhaseLMError(f"[prompts] count = {count} but texts has {len(texts)} prompts; drop count or make them agree")
        count, protocol.prompt_texts = len(texts), list(texts)
    if count < 1:
        raise PhaseLMError(f"[prompts] count must be at least 1, got {count}")
    protocol.prompt_count = count
    protocol.max_new_tokens = decoding["max_new_tokens"]
    if protocol.max_new_tokens < 4:
        raise PhaseLMError(f"[decoding] max_new_tokens must be at least 4 (repetition counts 4-grams), got {protocol.max_new_tokens}")
    protocol.temperature = float(decoding["temperature"])
    if not (protocol.temperature >= 0 and math.isfinite(protocol.temperature)):
        raise PhaseLMError(f"[decoding] temperature must be ≥ 0, got {protocol.temperature}")
    protocol.top_k = decoding.get("top_k", 0)
    if protocol.top_k < 0:
        raise PhaseLMError(f"[decoding] top_k must be ≥ 0 (0 keeps every token), got {protocol.top_k}")
    if protocol.temperature == 0 and len(protocol.seeds) > 1:
        raise PhaseLMError(
            "[decoding] temperature = 0 decodes greedily, so every seed repeats the same samples (pseudo-replication); "
            "use one seed or a temperature > 0"
        )


GRID_DEFAULTS = {"layers": [ALL_LAYERS], "k_scale": [1.0], "oscillators": [ALL_LAYERS], "u_regulation": [True], "ablate": ["none"]}


def _load_grid_design(protocol: Protocol, v: dict) -> None:
    grid = v["grid"]
    if not grid:
        raise PhaseLMError("[grid] is empty; give at least one axis: layers, k_scale, oscillators, u_regulation or ablate")
    out = {}
    for axis, default in GRID_DEFAULTS.items():
        values = grid.get(axis, default)
        if not values:
            raise PhaseLMError(f"[grid] {axis} is empty; leave it out to keep the model as trained on that axis")
        if axis == "layers":
            values = [_layers_value(x, "[grid] layers") for x in values]
        elif axis == "k_scale":
            values = [Intervention("k_scale", x).value for x in values]
        elif axis == "oscillators":
            values = [x if x == ALL_LAYERS else Intervention("oscillators", x).value for x in values]
        elif axis == "ablate":
            values = [x if x == "none" else Intervention("ablate", x).value for x in values]
        elif not all(isinstance(x, bool) for x in values):
            raise PhaseLMError(f"[grid] u_regulation must be a list of true/false, got {values!r}")
        if len(set(map(str, values))) != len(values):
            raise PhaseLMError(f"[grid] {axis} lists a value twice; give each once")
        out[axis] = values
    protocol.grid = out
    ev = v["evaluation"]
    protocol.windows, protocol.seq_len, protocol.batch_size = ev["windows"], ev["seq_len"], ev.get("batch_size", 8)
    for key in ("windows", "seq_len", "batch_size"):
        if getattr(protocol, key) < 1:
            raise PhaseLMError(f"[evaluation] {key} must be at least 1, got {getattr(protocol, key)}")


# --------------------------------------------------------------------------------------------
# Out directory: results never attach to a changed protocol
# --------------------------------------------------------------------------------------------


def check_out_dir(out_dir: str | os.PathLike, protocol: Protocol) -> Path:
    """Refuse an out directory that holds results of another protocol (or anything else)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PhaseLMError(f"--out {out} is a file; choose a directory")
    results, copy = out / RESULTS, out / PROTOCOL_COPY
    recorded = None
    if results.is_file():
        try:
            recorded = json.loads(results.read_text(encoding="utf-8"))["protocol"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise PhaseLMError(f"{out} holds a {RESULTS} that is not a protocol result; choose another --out") from None
    elif copy.is_file():
        recorded = sha256_of(copy)
    elif out.is_dir() and any(out.iterdir()):
        raise PhaseLMError(f"{out} is not empty and holds no protocol results; choose another --out")
    if recorded is not None and recorded != protocol.sha256:
        raise PhaseLMError(
            f"{out} holds results of a different protocol (sha256 {str(recorded)[:12]}…, this file is {protocol.sha256[:12]}…); "
            "results never attach to a changed protocol: choose another --out"
        )
    return out


def default_out_dir(protocol: Protocol) -> Path:
    return Path("runs") / "protocols" / protocol.file.stem


# --------------------------------------------------------------------------------------------
# The subject: a model with its tokenizer, graft and validation text
# --------------------------------------------------------------------------------------------


@dataclass
class Subject:
    model: Any
    tokenizer: Any
    handle: Any = None  # a Graft for a Phase-Mamba run
    corpus: str | None = "tinyshakespeare"
    val_fraction: float = 0.1
    path: str = ""
    _val_ids: torch.Tensor | None = None

    @property
    def target(self):
        return self.handle if self.handle is not None else self.model

    @property
    def name(self) -> str:
        return structure(self.target).name

    def validation_ids(self) -> torch.Tensor:
        if self._val_ids is None:
            from .data import encode_corpus, load_text, train_val_split

            if self.corpus is None:
                raise PhaseLMError("this model has no corpus to draw validation windows from; give prompts as a file or list")
            _, self._val_ids = train_val_split(encode_corpus(self.tokenizer, load_text(self.corpus)), self.val_fraction)
        return self._val_ids


def load_subject(path: str | os.PathLike, device: str | None = None) -> Subject:
    """A ``train-lm`` run, a model folder, or a Phase-Mamba run (config.toml with [backbone])."""
    from .config import tomllib
    from .evals import default_device, load_subject as load_eval_subject

    path = Path(path)
    device = device or default_device()
    config = path / "config.toml"
    if path.is_dir() and config.is_file() and not (path / "model" / "config.json").is_file():
        try:
            recipe = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            recipe = {}
        if isinstance(recipe.get("backbone"), dict):
            from .experiments.phase_mamba import load_run

            model, tokenizer, handle, run_recipe = load_run(path, device)
            model.eval()
            return Subject(model, tokenizer, handle, run_recipe.data.corpus, run_recipe.data.val_fraction, str(path))
    subject = load_eval_subject(path, device)
    subject.model.eval()
    return Subject(subject.model, subject.tokenizer, None, subject.corpus, subject.val_fraction, str(path))


# --------------------------------------------------------------------------------------------
# Generation and scoring (one sample at a time, through the project's own generate)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _capture_sequences(model):
    """Keep the token ids ``model.generate`` returns (generate() itself returns only text in
    blind mode); reads the result, changes nothing."""
    original = model.generate
    had_own = "generate" in model.__dict__
    captured: list[torch.Tensor] = []

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.append(out.sequences.detach().cpu())
        return out

    model.__dict__["generate"] = spy
    try:
        yield captured
    finally:
        if had_own:
            model.__dict__["generate"] = original
        else:
            del model.__dict__["generate"]


@dataclass
class Sample:
    prompt_ids: list[int]
    ids: list[int]  # the continuation
    recorded_r: list[float] | None = None  # measured mode: R recorded during generation, per token (mean over sites)


def generate_sample(subject: Subject, text: str, seed: int, protocol: Protocol, measured: bool = False) -> Sample:
    """One continuation of ``text`` with :func:`phaselm.generation.generate` (blind or measured)."""
    from .generation import generate

    prompt_ids = subject.tokenizer.encode(text)
    args = (subject.model, subject.tokenizer, text, protocol.max_new_tokens, protocol.temperature, protocol.top_k or None, seed)
    recorded = None
    with _capture_sequences(subject.model) as captured:
        if measured and subject.handle is None:
            with measure(subject.model) as m:
                generation = generate(*args, handle=None, measured=True)
            orders = m.sequence()
            if orders.numel():
                per_position = orders[0].mean(0)
                recorded = [float(per_position[len(prompt_ids) - 1 + i]) for i in range(len(generation.readings))]
        else:
            generation = generate(*args, handle=subject.handle, measured=measured)
            if measured and subject.handle is not None:
                recorded = [r.r for r in generation.readings]
    sequence = captured[-1][0].tolist()
    return Sample(prompt_ids, sequence[len(prompt_ids):], recorded)


@torch.no_grad()
def forward(subject: Subject, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (T, V) float32 and R (sites, T) of one sequence (R None without oscillators or
    when the grafted core is switched off)."""
    device = next(subject.model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    if subject.handle is not None:
        subject.handle.last = None
    out = subject.model(input_ids=x)
    logits = out.logits[0].float().cpu()
    orders = None
    if subject.handle is not None:
        if subject.handle.last is not None:
            orders = subject.handle.last.order.float().cpu()  # (1, T)
    elif getattr(out, "orders", None) is not None:
        orders = out.orders[0].float().cpu()  # (L, T)
    return logits, orders


BATCHED_TYPES = ("kssm", "phaselm_fusion")  # models whose cache evals.sample drives directly


def _batch_groups(seqs: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indices grouped by length (no padding), ``size`` at a time, in order."""
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_length.setdefault(len(seq), []).append(i)
    return [idx[s : s + size] for idx in by_length.values() for s in range(0, len(idx), size)]


def generate_many(
    subject: Subject, prompts: list[list[int]], seed: int, protocol: Protocol, texts: list[str] | None = None, batch_size: int = 32
) -> list[list[int]]:
    """Continuations of many prompts with one seed. K-SSM and fusion models decode in batches of
    equal-length prompts with their recurrent cache (:func:`phaselm.evals.sample`, exactly
    ``max_new_tokens`` each); other models (grafted HF models) one prompt at a time through
    :func:`phaselm.generation.generate`. Either way a condition and the unforced model see the
    same batches and the same seed, so they draw the same random numbers."""
    from .evals import sample

    model_type = getattr(getattr(subject.model, "config", None), "model_type", "")
    if subject.handle is not None or model_type not in BATCHED_TYPES:
        texts = texts if texts is not None else [subject.tokenizer.decode(p) for p in prompts]
        out = []
        for text, p in zip(texts, prompts):
            generated = generate_sample(subject, text, seed, protocol)
            if generated.prompt_ids != list(p):
                raise PhaseLMError(f"the prompt {text[:30]!r} does not encode back to the same tokens; use prompts the tokenizer round-trips")
            out.append(generated.ids)
        return out
    device = next(subject.model.parameters()).device
    out: list = [None] * len(prompts)
    for group in _batch_groups(prompts, batch_size):
        new, _ = sample(subject.model, torch.tensor([prompts[i] for i in group], device=device), protocol.max_new_tokens,
                        protocol.temperature, protocol.top_k or None, seed + group[0])
        for row, i in enumerate(group):
            out[i] = new[row].tolist()
    return out


@torch.no_grad()
def forward_many(subject: Subject, seqs: list[list[int]], batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`forward` of many sequences, batched by length: (logits (T, V), R (sites, T) or None) each."""
    device = next(subject.model.parameters()).device
    out: list = [None] * len(seqs)
    for group in _batch_groups(seqs, batch_size):
        if subject.handle is not None:
            subject.handle.last = None
        result = subject.model(input_ids=torch.tensor([seqs[i] for i in group], device=device))
        logits = result.logits.float().cpu()
        if subject.handle is not None:
            orders = subject.handle.last.order.float().cpu()[:, None] if subject.handle.last is not None else None
        else:
            orders = result.orders.float().cpu() if getattr(result, "orders", None) is not None else None
        for row, i in enumerate(group):
            out[i] = (logits[row], orders[row] if orders is not None else None)
    return out


def perplexity_many(subject: Subject, prompts: list[list[int]], continuations: list[list[int]]) -> list[float | None]:
    """exp(mean −log p) of each continuation given its prompt, under ``subject`` (temperature 1)."""
    scored = forward_many(subject, [p + c for p, c in zip(prompts, continuations)])
    out = []
    for (logits, _), p, c in zip(scored, prompts, continuations):
        if not c:
            out.append(None)
            continue
        logp = F.log_softmax(logits[_producing(len(p), len(c))], -1)
        out.append(float(torch.exp(-logp.gather(-1, torch.tensor(c)[:, None]).mean())))
    return out


def _producing(prompt_len: int, m: int) -> slice:
    """The positions whose predictions produced the m generated tokens."""
    return slice(prompt_len - 1, prompt_len - 1 + m)


def _prompts(protocol: Protocol, subject: Subject) -> list[str]:
    if protocol.prompt_source == "validation":
        from .evals import validation_prompts

        windows = validation_prompts(subject.validation_ids(), max(protocol.prompt_count, st.MIN_N), protocol.prompt_tokens)
        return [subject.tokenizer.decode(w) for w in windows[: protocol.prompt_count]]
    return list(protocol.prompt_texts)


def _check_prompts(subject: Subject, texts: list[str], extra: int) -> None:
    from .evals import _check_positions

    vocab = subject.model.get_input_embeddings().num_embeddings
    for text in texts:
        ids = subject.tokenizer.encode(text)
        if not ids:
            raise PhaseLMError(f"the prompt {text!r} encodes to no tokens; use non-empty prompts")
        if max(ids) >= vocab:
            raise PhaseLMError(f"the prompt {text[:30]!r} has token id {max(ids)} but the model's vocabulary has {vocab}")
    longest = max(len(subject.tokenizer.encode(t)) for t in texts)
    _check_positions(subject.model, longest + extra, "prompt + generation")


def _units(protocol: Protocol, n_prompts: int) -> list[tuple[int, int]]:
    """The pairing units: (prompt index, seed), prompts outer."""
    return [(i, seed) for i in range(n_prompts) for seed in protocol.seeds]


# --------------------------------------------------------------------------------------------
# Statistics shared by the kinds
# --------------------------------------------------------------------------------------------


def _clean_pairs(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    keep = [i for i in range(len(x)) if x[i] is not None and y[i] is not None and math.isfinite(x[i]) and math.isfinite(y[i])]
    return np.asarray([x[i] for i in keep], dtype=float), np.asarray([y[i] for i in keep], dtype=float)


def compare(x: Sequence, y: Sequence, protocol: Protocol, seed: int = 0) -> dict | None:
    """x (condition) against y (baseline), paired: the declared test's p as ``p``, and every test."""
    x, y = _clean_pairs(x, y)
    if len(x) < st.MIN_N:
        return None
    out = st.paired(x, y, protocol.ci_level, protocol.bootstrap_resamples, seed).to_dict()
    out["p_permutation"] = st.permutation_test(x, y, True, "mean", protocol.permutation_resamples, seed).p
    out["p"] = {"t": out["p_t"], "wilcoxon": out["p_wilcoxon"], "permutation": out["p_permutation"]}[protocol.test]
    return out


def holm_family(entries: list[dict | None], keys: Sequence[str] = ("p", "p_t", "p_wilcoxon", "p_permutation")) -> int:
    """Holm-adjust each key across the entries in place (``KEY_holm``); returns the family size."""
    live = [e for e in entries if e is not None]
    for key in keys:
        adjusted = st.holm([e.get(key) for e in live])
        for entry, value in zip(live, adjusted):
            entry[f"{key}_holm"] = value
    return sum(1 for e in live if e.get("p") is not None)


def power_statement(n: int, protocol: Protocol, family: int, variance: bool = False) -> dict:
    out = {
        "n": n,
        "alpha": protocol.alpha,
        "power": protocol.power,
        "family": family,
        "min_detectable_dz": st.min_detectable_effect(n, protocol.alpha, protocol.power),
        "min_detectable_dz_holm_strictest": st.min_detectable_effect(n, protocol.alpha / max(family, 1), protocol.power),
        "note": f"paired t-test, two-sided; 'holm_strictest' is the level α/{max(family, 1)} Holm applies to the smallest p-value",
    }
    if variance:
        out["min_detectable_variance_ratio"] = st.min_detectable_variance_ratio(n, n, protocol.alpha, protocol.power)
        out["variance_note"] = ("two-sided F-test of a variance ratio for normal data (an approximation for Brown–Forsythe); "
                                "ratios below 1 are detectable at the reciprocal")
    return out


# --------------------------------------------------------------------------------------------
# Observation: blind vs measured
# --------------------------------------------------------------------------------------------


def _per_token_r(orders: torch.Tensor | None, window: slice) -> np.ndarray | None:
    if orders is None:
        return None
    return orders[:, window].mean(0).double().numpy()


def run_observation(protocol: Protocol, subject: Subject, progress=None) -> dict:
    from .observables import normalized_entropy

    info = structure(subject.target)
    if not info.sites:
        raise PhaseLMError(f"an observation protocol needs a model with oscillators (K-SSM or a grafted Phase Core); this is a {info.name} model")
    texts = _prompts(protocol, subject)
    _check_prompts(subject, texts, protocol.max_new_tokens)
    units = _units(protocol, len(texts))
    advance = progress or (lambda *_: None)
    advance(0)
    rows = []
    for k, (i, seed) in enumerate(units):
        # counterbalanced: half the units generate measured first
        order = ("blind", "measured") if k % 2 == 0 else ("measured", "blind")
        samples = {mode: generate_sample(subject, texts[i], seed, protocol, measured=(mode == "measured")) for mode in order}
        row = {"prompt": i, "seed": seed}
        for mode, sample in samples.items():
            logits, orders = forward(subject, sample.prompt_ids + sample.ids)
            window = _producing(len(sample.prompt_ids), len(sample.ids))
            r = _per_token_r(orders, window)
            u = normalized_entropy(logits[window]).double().numpy()
            row[mode] = {"ids": sample.ids, "r": r, "u": u}
            if mode == "measured":
                row["recorded_r"] = sample.recorded_r
        b, m = row["blind"]["ids"], row["measured"]["ids"]
        same = sum(1 for x, y in zip(b, m) if x == y)
        row["agreement"] = same / max(len(b), len(m), 1)
        row["identical"] = b == m
        if row.get("recorded_r") is not None and row["measured"]["r"] is not None:
            rec = np.asarray(row["recorded_r"], dtype=float)
            row["recorded_vs_recomputed"] = float(np.max(np.abs(rec - row["measured"]["r"]))) if len(rec) else 0.0
        rows.append(row)
        advance()

    def per_sample(mode: str, metric: str) -> list[float | None]:
        out = []
        for row in rows:
            r, u = row[mode]["r"], row[mode]["u"]
            if metric == "u_mean":
                out.append(float(u.mean()) if len(u) else None)
            elif r is None or not len(r):
                out.append(None)
            else:
                out.append({"r_mean": float(r.mean()), "r_std": float(r.std()), "r_range": float(r.max() - r.min())}[metric])
        return out

    values = {m: {mode: per_sample(mode, m) for mode in ("blind", "measured")} for m in protocol.metrics}
    seed = protocol.seeds[0]
    comparisons, spreads, variance_perm = {}, {}, {}
    for m in protocol.metrics:
        x, y = _clean_pairs(values[m]["measured"], values[m]["blind"])
        comparisons[m] = compare(values[m]["measured"], values[m]["blind"], protocol, seed)
        if len(x) >= st.MIN_N:
            bf, lev = st.spread_test(x, y, center="median").to_dict(), st.spread_test(x, y, center="mean").to_dict()
            bf["variance_ratio_ci"] = st.variance_ratio_ci(x, y, protocol.ci_level, protocol.bootstrap_resamples, seed)
            spreads[m] = {"brown_forsythe": bf, "levene": lev}
            try:
                variance_perm[m] = st.permutation_test(x, y, False, "log_variance_ratio", protocol.permutation_resamples, seed).to_dict()
            except PhaseLMError:  # a zero variance: the ratio is undefined
                variance_perm[m] = None
    # one Holm family over every p-value of the table
    entries = []
    for m in protocol.metrics:
        c = comparisons[m]
        if c is not None:
            entries += [{"metric": m, "test": f"mean: {TESTS[protocol.test]}", "p": c["p"], "ref": (c, "p_holm")}]
            for key, name in (("p_t", "t"), ("p_wilcoxon", "wilcoxon"), ("p_permutation", "permutation")):
                if name != protocol.test:
                    entries.append({"metric": m, "test": f"mean: {TESTS[name]} (secondary)", "p": c[key], "ref": (c, f"{key}_holm")})
        if m in spreads:
            entries.append({"metric": m, "test": "spread: Brown–Forsythe", "p": spreads[m]["brown_forsythe"]["p"], "ref": (spreads[m]["brown_forsythe"], "p_holm")})
            entries.append({"metric": m, "test": "spread: Levene", "p": spreads[m]["levene"]["p"], "ref": (spreads[m]["levene"], "p_holm")})
        if variance_perm.get(m) is not None:
            entries.append({"metric": m, "test": "spread: permutation (log variance ratio)", "p": variance_perm[m]["p"], "ref": (variance_perm[m], "p_holm")})
    adjusted = st.holm([e["p"] for e in entries])
    for e, a in zip(entries, adjusted):
        e["p_holm"] = a
        target, key = e.pop("ref")
        target[key] = a
    family = sum(1 for e in entries if e["p"] is not None)
    detected = [e for e in entries if e["p_holm"] is not None and e["p_holm"] <= protocol.alpha]
    n = len(units)
    agreement = float(np.mean([r["agreement"] for r in rows]))
    identical = sum(r["identical"] for r in rows)
    deviations = [r["recorded_vs_recomputed"] for r in rows if "recorded_vs_recomputed" in r]
    power = power_statement(n, protocol, family, variance=True)
    if detected:
        verdict = (f"A blind–measured difference is detectable (Holm over {family} tests at α = {protocol.alpha:g}, n = {n} pairs): "
                   + "; ".join(f"{METRIC_LABELS[e['metric']]} — {e['test']} (p_Holm = {e['p_holm']:.3g})" for e in detected) + ".")
    else:
        verdict = (f"No blind–measured difference is detectable (Holm over {family} tests at α = {protocol.alpha:g}, n = {n} pairs). "
                   f"At n = {n} a paired t-test detects |d_z| ≥ {power['min_detectable_dz']:.3g} with {protocol.power:.0%} power "
                   f"(≥ {power['min_detectable_dz_holm_strictest']:.3g} at the Holm-strictest level), and an F-test detects variance "
                   f"ratios ≥ {power['min_detectable_variance_ratio']:.3g} (or ≤ {1 / power['min_detectable_variance_ratio']:.3g}).")
    worst = max(deviations) if deviations else None
    changed = identical < n or (worst is not None and worst > RECORDED_TOLERANCE)
    verdict += f" Token agreement blind vs measured: {agreement:.1%} ({identical}/{n} samples identical)"
    if worst is not None:
        verdict += f"; R recorded during measured generation vs recomputed on the same text: max |Δ| = {worst:.2g}"
    verdict += "; measuring CHANGED the computation." if changed else "; measuring did not change the computation."

    tables = [
        {
            "title": f"Blind vs measured, per sample (n = {n} pairs: {_count(len(texts), 'prompt')} × {_count(len(protocol.seeds), 'seed')})",
            "header": ["metric", "n", "blind mean", "measured mean", "Δ mean (measured − blind)", f"{protocol.ci_level:.0%} CI",
                       "d_z", "rank-biserial", f"p ({protocol.test})", "p Holm"],
            "rows": [[METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]], c["cohens_dz"],
                      c["rank_biserial"], c["p"], c["p_holm"]] if (c := comparisons[m]) else [METRIC_LABELS[m], 0] + [None] * 8
                     for m in protocol.metrics],
        },
        {
            "title": f"Spread between samples (n = {n} per condition)",
            "header": ["metric", "n", "var blind", "var measured", "ratio measured/blind", f"{protocol.ci_level:.0%} CI (bootstrap)",
                       "Brown–Forsythe p", "p Holm", "Levene p", "p Holm", "permutation p", "p Holm"],
            "rows": [[METRIC_LABELS[m], n, s["brown_forsythe"]["variances"][1], s["brown_forsythe"]["variances"][0],
                      s["brown_forsythe"]["variance_ratio"], s["brown_forsythe"]["variance_ratio_ci"], s["brown_forsythe"]["p"],
                      s["brown_forsythe"].get("p_holm"), s["levene"]["p"], s["levene"].get("p_holm"),
                      (variance_perm.get(m) or {}).get("p"), (variance_perm.get(m) or {}).get("p_holm")]
                     for m, s in spreads.items()],
            "note": "Brown–Forsythe and Levene treat the two conditions as independent groups of per-sample values.",
        },
        {
            "title": f"Every test of the family (Holm over {family} p-values, α = {protocol.alpha:g}, n = {n})",
            "header": ["metric", "test", "n", "p", "p Holm", "detected"],
            "rows": [[METRIC_LABELS[e["metric"]], e["test"], n, e["p"], e["p_holm"], bool(e["p_holm"] is not None and e["p_holm"] <= protocol.alpha)]
                     for e in entries],
        },
        {
            "title": f"Agreement and power (n = {n})",
            "header": ["quantity", "n", "value"],
            "rows": [["token agreement blind vs measured (mean share of positions)", n, agreement],
                     ["samples with identical text", n, identical],
                     ["max |R recorded during generation − R recomputed| (measured)", len(deviations), max(deviations) if deviations else None],
                     [f"smallest |d_z| detectable at {protocol.power:.0%} power (α = {protocol.alpha:g})", n, power["min_detectable_dz"]],
                     [f"… at the Holm-strictest level α/{family}", n, power["min_detectable_dz_holm_strictest"]],
                     [f"smallest variance ratio detectable at {protocol.power:.0%} power (F-test)", n, power["min_detectable_variance_ratio"]]],
        },
    ]
    scatter = {}
    for mode in ("blind", "measured"):
        points = [[float(r), float(u)] for row in rows if row[mode]["r"] is not None for r, u in zip(row[mode]["r"], row[mode]["u"])]
        scatter[mode] = points[:MAX_SCATTER]
    tokens = {mode: [float(v) for row in rows if row[mode]["r"] is not None for v in row[mode]["r"]] for mode in ("blind", "measured")}
    return {
        "n": n,
        "n_prompts": len(texts),
        "conditions": ["blind", "measured"],
        "definitions": {
            "blind": "phaselm.generation.generate(measured=False): nothing recorded during generation",
            "measured": "generate(measured=True) with R recorded at every oscillator site during generation",
            "R of a sample": "R of the positions that produced its tokens (mean over oscillator sites), recomputed for both "
                             "conditions by one teacher-forced forward pass over prompt + continuation",
            "r_std, r_range": "standard deviation and max − min of R over the tokens of one sample",
            "u_mean": "mean normalised entropy U of the next-token distributions (temperature 1) at those positions",
            "agreement": "share of positions where blind and measured chose the same token (same prompt and seed)",
            "recorded vs recomputed": "R recorded during measured generation against R recomputed on the same text; a difference "
                                      f"above {RECORDED_TOLERANCE:g} means measuring changed the computation",
            "order": "blind first for even-numbered samples, measured first for odd (counterbalanced)",
        },
        "agreement": {"mean": agreement, "identical_samples": identical, "n": n, "max_recorded_vs_recomputed_r": worst,
                      "tolerance": RECORDED_TOLERANCE, "computation_changed": changed},
        "comparisons": comparisons,
        "spread": spreads,
        "variance_permutation": variance_perm,
        "family": [{k: v for k, v in e.items()} for e in entries],
        "holm_family_size": family,
        "detected": bool(detected),
        "power": power,
        "verdict": verdict,
        "tables": tables,
        "distributions": {METRIC_LABELS[m]: {mode: [v for v in values[m][mode] if v is not None] for mode in ("blind", "measured")}
                          for m in protocol.metrics},
        "token_r": tokens,
        "scatter": scatter,
        "per_sample": [{"prompt": r["prompt"], "seed": r["seed"], "agreement": r["agreement"],
                        **{f"{m}_{mode}": values[m][mode][k] for m in protocol.metrics for mode in ("blind", "measured")}}
                       for k, r in enumerate(rows)],
        "samples": [{"prompt": texts[r["prompt"]], "seed": r["seed"], "blind": subject.tokenizer.decode(r["blind"]["ids"]),
                     "measured": subject.tokenizer.decode(r["measured"]["ids"])} for r in rows[:3]],
    }


# --------------------------------------------------------------------------------------------
# Intervention: each condition vs none
# --------------------------------------------------------------------------------------------


def _kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    from .evals import kl_divergence

    return float(kl_divergence(F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)).mean())


def _mean_r(orders: torch.Tensor | None, window: slice) -> float | None:
    r = _per_token_r(orders, window)
    return float(r.mean()) if r is not None and len(r) else None


def validate_conditions(subject: Subject, conditions: Sequence[Condition], calibration) -> list[dict]:
    """Every condition against the model (layers, branches, values) before any work; its records."""
    records = []
    for condition in conditions:
        with intervene(subject.target, *condition.interventions, calibration=calibration) as applied:
            records.append({"name": condition.name, "interventions": applied.to_json()})
    return records


def run_intervention(protocol: Protocol, subject: Subject, reference: Subject | None = None, progress=None) -> dict:
    from .evals import text_metrics

    info = structure(subject.target)
    if "mean_r" in protocol.metrics and not info.sites:
        raise PhaseLMError(f"[metrics] mean_r needs a model with oscillators; this {info.name} model has none — drop mean_r")
    texts = _prompts(protocol, subject)
    _check_prompts(subject, texts, protocol.max_new_tokens)
    calibration = [subject.tokenizer.encode(t) for t in texts]
    records = validate_conditions(subject, protocol.conditions, calibration)
    if reference is not None:
        ref_vocab = reference.model.get_input_embeddings().num_embeddings
        vocab = subject.model.get_input_embeddings().num_embeddings
        if ref_vocab != vocab:
            raise PhaseLMError(f"[model] reference has a vocabulary of {ref_vocab}, the model {vocab}; the reference must share the tokenizer")
    judge = reference or subject
    units = _units(protocol, len(texts))
    advance = progress or (lambda *_: None)
    advance(0)
    metrics = protocol.metrics
    prompts = calibration
    # per unit (prompt i, seed) → values; units are filled seed by seed, reported prompts outer
    index = {unit: k for k, unit in enumerate(units)}
    base: dict[str, list] = {m: [None] * len(units) for m in metrics}
    forced: list[dict[str, list]] = [{m: [None] * len(units) for m in metrics} for _ in protocol.conditions]
    shown: dict[int, dict] = {}

    def score(values: dict, k: int, ids: list[int], p: list[int], orders, kl: float | None, ppl: float | None) -> None:
        text = text_metrics(ids)
        for m in metrics:
            if m == "kl":
                values[m][k] = kl
            elif m == "perplexity":
                values[m][k] = ppl
            elif m == "mean_r":
                values[m][k] = _mean_r(orders, _producing(len(p), len(ids)))
            else:
                values[m][k] = text[m]

    for seed in protocol.seeds:
        unforced = generate_many(subject, prompts, seed, protocol, texts)
        full_u = [p + ids for p, ids in zip(prompts, unforced)]
        scored_u = forward_many(subject, full_u)
        ppl_u = perplexity_many(judge, prompts, unforced)
        logits_u = [logits[_producing(len(p), len(ids))] for (logits, _), p, ids in zip(scored_u, prompts, unforced)]
        for i, (p, ids) in enumerate(zip(prompts, unforced)):
            score(base, index[(i, seed)], ids, p, scored_u[i][1], 0.0, ppl_u[i])
        del scored_u
        for j, condition in enumerate(protocol.conditions):
            with intervene(subject.target, *condition.interventions, calibration=calibration, seed=seed):
                ids_c = generate_many(subject, prompts, seed, protocol, texts)
                along_u = forward_many(subject, full_u)
                scored_c = forward_many(subject, [p + ids for p, ids in zip(prompts, ids_c)])
            ppl_c = perplexity_many(judge, prompts, ids_c)
            for i, (p, ids) in enumerate(zip(prompts, ids_c)):
                window = _producing(len(p), len(unforced[i]))
                kl = _kl(logits_u[i], along_u[i][0][window]) if unforced[i] else None
                score(forced[j], index[(i, seed)], ids, p, scored_c[i][1], kl, ppl_c[i])
                if index[(i, seed)] < 3:
                    shown.setdefault(index[(i, seed)], {"prompt": texts[i], "seed": seed,
                                                        "unforced": subject.tokenizer.decode(unforced[i])})[condition.name] = subject.tokenizer.decode(ids)
        advance(len(prompts))
    shown = [shown[k] for k in sorted(shown)]
    seed0 = protocol.seeds[0]
    comparisons = [{m: compare(forced[j][m], base[m], protocol, seed0) for m in metrics} for j in range(len(protocol.conditions))]
    family = holm_family([c for row in comparisons for c in row.values()])
    for row in comparisons:
        for c in row.values():
            if c is not None:
                c["significant"] = c["p_holm"] is not None and c["p_holm"] <= protocol.alpha
    n = len(units)
    power = power_statement(n, protocol, family)
    table_rows = []
    for condition, row in zip(protocol.conditions, comparisons):
        for m in metrics:
            c = row[m]
            if c is None:
                table_rows.append([condition.name, METRIC_LABELS[m], 0] + [None] * 8)
                continue
            table_rows.append([condition.name, METRIC_LABELS[m], c["n"], c["mean_y"], c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]],
                               c["cohens_dz"], c["p"], c["p_holm"], c["significant"]])
    detected = [(cond.name, m) for cond, row in zip(protocol.conditions, comparisons) for m, c in row.items() if c and c["significant"]]
    verdict = (f"{len(detected)} of {family} condition × metric comparisons differ from the unforced model "
               f"(Holm, α = {protocol.alpha:g}, n = {n} pairs)" + (": " + "; ".join(f"{c} — {METRIC_LABELS[m]}" for c, m in detected) if detected else "")
               + f". At n = {n} a paired t-test detects |d_z| ≥ {power['min_detectable_dz']:.3g} with {protocol.power:.0%} power.")
    reference_name = protocol.reference or "the unforced model"
    return {
        "n": n,
        "n_prompts": len(texts),
        "conditions": ["none"] + [c.name for c in protocol.conditions],
        "interventions": records,
        "definitions": {
            "pairing": "each condition and the unforced model continue the same prompt with the same seed",
            "kl": "mean over the generated positions of KL(p_unforced ‖ p_forced), both teacher-forced along the unforced continuation "
                  "(compared with 0)",
            "perplexity": f"of each continuation given its prompt, under {reference_name} at temperature 1",
            "repetition": "1 − distinct-4 of the continuation",
            "mean_r": "R of the positions that produced the tokens, mean over oscillator sites and tokens",
            "calibration": "mean_output / noise_output take the mean and std over every position of the protocol's prompts",
        },
        "reference": reference_name,
        "comparisons": [{"condition": c.name, **{m: row[m] for m in metrics}} for c, row in zip(protocol.conditions, comparisons)],
        "holm_family_size": family,
        "power": power,
        "detected": bool(detected),
        "verdict": verdict,
        "tables": [{
            "title": f"Each condition vs none (n = {n} pairs: {_count(len(texts), 'prompt')} × {_count(len(protocol.seeds), 'seed')}; "
                     f"Holm over {family} tests)",
            "header": ["condition", "metric", "n", "none", "condition mean", "Δ mean", f"{protocol.ci_level:.0%} CI", "d_z",
                       f"p ({protocol.test})", "p Holm", "significant"],
            "rows": table_rows,
        }, {
            "title": f"Power (n = {n})",
            "header": ["quantity", "n", "value"],
            "rows": [[f"smallest |d_z| detectable at {protocol.power:.0%} power (α = {protocol.alpha:g})", n, power["min_detectable_dz"]],
                     [f"… at the Holm-strictest level α/{family}", n, power["min_detectable_dz_holm_strictest"]]],
        }],
        "distributions": {METRIC_LABELS[m]: {"none": [v for v in base[m] if v is not None],
                                             **{c.name: [v for v in forced[j][m] if v is not None] for j, c in enumerate(protocol.conditions)}}
                          for m in metrics if m != "kl"}
                         | ({METRIC_LABELS["kl"]: {c.name: [v for v in forced[j]["kl"] if v is not None]
                                                    for j, c in enumerate(protocol.conditions)}} if "kl" in metrics else {}),
        "per_sample": {"units": [{"prompt": i, "seed": s} for i, s in units], "none": base,
                       "conditions": {c.name: forced[j] for j, c in enumerate(protocol.conditions)}},
        "samples": shown,
    }


# --------------------------------------------------------------------------------------------
# Ablation grid
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    layers: Any
    k_scale: float
    oscillators: Any
    u_regulation: bool
    ablate: str = "none"

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        items = []
        if self.k_scale != 1.0:
            items.append(Intervention("k_scale", self.k_scale, self.layers))
        if self.oscillators != ALL_LAYERS:
            items.append(Intervention("oscillators", self.oscillators, self.layers))
        if not self.u_regulation:
            items.append(Intervention("unclamp", None, self.layers))
        if self.ablate != "none":
            items.append(Intervention("ablate", self.ablate, self.layers))
        return tuple(items)

    @property
    def label(self) -> str:
        where = "all" if self.layers == ALL_LAYERS else ",".join(map(str, self.layers))
        m = "all" if self.oscillators == ALL_LAYERS else str(self.oscillators)
        label = f"layers {where} · K×{self.k_scale:g} · oscillators {m} · U {'on' if self.u_regulation else 'off'}"
        return label + (f" · ablate {self.ablate}" if self.ablate != "none" else "")

    def to_dict(self) -> dict:
        return {"layers": self.layers if self.layers == ALL_LAYERS else list(self.layers), "k_scale": self.k_scale,
                "oscillators": self.oscillators, "u_regulation": self.u_regulation, "ablate": self.ablate, "label": self.label}


def grid_cells(protocol: Protocol) -> list[Cell]:
    g = protocol.grid
    return [Cell(*values) for values in itertools.product(g["layers"], g["k_scale"], g["oscillators"], g["u_regulation"], g["ablate"])]


def grid_windows(val_ids: torch.Tensor, protocol: Protocol) -> list[tuple[int, int]]:
    """(seed, start) of every evaluation window: ``windows`` random starts per seed."""
    room = len(val_ids) - protocol.seq_len - 1
    if room < 0:
        raise PhaseLMError(f"the validation split has {len(val_ids)} tokens, too few for windows of {protocol.seq_len} + 1; lower [evaluation] seq_len")
    out = []
    for seed in protocol.seeds:
        rng = np.random.default_rng(seed)
        out += [(seed, int(s)) for s in rng.integers(0, room + 1, size=protocol.windows)]
    return out


@torch.no_grad()
def _window_stats(subject: Subject, val_ids: torch.Tensor, windows: list[tuple[int, int]], protocol: Protocol) -> tuple[list[float], list[float | None]]:
    device = next(subject.model.parameters()).device
    losses, orders = [], []
    for start in range(0, len(windows), protocol.batch_size):
        batch = windows[start : start + protocol.batch_size]
        x = torch.stack([val_ids[s : s + protocol.seq_len] for _, s in batch]).to(device)
        y = torch.stack([val_ids[s + 1 : s + protocol.seq_len + 1] for _, s in batch]).to(device)
        if subject.handle is not None:
            subject.handle.last = None
        out = subject.model(input_ids=x)
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), y, reduction="none").mean(-1)
        losses += ce.double().cpu().tolist()
        if subject.handle is not None:
            r = subject.handle.last.order.float().mean(-1) if subject.handle.last is not None else None
        elif getattr(out, "orders", None) is not None:
            r = out.orders.float().mean((1, 2))
        else:
            r = None
        orders += r.double().cpu().tolist() if r is not None else [None] * len(batch)
    return losses, orders


def run_ablation_grid(protocol: Protocol, subject: Subject, progress=None) -> dict:
    from .evals import _check_positions

    info = structure(subject.target)
    cells = grid_cells(protocol)
    if not info.sites and any(c.k_scale != 1.0 or c.oscillators != ALL_LAYERS or not c.u_regulation for c in cells):
        raise PhaseLMError(f"[grid] k_scale, oscillators and u_regulation change oscillators; this {info.name} model has none "
                           "(its grid can vary layers and ablate)")
    if "r_mean" in protocol.metrics and not info.sites:
        raise PhaseLMError(f"[metrics] r_mean needs a model with oscillators; this {info.name} model has none")
    _check_positions(subject.model, protocol.seq_len, f"[evaluation] seq_len {protocol.seq_len}")
    records = []
    for cell in cells:  # every cell validated (layers, divisors, clamps) before any work
        with intervene(subject.target, *cell.interventions) as applied:
            records.append({**cell.to_dict(), "interventions": applied.to_json()})
    val_ids = subject.validation_ids()
    windows = grid_windows(val_ids, protocol)
    advance = progress or (lambda *_: None)
    advance(0)
    base_loss, base_r = _window_stats(subject, val_ids, windows, protocol)
    advance()
    per_cell = []
    for cell in cells:
        with intervene(subject.target, *cell.interventions):
            loss, r = _window_stats(subject, val_ids, windows, protocol)
        per_cell.append({"loss": loss, "r_mean": r})
        advance()
    base = {"loss": base_loss, "r_mean": base_r}
    seed0 = protocol.seeds[0]
    comparisons = [{m: compare(values[m], base[m], protocol, seed0) for m in protocol.metrics} for values in per_cell]
    family = holm_family([c for row in comparisons for c in row.values()])
    n = len(windows)
    rows = [["as trained", n] + sum(([_mean(base[m]), None, None, None] for m in protocol.metrics), [])]
    for cell, row in zip(cells, comparisons):
        line = [cell.label, n]
        for m in protocol.metrics:
            c = row[m]
            line += [c["mean_x"], c["mean_diff"], [c["ci_low"], c["ci_high"]], c["p_holm"]] if c else [_mean(per_cell[cells.index(cell)][m]), None, None, None]
        rows.append(line)
    header = ["cell", "n"]
    for m in protocol.metrics:
        label = "loss" if m == "loss" else "R"
        header += [f"{label} mean", f"Δ{label} vs as trained", f"{protocol.ci_level:.0%} CI", "p Holm"]
    evaluation_time = ("Every cell is an evaluation-time change of the trained weights, nothing is retrained: k_scale multiplies the "
                       "coupling K; oscillators = m makes the readout and R use m of the N oscillators (the coupling step still runs "
                       "all N); U off switches the clamp of u off (K-SSM); ablate zeroes a branch's output. A model trained with "
                       "other settings is a separate run.")
    power = power_statement(n, protocol, family)
    return {
        "n": n,
        "windows": {"per_seed": protocol.windows, "seeds": protocol.seeds, "seq_len": protocol.seq_len, "starts": windows},
        "cells": records,
        "conditions": ["as trained"] + [c.label for c in cells],
        "note": evaluation_time,
        "comparisons": [{"cell": c.label, **row} for c, row in zip(cells, comparisons)],
        "as_trained": {m: _mean(base[m]) for m in protocol.metrics},
        "holm_family_size": family,
        "power": power,
        "verdict": (f"{sum(1 for row in comparisons for c in row.values() if c and c['p_holm'] is not None and c['p_holm'] <= protocol.alpha)} "
                    f"of {family} cell × metric comparisons differ from the model as trained (Holm, α = {protocol.alpha:g}, "
                    f"n = {n} windows: {protocol.windows} per seed × {_count(len(protocol.seeds), 'seed')})."),
        "tables": [{"title": f"Ablation grid: loss and R per cell (n = {n} windows of {protocol.seq_len} tokens, paired with the model as "
                             f"trained; Holm over {family} tests)", "header": header, "rows": rows, "note": evaluation_time}],
        "distributions": {METRIC_LABELS[m]: {"as trained": [v for v in base[m] if v is not None],
                                             **{c.label: [v for v in per_cell[k][m] if v is not None] for k, c in enumerate(cells)}}
                          for m in protocol.metrics},
        "per_window": {"as trained": base, **{c.label: per_cell[k] for k, c in enumerate(cells)}},
    }


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _mean(values: Sequence) -> float | None:
    clean = [v for v in values if v is not None]
    return float(np.mean(clean)) if clean else None


# --------------------------------------------------------------------------------------------
# Running a protocol and writing its outputs
# --------------------------------------------------------------------------------------------


class _Bar:
    """A progress bar on stderr that appears once the checks are done (``bar(0)`` starts it),
    so a bad input prints its one-line error and nothing else."""

    def __init__(self, enabled: bool, description: str, total: int, status: str):
        self.enabled, self.description, self.total, self.status = enabled, description, total, status
        self.progress = self.task = None

    def __call__(self, steps: int = 1) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            from .evals import _progress

            self.progress = _progress(True)
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, status=self.status)
        self.progress.update(self.task, advance=steps)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _jsonable(value):
    from .evals import _jsonable as clean

    return clean(value)


def run_protocol(
    protocol: Protocol | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    subject: Subject | None = None,
    reference: Subject | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run a protocol file and write its results into ``out_dir`` (default runs/protocols/NAME).

    Everything that can be checked is checked before the slow part and before anything is
    written: the file, the out directory (a different protocol's results are never replaced),
    the model, the conditions against the model. ``subject`` / ``reference`` replace loading
    the protocol's model / reference (tests, notebooks).
    """
    from .reporting import machine_description

    if not isinstance(protocol, Protocol):
        protocol = load_protocol(protocol)
    out = check_out_dir(out_dir if out_dir is not None else default_out_dir(protocol), protocol)
    if subject is None:
        model_path = _resolve_path(protocol.model_path, protocol.file.parent)
        subject = load_subject(model_path, protocol.device)
    if reference is None and protocol.reference:
        reference = load_subject(_resolve_path(protocol.reference, protocol.file.parent), protocol.device)
    was_training = subject.model.training
    subject.model.eval()
    units = len(protocol.seeds) * protocol.n_prompts
    total = {"observation": units, "intervention": units, "ablation_grid": len(grid_cells(protocol)) + 1 if protocol.grid else 1}[protocol.kind]
    bar = _Bar(progress, f"{protocol.kind} protocol", total, protocol.name)
    try:
        if protocol.kind == "observation":
            body = run_observation(protocol, subject, bar)
        elif protocol.kind == "intervention":
            body = run_intervention(protocol, subject, reference, bar)
        else:
            body = run_ablation_grid(protocol, subject, bar)
    finally:
        bar.close()
        subject.model.train(was_training)
    results = {
        "title": f"{protocol.kind} protocol: {protocol.name}",
        "protocol": {**protocol.header(), "copy": {"file": PROTOCOL_COPY, "text": protocol.text}},
        "model": {"path": subject.path or protocol.model_path, "type": subject.name, "reference": protocol.reference,
                  "parameters": sum(p.numel() for p in subject.model.parameters()),
                  "device": str(next(subject.model.parameters()).device)},
        "design": {"seeds": protocol.seeds, "samples_per_condition": protocol.samples_per_condition,
                   "prompts": {"source": protocol.prompt_source, "count": protocol.prompt_count, "tokens": protocol.prompt_tokens,
                               "file": protocol.prompt_file} if protocol.kind != "ablation_grid" else None,
                   "pairing": "window × seed" if protocol.kind == "ablation_grid" else "prompt × seed"},
        "decoding": {"max_new_tokens": protocol.max_new_tokens, "temperature": protocol.temperature, "top_k": protocol.top_k,
                     "greedy": protocol.temperature == 0} if protocol.kind != "ablation_grid" else None,
        "statistics": {"test": TESTS[protocol.test], "alpha": protocol.alpha, "power": protocol.power, "ci_level": protocol.ci_level,
                       "correction": "Holm–Bonferroni over every p-value of the protocol's family",
                       "bootstrap_resamples": protocol.bootstrap_resamples, "permutation_resamples": protocol.permutation_resamples},
        "metrics": protocol.metrics,
        **body,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
    }
    for table in results.get("tables", []):  # intervals as text: the tables are for reading, the numbers are above
        table["rows"] = [[_cell_text(c) if isinstance(c, (list, tuple)) else c for c in row] for row in table["rows"]]
    results["markdown"] = protocol_markdown(results)
    results = _jsonable(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROTOCOL_COPY).write_bytes(protocol.file.read_bytes() if protocol.file.is_file() else protocol.text.encode("utf-8"))
    if sha256_of(out / PROTOCOL_COPY) != protocol.sha256:  # the file changed while the protocol ran
        (out / PROTOCOL_COPY).write_text(protocol.text, encoding="utf-8")
    results["files"] = {"json": str(out / RESULTS), "md": str(out / "results.md"), "png": str(out / "results.png"),
                        "protocol": str(out / PROTOCOL_COPY)}
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / RESULTS)
    write_protocol_report(out, results)
    return results


def _cell_text(value) -> str:
    from .reporting import _fmt

    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(v is None or isinstance(v, (int, float)) for v in value):
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return _fmt(value)


def protocol_markdown(results: dict) -> str:
    """The protocol's verdict and tables as Markdown (every table states n)."""
    from .reporting import _table

    p = results["protocol"]
    lines = [f"# {results['title']}", "", f"Protocol file `{p['file']}`, SHA-256 `{p['sha256']}`."]
    if p.get("description"):
        lines += ["", p["description"]]
    lines += ["", f"Model: `{results['model']['path']}` ({results['model']['type']}).", "", f"**{results['verdict']}**", ""]
    for table in results.get("tables", []):
        lines += [f"## {table['title']}", ""]
        lines += _table(table["header"], [[_cell_text(c) if not isinstance(c, str) else c for c in row] for row in table["rows"]])
        if table.get("note"):
            lines += ["", table["note"]]
        lines.append("")
    if results.get("note"):
        lines += [results["note"], ""]
    return "\n".join(lines).rstrip() + "\n"


def write_protocol_report(out_dir: str | os.PathLike, results: dict) -> list[Path]:
    """Write a protocol's human-readable outputs from its results dict: ``results.md``,
    ``results.png`` (per-condition distributions, and R/U panels where there are any) and,
    where :mod:`phaselm.reporting` provides it, ``report.html``. Results in, files out; safe to
    call again (``phaselm report`` rebuilds from results.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "results.md"
    md.write_text(results.get("markdown") or protocol_markdown(results), encoding="utf-8")
    written.append(md)
    png = _plot_results(results, out / "results.png")
    if png is not None:
        written.append(png)
    from . import reporting

    html_writer = getattr(reporting, "write_html_report", None)
    if html_writer is not None:
        text = (results.get("protocol", {}).get("copy") or {}).get("text")
        written.append(html_writer(out, title=results.get("title"), protocol_text=text,
                                   results=[results], commands=[results["command"]] if results.get("command") else None))
    return written


def _plot_results(results: dict, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    from .reporting import _save

    distributions = {m: c for m, c in (results.get("distributions") or {}).items() if any(c.values())}
    token_r = results.get("token_r") or {}
    panels = list(distributions) + (["per-token R"] if any(token_r.values()) else [])
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        if name == "per-token R":
            for mode, values in token_r.items():
                if values:
                    ax.hist(values, bins=40, range=(0, 1), alpha=0.5, label=f"{mode} (n={len(values)} tokens)")
            ax.set_xlabel("R")
            ax.legend(fontsize=7)
            ax.set_title("per-token R", fontsize=9)
            ax.grid(alpha=0.3)
            continue
        conditions = {c: v for c, v in distributions[name].items() if v}
        data = list(conditions.values())
        ax.boxplot(data, showfliers=False)
        for j, values in enumerate(data):
            jitter = np.random.default_rng(j).uniform(-0.15, 0.15, len(values))
            ax.scatter(np.full(len(values), j + 1) + jitter, values, s=8, alpha=0.5)
        ax.set_xticks(range(1, len(data) + 1), [f"{c}\n(n={len(v)})" for c, v in conditions.items()], fontsize=6, rotation=15)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{results.get('title', 'protocol')} (n = {results.get('n')} per condition)", fontsize=10)
    return _save(fig, path)
