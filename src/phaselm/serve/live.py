"""The model behind the live token view: :class:`LiveModel` (request checks, interventions,
streaming generation through the one sampling loop) and :func:`load_live_model`."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PhaseLMError
from ..generation import position_limit
from ..observables import GOLDILOCKS, TONES, tone_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_NEW_TOKENS = 512  # the most tokens one request may ask for (``--max-new-tokens``)
MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 8000
MAX_TEMPERATURE = 10.0
BUSY_WAIT_S = 30.0  # how long a request waits for the running generation before 503
READ_TIMEOUT_S = 30.0  # a client that sends less than it announced is dropped after this long
PHASE_KINDS = ("sync", "disorder", "pin")  # phaselm.interventions kinds offered by the page
CORE_OFF = "core_off"
REQUEST_FIELDS = ("prompt", "max_new_tokens", "temperature", "top_k", "seed", "intervention")
DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 0, "seed": 0}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The browser closed the connection: stop generating."""


# --------------------------------------------------------------------------------------------
# The model behind the page
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """A checked /api/generate request: prompt (text and ids), decoding settings, optional intervention."""
    prompt: str
    ids: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    seed: int
    intervention: dict | None  # {"kind", "value", "layers"} or None


@dataclass
class LiveModel:
    """A loaded model, its tokenizer and what the page may do with it.

    ``kind``: ``"kssm"`` (oscillator banks inside: R per layer, phase interventions),
    ``"grafted"`` (a backbone with a Phase Core hooked in: R of the core, ``core_off``) or
    ``"plain"`` (no oscillators: U only).
    """

    model: nn.Module
    tokenizer: Any
    name: str
    kind: str
    handle: Any = None  # phaselm.graft.Graft for grafted models
    max_new_tokens: int = MAX_NEW_TOKENS
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_sites(self) -> int:
        """Number of oscillator sites (layers with phases) in the model."""
        from ..interventions import phase_sites

        return len(phase_sites(self.model))

    def interventions(self) -> list[dict]:
        """What the page's toggles may ask for on this model."""
        from ..interventions import KINDS

        offered = []
        if self.n_sites:
            for name in PHASE_KINDS:
                if name in KINDS:
                    offered.append({"kind": name, "needs_value": KINDS[name].needs_value, "help": KINDS[name].help})
        if self.handle is not None:
            offered.append({"kind": CORE_OFF, "needs_value": False, "help": "run the backbone without its Phase Core"})
        return offered

    def info(self) -> dict:
        """What the page shows before generating (/api/info): model, oscillator layers, tones, limits."""
        from ..reporting import TONE_COLOURS

        return {
            "name": self.name,
            "kind": self.kind,
            "model_type": str(getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__)),
            "oscillator_layers": self.n_sites,
            "graft_layer": getattr(self.handle, "layer_path", None),
            "has_r": self.kind in ("kssm", "grafted"),
            "interventions": self.interventions(),
            "tones": [{"name": t.name, "glyph": t.glyph, "low": max(t.low, 0.0),
                       "colour": TONE_COLOURS.get(t.name, "#999")} for t in TONES],
            "goldilocks": {"r": list(GOLDILOCKS.r), "u": list(GOLDILOCKS.u), "ru": list(GOLDILOCKS.ru)},
            "limits": {"max_new_tokens": self.max_new_tokens, "max_prompt_chars": MAX_PROMPT_CHARS,
                       "max_temperature": MAX_TEMPERATURE},
            "defaults": dict(DEFAULTS),
        }

    # ----- requests

    def parse_request(self, body: Any) -> GenerationRequest:
        """Check a decoded JSON request; raises RequestError(400) naming what is wrong."""
        if not isinstance(body, dict):
            raise RequestError(400, f"the request must be a JSON object, got {type(body).__name__}")
        unknown = sorted(set(body) - set(REQUEST_FIELDS))
        if unknown:
            raise RequestError(400, f"unknown field {unknown[0]!r}; allowed: {', '.join(REQUEST_FIELDS)}")
        if "prompt" not in body:
            raise RequestError(400, "missing field 'prompt': the text to continue")
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "'prompt' must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(400, f"'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed")
        n = _integer(body, "max_new_tokens", 1, None)
        if n > self.max_new_tokens:
            raise RequestError(400, f"too many tokens: max_new_tokens is {n}, this server allows at most "
                                    f"{self.max_new_tokens}")
        temperature = _number(body, "temperature", 0.0, MAX_TEMPERATURE)
        top_k = _integer(body, "top_k", 0, None)
        seed = _integer(body, "seed", 0, 2**63 - 1)
        try:
            ids = self.tokenizer.encode(prompt)
        except PhaseLMError as exc:
            raise RequestError(400, f"cannot encode the prompt: {exc}") from None
        if not ids:
            raise RequestError(400, "the prompt encodes to no tokens; pass a non-empty prompt")
        limit = position_limit(self.model)
        if limit is not None and len(ids) + n > limit:
            raise RequestError(400, f"too many tokens: {len(ids)} prompt + {n} new tokens exceed the model's {limit} "
                                    "positions")
        return GenerationRequest(prompt, ids, n, temperature, top_k, seed,
                                 self._parse_intervention(body.get("intervention")))

    def _parse_intervention(self, spec: Any) -> dict | None:
        if spec is None or spec == "none" or spec == {}:
            return None
        if isinstance(spec, str):  # shorthand: "sync", "pin=0.3", "core_off"
            name, _, value = spec.partition("=")
            spec = {"kind": name.strip()}
            if value.strip():
                try:
                    spec["value"] = float(value)
                except ValueError:
                    raise RequestError(400, f"intervention value {value!r} is not a number") from None
        if not isinstance(spec, dict):
            raise RequestError(400, "'intervention' must be an object like {\"kind\": \"pin\", \"value\": 0.3} or null")
        unknown = sorted(set(spec) - {"kind", "value", "layers"})
        if unknown:
            raise RequestError(400, f"unknown intervention field {unknown[0]!r}; allowed: kind, value, layers")
        kind = spec.get("kind")
        if kind in (None, "none"):
            return None
        offered = [i["kind"] for i in self.interventions()]
        if kind not in offered:
            available = ", ".join(offered) if offered else "none (this model has no oscillators)"
            raise RequestError(400, f"unknown intervention {kind!r} for this {self.kind} model; available: {available}")
        value, layers = spec.get("value"), spec.get("layers", "all")
        if kind == CORE_OFF:
            if value is not None or layers not in ("all", None):
                raise RequestError(400, "intervention 'core_off' takes no value or layers")
            return {"kind": CORE_OFF, "value": None, "layers": "all"}
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RequestError(400, f"intervention value must be a number, got {value!r}")
        if kind == "pin" and value is not None and not (0.0 <= float(value) <= 1.0):
            raise RequestError(400, f"pinned R must be in [0, 1], got {value}")
        if isinstance(layers, list) and not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise RequestError(400, f"intervention layers must be 'all' or a list of layer indices, got {layers!r}")
        if not isinstance(layers, (str, list)):
            raise RequestError(400, f"intervention layers must be 'all' or a list of layer indices, got {layers!r}")
        try:
            item = self._intervention(kind, value, layers)
            from ..interventions import resolve_layers

            resolve_layers(item.layers, self.n_sites)
        except PhaseLMError as exc:
            raise RequestError(400, str(exc)) from None
        return item.to_dict()

    @staticmethod
    def _intervention(kind: str, value, layers):
        from ..interventions import Intervention

        return Intervention(kind, None if value is None else float(value),
                            tuple(layers) if isinstance(layers, list) else layers)

    @contextlib.contextmanager
    def _applied(self, spec: dict | None):
        """The request's intervention for the ``with`` block; yields what was applied."""
        if spec is None:
            yield None
        elif spec["kind"] == CORE_OFF:
            with self.handle.disabled():
                yield {"kind": CORE_OFF}
        else:
            from ..interventions import intervene

            with intervene(self.model, self._intervention(spec["kind"], spec["value"], spec["layers"])) as applied:
                yield applied.to_json()[0]

    # ----- generation

    def stream(self, request: GenerationRequest, emit: Callable[[dict], None]) -> dict:
        """Generate token by token, calling ``emit`` with each event; returns the final event.

        The caller holds ``lock``. The one sampling loop (:func:`phaselm.generation.sample_tokens`)
        runs the model's cached ``generate`` and hands each token over as soon as it is chosen,
        with U and the R of every oscillator site (K-SSM's banks, the grafted core).
        """
        from ..generation import sample_tokens

        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        readings: list[dict] = []
        started = time.perf_counter()

        def on_step(step) -> None:
            token_id = int(step.ids[0])
            r_sites = step.r[0].tolist() if step.r is not None else None
            r = float(sum(r_sites) / len(r_sites)) if r_sites else None
            u = float(step.u[0])
            reading = {
                "event": "token",
                "index": len(readings),
                "token": tokenizer.decode([token_id]),
                "id": token_id,
                "r": _finite(r),
                "u": _finite(u),
                "ru": _finite(r * u) if r is not None else None,
                "tone": tone_of(r).name if r is not None and math.isfinite(r) else None,
            }
            if r_sites is not None and self.handle is None:  # K-SSM: R per layer too
                reading["r_layers"] = [_finite(x) for x in r_sites]
            readings.append(reading)
            emit(reading)

        stopped = "length"
        try:
            with self._applied(request.intervention) as applied:
                emit({
                    "event": "start",
                    "prompt": request.prompt,
                    "prompt_tokens": len(request.ids),
                    "intervention": applied,
                    "settings": {"max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
                                 "top_k": request.top_k, "seed": request.seed},
                })
                sample_tokens(
                    model, torch.tensor([request.ids], device=device), max_new_tokens=request.max_new_tokens,
                    temperature=request.temperature, top_k=request.top_k, seed=request.seed,
                    eos_token_id=getattr(tokenizer, "eos_token_id", None), vocab_limit=tokenizer.vocab_size,
                    on_step=on_step,
                )
        except ClientGone:
            stopped = "client"
        if stopped != "client" and len(readings) < request.max_new_tokens:
            stopped = "eos"
        done = {
            "event": "done",
            "text": tokenizer.decode([r["id"] for r in readings]),
            "n_tokens": len(readings),
            "seconds": round(time.perf_counter() - started, 3),
            "stopped": stopped,
            "summary": _summary(readings),
        }
        if stopped != "client":
            emit(done)
        return done


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _summary(readings: list[dict]) -> dict:
    def mean(key):
        values = [r[key] for r in readings if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    tones: dict[str, int] = {}
    for r in readings:
        if r.get("tone"):
            tones[r["tone"]] = tones.get(r["tone"], 0) + 1
    return {"r_mean": mean("r"), "u_mean": mean("u"), "ru_mean": mean("ru"), "tones": tones}


def _integer(body: dict, key: str, low: int, high: int | None) -> int:
    value = body.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(400, f"{key!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise RequestError(400, f"{key!r} must be {bound}, got {value}")
    return value


def _number(body: dict, key: str, low: float, high: float) -> float:
    value = body.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(400, f"{key!r} must be a number, got {value!r}")
    if not low <= value <= high:
        raise RequestError(400, f"{key!r} must be in [{low:g}, {high:g}], got {value}")
    return float(value)




def load_live_model(path: str | os.PathLike, device: str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS) -> LiveModel:
    """A `phaselm train-lm`/`pretrain` run directory or a model folder (K-SSM, fusion, GPT, any HF
    causal LM), or a Phase-Mamba run directory from `phaselm train`/`demo` (grafted core)."""
    from ..interventions import phase_sites
    from ..runs import open_run

    run = open_run(path, device)
    model, tokenizer, handle = run.model, run.tokenizer, run.graft
    kind = "grafted" if handle is not None else ("kssm" if phase_sites(model) else "plain")
    return LiveModel(model=model, tokenizer=tokenizer, name=str(path), kind=kind, handle=handle,
                     max_new_tokens=max_new_tokens)
