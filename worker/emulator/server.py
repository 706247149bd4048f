"""The HTTP server: a standard-library ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive.

Routing is by the first path segment: ``/openai``, ``/gemini``, ``/mistral`` and the
OpenAI-compatible aliases (``/openrouter``, ``/perplexity``, ``/deepseek``, ``/ollama``) go
to the provider modules; ``/_emulator/*`` are control endpoints that keep working while the
emulated providers are "down":

  GET  /_emulator/stats    per-provider counters, usage and custom_id outcomes
  GET  /_emulator/config   current :class:`EmulatorConfig` as JSON
  POST /_emulator/config   JSON object of fields to change (same as ``Emulator.configure``)
  POST /_emulator/reset    forget everything, restore the start-up config
  GET  /_emulator/health   ``{"ok": true}``

Provider request pipeline: ``down`` → ``hang_seconds`` → API-key check → HTTP fault rules →
``latency_ms`` (realtime calls only) → provider handler.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from worker.emulator.compat_api import CompatApi
from worker.emulator.faults import bad_request_reply, fault_reply, missing_key_reply
from worker.emulator.gemini_api import GeminiApi
from worker.emulator.mistral_api import MistralApi
from worker.emulator.openai_api import OpenAIApi
from worker.emulator.store import Store
from worker.emulator.wire import BodyReader, Request, Response, Router, parse_query

_REALTIME = re.compile(
    r"(/chat/completions|/embeddings|:generateContent|:embedContent|:batchEmbedContents)$"
)
_COMPAT = ("openrouter", "perplexity", "deepseek", "ollama")


class App:
    """Dispatches parsed requests to the control endpoints or a provider router."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.routers: dict[str, Router] = {
            "openai": OpenAIApi(store).router,
            "gemini": GeminiApi(store).router,
            "mistral": MistralApi(store).router,
        }
        for name in _COMPAT:
            self.routers[name] = CompatApi(store, name).router

    # ------------------------------------------------------------------ control

    def control(self, method: str, path: str, body: BodyReader) -> Response:
        if path == "/_emulator/stats" and method == "GET":
            return Response.json(self.store.snapshot_stats())
        if path == "/_emulator/config" and method == "GET":
            return Response.json(self.store.config.to_dict())
        if path == "/_emulator/config" and method == "POST":
            raw = body.read_all()
            try:
                changes = json.loads(raw) if raw.strip() else {}
                if not isinstance(changes, dict):
                    raise ValueError("config body must be a JSON object")
                cfg = self.store.configure(**changes)
            except (ValueError, TypeError) as exc:
                return Response.json({"error": str(exc)}, 400)
            return Response.json(cfg.to_dict())
        if path == "/_emulator/reset" and method == "POST":
            self.store.reset()
            return Response.json({"ok": True})
        if path == "/_emulator/health":
            return Response.json({"ok": True})
        return Response.json({"error": f"no control endpoint {method} {path}"}, 404)

    # ------------------------------------------------------------------ providers

    def provider(self, req: Request) -> Response | None:
        """Handle a provider request; ``None`` means "drop the connection" (down)."""
        store = self.store
        cfg = store.config
        if req.provider in store.stats:
            store.count(req.provider, "requests")
        if cfg.down:
            return None
        if cfg.hang_seconds > 0:
            time.sleep(cfg.hang_seconds)
        # The Gemini resumable-upload URL carries its own session id and no api key.
        is_chunk = req.provider == "gemini" and "upload_id" in req.query
        if not is_chunk and not _api_key(req):
            return Response.error(missing_key_reply(req.provider))
        rule = store.faults.check(cfg, req.provider, req.path)
        if rule is not None:
            store.count(req.provider, "faults_injected")
            return Response.error(fault_reply(req.provider, rule.kind, rule.retry_after))
        if cfg.latency_ms > 0 and _REALTIME.search(req.path):
            time.sleep(cfg.latency_ms / 1000.0)
        router = self.routers[req.provider]
        found = router.match(req.method, req.path)
        if found is None:
            return Response.error(
                bad_request_reply(req.provider, f"Unknown route {req.method} {req.path}")
            ).with_status(404)
        handler, params = found
        req.params = params
        try:
            return handler(req)
        except (ValueError, KeyError, TypeError) as exc:
            # Malformed client input: the provider's 400 envelope, never a crash.
            return Response.error(bad_request_reply(req.provider, f"Invalid request: {exc}"))


def _api_key(req: Request) -> str:
    auth = req.headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (req.headers.get("x-goog-api-key") or req.q("key") or "").strip()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "provider-emulator"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging (thousands of requests per second)."""

    def _handle(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        body = BodyReader(self.rfile, self.headers)
        app = self.server.app
        if path.startswith("/_emulator/"):
            resp: Response | None = app.control(self.command, path, body)
        else:
            segment, _, rest = path.lstrip("/").partition("/")
            if segment not in app.routers:
                resp = Response.json({"error": f"unknown provider prefix /{segment}"}, 404)
            else:
                req = Request(
                    method=self.command,
                    path="/" + rest,
                    query=parse_query(split.query),
                    headers=self.headers,
                    body=body,
                    provider=segment,
                    host=self.headers.get("Host") or self._own_host(),
                )
                resp = app.provider(req)
        if resp is None:
            # Simulated outage: close without a response (clients see a connection error).
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        # A handler that did not read the body must not leave it in the keep-alive stream.
        if not body.done:
            try:
                body.drain()
            except (OSError, ValueError):
                self.close_connection = True
        self._send(resp)

    def _own_host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        headers = {k.lower(): v for k, v in resp.headers.items()}
        headers.setdefault("content-type", resp.content_type)
        headers.setdefault("x-request-id", "req_" + uuid.uuid4().hex)
        for k, v in headers.items():
            self.send_header(k, v)
        if resp.file_path is not None:
            with open(resp.file_path, "rb") as f:
                size = f.seek(0, 2)
                f.seek(0)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                if size:
                    self.connection.sendfile(f)
            return
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # bursts of hundreds of concurrent connections

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (timeouts, killed workers, chaos tests) is routine for a
        # test double; anything else is still printed.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class HTTPServerThread:
    """Runs the server in a daemon thread."""

    def __init__(self, host: str, port: int, app: App) -> None:
        self.server = _Server((host, port), app)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name="emulator-http",
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
