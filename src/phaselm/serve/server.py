"""The live token view's HTTP server: the page, the routes and ``phaselm serve``."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import PhaseLMError
from .live import (
    BUSY_WAIT_S,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    MAX_NEW_TOKENS,
    READ_TIMEOUT_S,
    ClientGone,
    GenerationRequest,
    LiveModel,
    RequestError,
    load_live_model,
)

# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def page_html() -> bytes:
    """The live view's page (resources/live.html), as bytes."""
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
    """The live view's HTTP server (IPv4): one thread per request, serving one LiveModel."""
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
        """The address to open in a browser, e.g. ``http://127.0.0.1:8000/``."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


class LiveServer6(LiveServer):
    """LiveServer on an IPv6 address."""
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    """Serves the page, /api/info and the streamed /api/generate; other paths get a JSON error."""
    server: LiveServer
    server_version = "phaselm-live"
    protocol_version = "HTTP/1.0"  # one request per connection; a stream ends when the connection closes
    timeout = READ_TIMEOUT_S  # socket timeout: a lying Content-Length cannot hold a thread forever

    def log_message(self, format, *args):
        """Log a request to stderr only when the server was started with logging on."""
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

    def do_GET(self):
        """The page or /api/info."""
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

    def do_HEAD(self):
        """As GET (the body is sent too; HTTP/1.0 clients close after the headers)."""
        self.do_GET()

    def do_POST(self):
        """/api/generate: generate and stream one event per token."""
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path != "/api/generate":
            self._error(404 if path not in ("/", "/index.html", "/api/info") else 405,
                        f"cannot POST to {path}; POST to /api/generate")
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

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

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


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, live: LiveModel | None = None,
                log: bool = False) -> LiveServer:
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
            raise PhaseLMError(f"no permission to listen on port {port}; pass --port with a number above "
                               "1023") from None
        reason = exc.strerror or str(exc)
        raise PhaseLMError(f"cannot listen on {host}:{port} ({reason}); pass --host 127.0.0.1 or another "
                           "--port") from None


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
        raise PhaseLMError(f"{checkpoint} does not exist; pass a run directory (train-lm, train, demo) or a model "
                           "folder")
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
            announce(f"warning: listening on {host}, reachable from other machines; the default --host 127.0.0.1 is "
                     "local only")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            announce("stopped")
    finally:
        server.server_close()
