"""The protocol file: parsing and checking every key, and the out directory."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import statistics as st
from ..errors import PhaseLMError
from ..interventions import ALL_LAYERS, OSCILLATOR_KINDS, Intervention
from ..metrics import metric_labels

KINDS = ("observation", "intervention", "ablation_grid", "does_r_matter")
WINDOW_KINDS = ("ablation_grid", "does_r_matter")  # kinds that score validation windows, not generations
MIN_CAUSAL_SEEDS = 3  # the does-R-matter protocol's floor (issue 15: ≥ 3 seeds per model)
TESTS = {"t": "paired t-test", "paired_t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test",
         "permutation": "sign-flip permutation test"}
PROMPT_SOURCES = ("validation", "file", "list")
METRICS = {
    "observation": ("r_mean", "r_std", "r_range", "u_mean"),
    "intervention": ("kl", "perplexity", "distinct_1", "distinct_2", "distinct_3", "repetition", "mean_r"),
    "ablation_grid": ("loss", "r_mean"),
    # fixed by the design (no [metrics] section): validation CE and KL per condition, R–loss correlation
    "does_r_matter": ("ce", "kl", "r_loss_correlation"),
}
# an intervention protocol scores perplexity under its reference model
METRIC_LABELS = metric_labels(sorted({m for kind, names in METRICS.items() if kind != "does_r_matter"
                                     for m in names}), "reference model")
RESULTS = "results.json"
PROTOCOL_COPY = "protocol.toml"
MAX_SCATTER = 5000
# R recorded during cached generation and R of one full forward pass over the same text differ
# by float rounding only (~1e-6); more than this means measuring changed the computation.
RECORDED_TOLERANCE = 1e-4

# section → key → (types, required for which kinds: a tuple of kinds, () = optional)
_GEN = ("observation", "intervention")
_NAMED_METRICS = ("observation", "intervention", "ablation_grid")
SCHEMA: dict[str, dict[str, tuple[tuple, tuple]]] = {
    "protocol": {"kind": ((str,), KINDS), "name": ((str,), ()), "description": ((str,), ())},
    "model": {"path": ((str,), KINDS), "reference": ((str,), ()), "device": ((str,), ()), "runs": ((list,), ())},
    "prompts": {"source": ((str,), _GEN), "count": ((int,), ()), "tokens": ((int,), ()), "file": ((str,), ()),
                "texts": ((list,), ())},
    "decoding": {"max_new_tokens": ((int,), _GEN), "temperature": ((float, int), _GEN), "top_k": ((int,), ())},
    "design": {"seeds": ((list,), KINDS), "samples_per_condition": ((int,), KINDS)},
    "metrics": {"names": ((list,), _NAMED_METRICS)},
    "statistics": {"test": ((str,), KINDS), "alpha": ((float,), KINDS), "power": ((float,), ()),
                   "ci_level": ((float,), ()),
                   "bootstrap_resamples": ((int,), ()), "permutation_resamples": ((int,), ())},
    "grid": {"layers": ((list,), ()), "k_scale": ((list,), ()), "oscillators": ((list,), ()),
             "u_regulation": ((list,), ()), "ablate": ((list,), ())},
    "evaluation": {"windows": ((int,), WINDOW_KINDS), "seq_len": ((int,), WINDOW_KINDS),
                   "batch_size": ((int,), ())},
    "causal": {"ablate": ((str,), ("does_r_matter",)), "pin": ((float,), ("does_r_matter",)),
               "layers": ((str, int, list), ()), "sites": ((str,), ())},
    "thresholds": {"ablation_nats": ((float,), ("does_r_matter",)), "pin_dz": ((float,), ("does_r_matter",))},
}
CONDITION_KEYS = {"name": (str,), "intervention": (str, list), "layers": (str, int, list)}
SECTIONS_FOR = {
    "observation": ("protocol", "model", "prompts", "decoding", "design", "metrics", "statistics"),
    "intervention": ("protocol", "model", "prompts", "decoding", "design", "conditions", "metrics", "statistics"),
    "ablation_grid": ("protocol", "model", "design", "grid", "evaluation", "metrics", "statistics"),
    "does_r_matter": ("protocol", "model", "design", "causal", "evaluation", "thresholds", "statistics"),
}


@dataclass
class Condition:
    """One arm of an intervention protocol: interventions applied together (composed in order)."""

    name: str
    interventions: tuple[Intervention, ...]

    def to_dict(self) -> dict:
        """The condition's name and interventions, as recorded in results.json."""
        return {"name": self.name, "interventions": [i.to_dict() for i in self.interventions]}


@dataclass
class Protocol:
    """A parsed, checked protocol file: its kind, model, prompts, decoding, design, metrics and statistics."""
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
    settings: dict = field(default_factory=dict)  # an eval design's options (its [eval] table)
    causal: dict = field(default_factory=dict)  # does_r_matter: ablate, pin, layers, sites
    thresholds: dict = field(default_factory=dict)  # does_r_matter: ablation_nats, pin_dz (pre-declared)
    runs: list[str] = field(default_factory=list)  # does_r_matter: further training runs beside [model] path

    @property
    def n_prompts(self) -> int:
        """Prompts per seed (evaluation windows per seed, over every run, for the window kinds)."""
        if self.kind in WINDOW_KINDS:
            return self.windows * (1 + len(self.runs))
        return int(self.prompt_count or 0)

    def header(self) -> dict:
        """What identifies the protocol in its results: kind, name, description, file and SHA-256."""
        return {"kind": self.kind, "name": self.name, "description": self.description, "file": str(self.file),
                "sha256": self.sha256}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
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


def resolve_path(text: str, base: Path) -> Path:
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
        raise PhaseLMError("[[conditions]] must be one or more tables, each with intervention = \"sync\" (or a list to "
                           "compose)")
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
            raise PhaseLMError(f"{where} intervention must be a name like \"pin=0.3\" or a list of them, got "
                               f"{table['intervention']!r}")
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
    from ..config import tomllib

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
            raise PhaseLMError(f"section [{section}] does not apply to a {kind} protocol; remove it (sections: "
                               f"{', '.join(allowed)})")
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
        raise PhaseLMError(f"[design] samples_per_condition = {n}: a statistical test needs n ≥ {st.MIN_N} (50 or more "
                           "for real power)")
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
    metrics = v["metrics"]["names"] if kind in _NAMED_METRICS else list(METRICS[kind])
    if not metrics or not all(isinstance(m, str) for m in metrics):
        raise PhaseLMError(f"[metrics] names must be a non-empty list of metric names ({', '.join(METRICS[kind])})")
    for m in metrics:
        if m not in METRICS[kind]:
            close = difflib.get_close_matches(m, METRICS[kind], n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise PhaseLMError(f"[metrics] {m!r} is not a metric of a {kind} protocol; {hint}choose from "
                               f"{', '.join(METRICS[kind])}")
    if len(set(metrics)) != len(metrics):
        raise PhaseLMError("[metrics] names lists a metric twice; give each once")
    model = v["model"]
    protocol = Protocol(
        file=path, text=text, sha256=hashlib.sha256(raw_bytes).hexdigest(), kind=kind,
        name=v["protocol"].get("name") or path.stem, description=v["protocol"].get("description", ""),
        model_path=model["path"], reference=model.get("reference") or None, device=model.get("device") or None,
        seeds=seeds, samples_per_condition=n, metrics=list(metrics), test=test, alpha=alpha, power=power,
        ci_level=ci_level, **resamples,
    )
    if model.get("runs") and kind != "does_r_matter":
        raise PhaseLMError("[model] runs applies to does_r_matter protocols only (other training seeds of the model)")
    if model.get("reference") and kind != "intervention":
        raise PhaseLMError("[model] reference applies to intervention protocols only (perplexity under a reference "
                           "model)")
    if kind in _GEN:
        _load_generation_design(protocol, v, path)
    elif kind == "ablation_grid":
        _load_grid_design(protocol, v)
    else:
        _load_causal_design(protocol, v)
    if kind == "intervention":
        protocol.conditions = _conditions(data["conditions"], path)
    design = protocol.n_prompts * len(seeds)
    parts = f"{protocol.windows} windows" if kind in WINDOW_KINDS else f"{protocol.n_prompts} prompts"
    parts += f" × {1 + len(protocol.runs)} runs" if protocol.runs else ""
    if design != n:
        raise PhaseLMError(f"[design] samples_per_condition = {n} but the design gives {parts} × {len(seeds)} seeds = "
                           f"{design}; make them agree")
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
        file = resolve_path(prompts["file"], path.parent)
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
            raise PhaseLMError(f"[prompts] count = {count} but texts has {len(texts)} prompts; drop count or make them "
                               "agree")
        count, protocol.prompt_texts = len(texts), list(texts)
    if count < 1:
        raise PhaseLMError(f"[prompts] count must be at least 1, got {count}")
    protocol.prompt_count = count
    protocol.max_new_tokens = decoding["max_new_tokens"]
    if protocol.max_new_tokens < 4:
        raise PhaseLMError("[decoding] max_new_tokens must be at least 4 (repetition counts 4-grams), got "
                           f"{protocol.max_new_tokens}")
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


GRID_DEFAULTS = {"layers": [ALL_LAYERS], "k_scale": [1.0], "oscillators": [ALL_LAYERS], "u_regulation": [True],
                 "ablate": ["none"]}


def _load_grid_design(protocol: Protocol, v: dict) -> None:
    grid = v["grid"]
    if not grid:
        raise PhaseLMError("[grid] is empty; give at least one axis: layers, k_scale, oscillators, u_regulation or "
                           "ablate")
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
    _load_windows(protocol, v)


def _load_windows(protocol: Protocol, v: dict) -> None:
    ev = v["evaluation"]
    protocol.windows, protocol.seq_len, protocol.batch_size = ev["windows"], ev["seq_len"], ev.get("batch_size", 8)
    for key in ("windows", "seq_len", "batch_size"):
        if getattr(protocol, key) < 1:
            raise PhaseLMError(f"[evaluation] {key} must be at least 1, got {getattr(protocol, key)}")


def _load_causal_design(protocol: Protocol, v: dict) -> None:
    """[causal], [thresholds], [evaluation] and [model] runs of a does_r_matter protocol."""
    if len(protocol.seeds) < MIN_CAUSAL_SEEDS:
        raise PhaseLMError(f"[design] seeds lists {len(protocol.seeds)}; the does_r_matter protocol needs at least "
                           f"{MIN_CAUSAL_SEEDS} seeds, e.g. seeds = [0, 1, 2]")
    _load_windows(protocol, v)
    causal = v["causal"]
    ablate = Intervention("ablate", causal["ablate"]).value
    pin = Intervention("pin", causal["pin"]).value
    layers = _layers_value(causal.get("layers", ALL_LAYERS), "[causal] layers")
    sites = causal.get("sites")  # one oscillator site kind, e.g. "mixer"; left out: every site
    if sites is not None and sites not in OSCILLATOR_KINDS:
        raise PhaseLMError(f"[causal] sites must be one of {', '.join(OSCILLATOR_KINDS)} (or left out for every "
                           f"oscillator site), got {sites!r}")
    protocol.causal = {"ablate": ablate, "pin": pin, "layers": layers, "sites": sites}
    thresholds = v["thresholds"]
    if not math.isfinite(thresholds["ablation_nats"]):
        raise PhaseLMError(f"[thresholds] ablation_nats must be a finite number, got {thresholds['ablation_nats']}")
    if not (thresholds["pin_dz"] >= 0 and math.isfinite(thresholds["pin_dz"])):
        raise PhaseLMError(f"[thresholds] pin_dz must be a finite number ≥ 0 (a bound on |d_z|), got "
                           f"{thresholds['pin_dz']}")
    protocol.thresholds = dict(thresholds)
    runs = v["model"].get("runs", [])
    if not all(isinstance(r, str) and r for r in runs):
        raise PhaseLMError(f"[model] runs must be a list of run directories (other training seeds), got {runs!r}")
    if len(set(runs)) != len(runs) or v["model"]["path"] in runs:
        raise PhaseLMError("[model] runs repeats a run (or [model] path); give each training run once")
    protocol.runs = list(runs)


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
            f"{out} holds results of a different protocol (sha256 {str(recorded)[:12]}…, this file is "
            f"{protocol.sha256[:12]}…); results never attach to a changed protocol: choose another --out"
        )
    return out


def default_out_dir(protocol: Protocol) -> Path:
    """Where a protocol's results go without --out: runs/protocols/<file name>."""
    return Path("runs") / "protocols" / protocol.file.stem
