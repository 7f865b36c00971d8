"""Recipes: nested dataclasses read from and written to TOML.

A recipe file has one table per section (``[backbone]``, ``[core]``, ``[train]``, …). Every key
is checked against the dataclass: an unknown key names the closest known one, a value of the
wrong type says which type it needs, so a typo never silently falls back to a default.

A section may also be a model's own config class (``KSSMConfig``, ``FusionConfig``, the GPT
baseline's ``GPTConfig``): such a class lists ``recipe_excludes`` (keywords the recipe does not
set, e.g. ``vocab_size``, which comes from the tokenizer), and its other ``__init__`` keywords are
the table's keys, checked and typed the same way. The model's config is then the one place where
its settings and their defaults are written.

A section whose dataclass field lists ``metadata={TABLE_KINDS: {"name": Class, ...}}`` holds one
of several classes: the table's ``kind`` key picks it (absent: the first), and a written recipe
names it (the Phase-Mamba recipe's ``[core]``: ``"phase-core"`` or ``"phase-block"``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib
import tomli_w

from .errors import PhaseLMError

T = TypeVar("T")

# The top-level key of a run's config.toml that names what wrote it (a recipe class's KIND), as
# transformers' config.json names its model_type; phaselm.runs dispatches on it.
KIND_KEY = "kind"
# The field metadata key of a section that may hold one of several classes, by kind name.
TABLE_KINDS = "table_kinds"


def kinds_field(kinds: dict[str, type]) -> Any:
    """A dataclass field holding one of ``kinds`` (name → class), picked by its table's ``kind``;
    the first is the default."""
    default = next(iter(kinds.values()))
    return dataclasses.field(default_factory=default, metadata={TABLE_KINDS: kinds})


def _tagged_from_dict(kinds: dict[str, type], data: Any, where: str) -> Any:
    """The class ``data``'s ``kind`` names (the first of ``kinds`` without one), built from the rest."""
    _check_table(data, where)
    kind = data.get(KIND_KEY, next(iter(kinds)))
    if kind not in kinds:
        raise PhaseLMError(f"{where}.{KIND_KEY} = {kind!r} is unknown; it needs one of {', '.join(map(repr, kinds))}")
    return from_dict(kinds[kind], {k: v for k, v in data.items() if k != KIND_KEY}, where)


def _kind_name(kinds: dict[str, type], value: Any) -> str:
    return next(name for name, cls in kinds.items() if type(value) is cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp``, or a PhaseLMError naming ``where`` and the expected type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except PhaseLMError:
                continue
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML reads inf and nan; no setting of ours can be either
                raise PhaseLMError(f"{where} = {value!r} is not a finite number; give a finite value")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        (item_type, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, (list, tuple)):
            items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif tp is Any:
        return value
    raise PhaseLMError(f"{where} = {value!r} has the wrong type; it needs {_type_name(tp)}")


def is_model_config(tp: Any) -> bool:
    """Whether ``tp`` is a model config class that a recipe table builds directly."""
    return isinstance(tp, type) and hasattr(tp, "recipe_excludes")


def recipe_keys(cls: type) -> dict[str, Any]:
    """The keys a recipe table may set on model config class ``cls``, with their types: its
    ``__init__``'s named keywords except ``cls.recipe_excludes``."""
    hints = typing.get_type_hints(cls.__init__)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: hints.get(name, Any)
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind in keyword and name not in cls.recipe_excludes
    }


def recipe_table(config: Any) -> dict:
    """A model config's recipe keys and their current values (what a recipe's table holds)."""
    return {key: getattr(config, key) for key in recipe_keys(type(config))}


def _unknown_key(key: str, known: list[str], where: str) -> PhaseLMError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    section = f"[{where}]" if where else "the recipe"
    return PhaseLMError(f"unknown key {key!r} in {section}; {hint}")


def _check_table(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise PhaseLMError(f"[{where}] must be a table of settings, got {data!r}")


def config_from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build model config class ``cls`` from a recipe table, checking every key and type; the
    class's own checks (a bad mixer, heads that do not divide) name the table they came from."""
    _check_table(data, where)
    keys = recipe_keys(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in keys:
            raise _unknown_key(key, list(keys), where)
        kwargs[key] = _coerce(value, keys[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except PhaseLMError as exc:
        raise PhaseLMError(f"[{where}] {exc}" if where else str(exc)) from None


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict, checking every key and type."""
    _check_table(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    declared = getattr(cls, "KIND", None)
    if not where and declared is not None and KIND_KEY in data:
        # A run's own config.toml read back as a recipe: its kind must be this recipe's.
        if data[KIND_KEY] != declared:
            raise PhaseLMError(
                f"this is the config of a {data[KIND_KEY]!r} run, not a {declared!r} recipe; "
                f"use the command that writes {data[KIND_KEY]!r} runs"
            )
        data = {k: v for k, v in data.items() if k != KIND_KEY}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise _unknown_key(key, list(fields), where)
        tp = hints[key]
        kinds = fields[key].metadata.get(TABLE_KINDS)
        if kinds:
            kwargs[key] = _tagged_from_dict(kinds, value, name)
        elif is_model_config(tp):  # before the dataclass test: transformers' configs are dataclasses too
            kwargs[key] = config_from_dict(tp, value, name)
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, name)
        else:
            kwargs[key] = _coerce(value, tp, name)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain dict (a model config section as its recipe keys), with None
    values dropped (TOML has no null)."""

    def plain(value):
        if is_model_config(type(value)):
            return plain(recipe_table(value))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            table = plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
            for f in dataclasses.fields(value):
                kinds = f.metadata.get(TABLE_KINDS)
                if kinds and isinstance(table.get(f.name), dict):
                    table[f.name] = {KIND_KEY: _kind_name(kinds, getattr(value, f.name)), **table[f.name]}
            return table
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(obj)


def load_recipe(cls: type[T], path: str | os.PathLike, overrides: dict | None = None) -> T:
    """Read a TOML recipe into ``cls``; ``overrides`` ({"train.steps": 10}) win over the file."""
    path = Path(path)
    if path.is_dir():
        raise PhaseLMError(
            f"recipe {path} is a directory; pass a TOML file (see recipes/), "
            "or the run directory to a command that opens runs"
        )
    if not path.is_file():
        raise PhaseLMError(f"recipe {path} does not exist; pass a TOML file (see recipes/)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PhaseLMError(f"recipe {path} is not valid TOML: {exc}") from None
    try:
        return from_dict(cls, apply_overrides(data, overrides or {}))
    except PhaseLMError as exc:
        raise PhaseLMError(f"recipe {path}: {exc}") from None


def apply_overrides(data: dict, overrides: dict) -> dict:
    """Set dotted keys ("train.steps") in a nested dict, returning a new dict."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return data


def dump_recipe(obj: Any) -> str:
    """The recipe as TOML text (what a run directory stores as config.toml), headed by
    ``kind = ...`` where the recipe class declares a KIND."""
    return with_kind(tomli_w.dumps(to_dict(obj)), getattr(obj, "KIND", None))


def with_kind(config_text: str, kind: str | None) -> str:
    """``config_text`` with ``kind = "KIND"`` as its first line (unchanged for ``kind`` None)."""
    return config_text if kind is None else tomli_w.dumps({KIND_KEY: kind}) + config_text


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.steps=10"`` → ("train.steps", 10): the value is read as a TOML value."""
    if "=" not in text:
        raise PhaseLMError(f"override {text!r} must look like section.key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words are strings: core.mode=recurrent
    return key.strip(), value
