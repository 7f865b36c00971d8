"""Live token view: ``phaselm serve CHECKPOINT`` streams generated tokens to a local web page.

The server is the standard library's ``ThreadingHTTPServer`` bound to 127.0.0.1 by default;
the page (``resources/live.html``) is plain HTML, CSS and JavaScript with no external
references, so it works offline. Three routes:

``GET /``               the page
``GET /api/info``       the model: kind, oscillator layers, available interventions, tones and
                        their colours, the Goldilocks zone, the request limits
``POST /api/generate``  a JSON request (below) → a stream of JSON lines (``application/x-ndjson``):
                        ``{"event": "start", …}``, one ``{"event": "token", …}`` per generated
                        token (token, id, r, u, ru, tone and, for K-SSM, R per layer), then
                        ``{"event": "done", …}`` — or ``{"event": "error", …}`` if it fails midway

A request::

    {"prompt": "ROMEO:", "max_new_tokens": 64, "temperature": 0.8, "top_k": 0, "seed": 0,
     "intervention": {"kind": "pin", "value": 0.3, "layers": "all"}}

``intervention`` is optional: ``sync``, ``disorder`` and ``pin`` (with ``value`` in [0, 1])
force the phases of a model with oscillator banks (K-SSM; ``phaselm.interventions``),
``core_off`` runs a grafted model's backbone without its Phase Core. A malformed request
(invalid JSON, a missing prompt, an unknown field or intervention, R outside [0, 1], too many
tokens) gets a 4xx answer with ``{"error": "…"}`` and the server keeps serving. One generation
runs at a time (the interventions act on the shared model); a second one meanwhile gets 503.

R per token is what the model computed for the position that produced the token: the mean
over layers of K-SSM's order parameters, or the grafted core's R; U is the normalised entropy
of the distribution the token was drawn from (before temperature), as in measured generation.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import PhaseLMError
from .observables import GOLDILOCKS, TONES, tone_of

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
        from .interventions import phase_sites

        return len(phase_sites(self.model))

    def interventions(self) -> list[dict]:
        """What the page's toggles may ask for on this model."""
        from .interventions import KINDS

        offered = []
        if self.n_sites:
            for name in PHASE_KINDS:
                if name in KINDS:
                    offered.append({"kind": name, "needs_value": KINDS[name].needs_value, "help": KINDS[name].help})
        if self.handle is not None:
            offered.append({"kind": CORE_OFF, "needs_value": False, "help": "run the backbone without its Phase Core"})
        return offered

    def info(self) -> dict:
        from .reporting import TONE_COLOURS

        return {
            "name": self.name,
            "kind": self.kind,
            "model_type": str(getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__)),
            "oscillator_layers": self.n_sites,
            "graft_layer": getattr(self.handle, "layer_path", None),
            "has_r": self.kind in ("kssm", "grafted"),
            "interventions": self.interventions(),
            "tones": [{"name": t.name, "glyph": t.glyph, "low": max(t.low, 0.0), "colour": TONE_COLOURS.get(t.name, "#999")} for t in TONES],
            "goldilocks": {"r": list(GOLDILOCKS.r), "u": list(GOLDILOCKS.u), "ru": list(GOLDILOCKS.ru)},
            "limits": {"max_new_tokens": self.max_new_tokens, "max_prompt_chars": MAX_PROMPT_CHARS, "max_temperature": MAX_TEMPERATURE},
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
            raise RequestError(400, f"too many tokens: max_new_tokens is {n}, this server allows at most {self.max_new_tokens}")
        temperature = _number(body, "temperature", 0.0, MAX_TEMPERATURE)
        top_k = _integer(body, "top_k", 0, None)
        seed = _integer(body, "seed", 0, 2**63 - 1)
        try:
            ids = self.tokenizer.encode(prompt)
        except PhaseLMError as exc:
            raise RequestError(400, f"cannot encode the prompt: {exc}") from None
        if not ids:
            raise RequestError(400, "the prompt encodes to no tokens; pass a non-empty prompt")
        limit = _context_limit(self.model)
        if limit is not None and len(ids) + n > limit:
            raise RequestError(400, f"too many tokens: {len(ids)} prompt + {n} new tokens exceed the model's {limit} positions")
        return GenerationRequest(prompt, ids, n, temperature, top_k, seed, self._parse_intervention(body.get("intervention")))

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
            from .interventions import resolve_layers

            resolve_layers(item.layers, self.n_sites)
        except PhaseLMError as exc:
            raise RequestError(400, str(exc)) from None
        return item.to_dict()

    @staticmethod
    def _intervention(kind: str, value, layers):
        from .interventions import Intervention

        return Intervention(kind, None if value is None else float(value), tuple(layers) if isinstance(layers, list) else layers)

    @contextlib.contextmanager
    def _applied(self, spec: dict | None):
        """The request's intervention for the ``with`` block; yields what was applied."""
        if spec is None:
            yield None
        elif spec["kind"] == CORE_OFF:
            with self.handle.disabled():
                yield {"kind": CORE_OFF}
        else:
            from .interventions import intervene

            with intervene(self.model, self._intervention(spec["kind"], spec["value"], spec["layers"])) as applied:
                yield applied.to_json()[0]

    # ----- generation

    def stream(self, request: GenerationRequest, emit: Callable[[dict], None]) -> dict:
        """Generate token by token, calling ``emit`` with each event; returns the final event.

        The caller holds ``lock``. The one sampling loop (:func:`phaselm.generation.sample_tokens`)
        runs the model's cached ``generate`` and hands each token over as soon as it is chosen,
        with U and the R of every oscillator site (K-SSM's banks, the grafted core).
        """
        from .generation import sample_tokens

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
                    eos_token_id=getattr(tokenizer, "eos_token_id", None), vocab_limit=tokenizer.vocab_size, on_step=on_step,
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


def _context_limit(model: nn.Module) -> int | None:
    """Positions the model can take, where it has a limit (GPT-2's n_positions, K-SSM with a
    position embedding); recurrent models (Mamba, K-SSM without one) have none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(config, "model_type", None) == "kssm":
        return int(config.max_position_embeddings) if getattr(config, "position_embedding", False) else None
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_live_model(path: str | os.PathLike, device: str = "cpu", max_new_tokens: int = MAX_NEW_TOKENS) -> LiveModel:
    """A `phaselm train-lm`/`pretrain` run directory or a model folder (K-SSM, fusion, GPT, any HF
    causal LM), or a Phase-Mamba run directory from `phaselm train`/`demo` (grafted core)."""
    from .interventions import phase_sites
    from .runs import open_run

    run = open_run(path, device)
    model, tokenizer, handle = run.model, run.tokenizer, run.graft
    kind = "grafted" if handle is not None else ("kssm" if phase_sites(model) else "plain")
    return LiveModel(model=model, tokenizer=tokenizer, name=str(path), kind=kind, handle=handle, max_new_tokens=max_new_tokens)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def page_html() -> bytes:
    from importlib import resources

    return resources.files("phaselm.resources").joinpath("live.html").read_bytes()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LiveServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, live: LiveModel | None = None, log: bool = False):
        super().__init__(address, Handler)
        self.live = live
        self.log = log
        self.loopback_only = _is_loopback(address[0])

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up or stalls ends its connection quietly (one line with --log);
        anything else is a bug and keeps the standard traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            if self.log:
                sys.stderr.write(f"{client_address[0]} dropped: {type(exc).__name__}\n")
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


class LiveServer6(LiveServer):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    server: LiveServer
    server_version = "phaselm-live"
    protocol_version = "HTTP/1.0"  # one request per connection; a stream ends when the connection closes
    timeout = READ_TIMEOUT_S  # socket timeout: a lying Content-Length cannot hold a thread forever

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        if self.server.log:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # ----- responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    def _host_ok(self) -> bool:
        """Bound to loopback, answer only requests addressed to a loopback name: a web page
        elsewhere cannot reach the server through DNS rebinding."""
        if not self.server.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if _is_loopback(name):
            return True
        self._error(403, f"Host {host!r} is not served; open the page at {self.server.url}")
        return False

    # ----- routes

    def do_GET(self):  # noqa: N802 - http.server's naming
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, page_html(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.server.live.info())
        elif path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
        elif path == "/api/generate":
            self._error(405, "use POST for /api/generate")
        else:
            self._error(404, f"no such page: {path}")

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_POST(self):  # noqa: N802
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path != "/api/generate":
            self._error(404 if path not in ("/", "/index.html", "/api/info") else 405, f"cannot POST to {path}; POST to /api/generate")
            return
        try:
            body = self._read_json()
            request = self.server.live.parse_request(body)
        except RequestError as exc:
            self._error(exc.status, exc.message)
            return
        live = self.server.live
        # One generation at a time: a request waits for the running one (a stopped stream
        # ends at its next token), and gives up with 503 after BUSY_WAIT_S.
        if not live.lock.acquire(timeout=BUSY_WAIT_S):
            self._error(503, "busy: another generation is running; try again when it has finished")
            return
        try:
            self._stream(live, request)
        finally:
            live.lock.release()

    def _method_not_allowed(self):
        self._error(405, f"method {self.command} is not allowed; GET / or /api/info, POST /api/generate")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815

    def _read_json(self) -> Any:
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise RequestError(415, f"send the request as application/json, not {content_type or 'no content type'}")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "the request needs a Content-Length header")
        try:
            size = int(length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length {length!r}") from None
        if size < 0:
            raise RequestError(400, f"bad Content-Length {length!r}")
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body has {size} bytes; at most {MAX_BODY_BYTES} are allowed")
        raw = self.rfile.read(size)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}") from None

    def _stream(self, live: LiveModel, request: GenerationRequest) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()

        def emit(event: dict) -> None:
            if _peer_closed(self.connection):
                raise ClientGone()
            try:
                self.wfile.write((json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8"))
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                raise ClientGone() from None

        try:
            live.stream(request, emit)
        except ClientGone:
            pass
        except Exception as exc:  # the status line is sent; report the failure in the stream
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            with contextlib.suppress(ClientGone):
                emit({"event": "error", "error": f"generation failed: {message}"})
            if not isinstance(exc, PhaseLMError):
                sys.stderr.write(f"phaselm serve: generation failed: {type(exc).__name__}: {message}\n")


def _peer_closed(connection: socket.socket) -> bool:
    """True once the client has closed its end (readable with nothing to read): the browser's
    Stop button, a closed tab. Writes into a closed socket can succeed for a while, so a
    stream checks this before every token instead of waiting for a write to fail."""
    import select

    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, live: LiveModel | None = None, log: bool = False) -> LiveServer:
    """Bind (before the slow model load, so a busy port fails at once); ``port=0`` picks a free one."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise PhaseLMError(f"--port must be in 0..65535, got {port}")
    cls = LiveServer6 if ":" in host.strip("[]") else LiveServer
    try:
        return cls((host.strip("[]"), port), live, log)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PhaseLMError(f"port {port} is in use; pass --port") from None
        if exc.errno == errno.EACCES:
            raise PhaseLMError(f"no permission to listen on port {port}; pass --port with a number above 1023") from None
        reason = exc.strerror or str(exc)
        raise PhaseLMError(f"cannot listen on {host}:{port} ({reason}); pass --host 127.0.0.1 or another --port") from None


def start_in_thread(live: LiveModel, host: str = DEFAULT_HOST, port: int = 0) -> tuple[LiveServer, threading.Thread]:
    """Serve ``live`` from a background thread (tests, notebooks); stop with ``server.shutdown()``."""
    server = make_server(host, port, live)
    thread = threading.Thread(target=server.serve_forever, name="phaselm-serve", daemon=True)
    thread.start()
    return server, thread


def serve(
    checkpoint: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    log: bool = False,
    announce: Callable[[str], None] = print,
) -> None:
    """``phaselm serve``: bind, load the model, serve until Ctrl-C."""
    if max_new_tokens < 1:
        raise PhaseLMError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not Path(checkpoint).exists():
        raise PhaseLMError(f"{checkpoint} does not exist; pass a run directory (train-lm, train, demo) or a model folder")
    server = make_server(host, port, None, log)
    try:
        server.live = load_live_model(checkpoint, max_new_tokens=max_new_tokens)
        live = server.live
        if live.kind == "grafted":
            what = f"Phase Core at {live.handle.layer_path}"
        elif live.kind == "kssm":
            what = f"{live.n_sites} oscillator layers"
        else:
            what = "no oscillators: U only"
        announce(f"serving {checkpoint} ({live.kind}, {what}) at {server.url} — Ctrl-C stops")
        if not server.loopback_only:
            announce(f"warning: listening on {host}, reachable from other machines; the default --host 127.0.0.1 is local only")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            announce("stopped")
    finally:
        server.server_close()
