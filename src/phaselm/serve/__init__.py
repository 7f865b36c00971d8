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

from .live import (
    CORE_OFF,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULTS,
    MAX_BODY_BYTES,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_TEMPERATURE,
    PHASE_KINDS,
    REQUEST_FIELDS,
    ClientGone,
    GenerationRequest,
    LiveModel,
    RequestError,
    load_live_model,
)
from .server import Handler, LiveServer, make_server, page_html, serve, start_in_thread

__all__ = [
    "CORE_OFF", "DEFAULTS", "DEFAULT_HOST", "DEFAULT_PORT", "MAX_BODY_BYTES", "MAX_NEW_TOKENS", "MAX_PROMPT_CHARS",
    "MAX_TEMPERATURE",
    "PHASE_KINDS", "REQUEST_FIELDS", "ClientGone", "GenerationRequest", "Handler", "LiveModel", "LiveServer",
    "RequestError", "load_live_model", "make_server", "page_html", "serve", "start_in_thread",
]
