"""The HTTP server: HTTP/1.1 keep-alive on a standard-library ``selectors`` event loop, with
its own lean request parsing. Quick requests (realtime calls, health/config) are answered on
the loop; everything that may take a while gets a thread of its own (see :class:`_Server`).

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
``latency_ms`` (realtime calls only) → provider handler → ``lost_response_rate`` (batch
creates and file uploads only: the side effect stays, the answer becomes a 500 or a dropped
connection).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import selectors
import socket
import threading
import time
import traceback
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import urlsplit

from worker.emulator.answer_faults import is_answer_fault
from worker.emulator.compat_api import CompatApi
from worker.emulator.config import EmulatorConfig
from worker.emulator.faults import (
    bad_request_reply,
    echo_key,
    fault_reply,
    missing_key_reply,
)
from worker.emulator.gemini_api import GeminiApi
from worker.emulator.limits import response_lost
from worker.emulator.mistral_api import MistralApi
from worker.emulator.openai_api import OpenAIApi
from worker.emulator.store import Store
from worker.emulator.wire import BodyReader, Headers, Request, Response, Router, parse_query

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

    def dispatch(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: BodyReader,
        own_host: str,
        config: EmulatorConfig | None = None,
    ) -> Response | None:
        """Answer one parsed request; ``None`` means "drop the connection" (down).
        ``config``: the config to apply (default: the current one)."""
        split = urlsplit(target)
        path = split.path
        if path.startswith("/_emulator/"):
            return self.control(method, path, body)
        segment, _, rest = path.lstrip("/").partition("/")
        if segment not in self.routers:
            return Response.json({"error": f"unknown provider prefix /{segment}"}, 404)
        req = Request(
            method=method,
            path="/" + rest,
            query=parse_query(split.query),
            headers=headers,
            body=body,
            provider=segment,
            host=headers.get("Host") or own_host,
        )
        return self.provider(req, config)

    def provider(self, req: Request, config: EmulatorConfig | None = None) -> Response | None:
        """Handle a provider request; ``None`` means "drop the connection" (down)."""
        store = self.store
        cfg = config or store.config
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
            if is_answer_fault(req.provider, rule.kind):
                req.answer_fault = rule.kind  # the handler answers, then spoils the answer
            else:
                reply = fault_reply(req.provider, rule.kind, rule.retry_after)
                if rule.echo_key:
                    reply = echo_key(reply, _api_key(req))
                return Response.error(reply)
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
            resp = handler(req)
        except (ValueError, KeyError, TypeError) as exc:
            # Malformed client input: the provider's 400 envelope, never a crash.
            return Response.error(bad_request_reply(req.provider, f"Invalid request: {exc}"))
        if cfg.lost_response_rate > 0 and resp.status == 200 and _creates(req, resp):
            # The batch or file now exists (and will be billed); its answer is lost.
            how = response_lost(store, f"{req.provider} {req.method} {req.path}")
            if how is not None:
                store.count(req.provider, "responses_lost")
                if how == "drop":
                    return None
                return Response.error(fault_reply(req.provider, "server"))
        return resp


_CREATES = re.compile(
    r"/v1/files|/v1/batches|/v1/batch/jobs|(?:/v1(?:beta)?)?/models/[^/:]+:batchGenerateContent"
)


def _creates(req: Request, resp: Response) -> bool:
    """Whether ``req`` created a batch or a file (the calls ``lost_response_rate`` hits)."""
    if req.method != "POST":
        return False
    if req.provider == "gemini" and req.path.startswith("/upload/"):
        # the resumable upload's last chunk is what creates the file
        return (resp.headers.get("X-Goog-Upload-Status") or "") == "final"
    return _CREATES.fullmatch(req.path) is not None


def _api_key(req: Request) -> str:
    auth = req.headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (req.headers.get("x-goog-api-key") or req.q("key") or "").strip()


# --------------------------------------------------------------------------- HTTP/1.1

_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH"})
_MAX_HEAD = 1 << 16  # request line + headers
_MAX_HEADERS = 100
_INLINE_REQUEST_BODY = 1 << 20  # larger (or chunked) request bodies are streamed by a thread
_INLINE_RESPONSE_BODY = 1 << 16  # bodies up to this size go out in the same send as headers
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# Requests answered on the event loop itself: quick, and never waiting for anything.
_INLINE_PATH = re.compile(
    r"/(?:openai|mistral|openrouter|perplexity|deepseek|ollama)/v1/(?:chat/completions|embeddings)"
    r"|/gemini/v1(?:beta)?/models/[^/:]+:(?:generateContent|embedContent|batchEmbedContents)"
    r"|/_emulator/(?:health|config)"
)
_HEAD_END = re.compile(rb"\r?\n\r?\n")

_request_ids = itertools.count(1)
_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(8)


def _request_id() -> str:
    """A unique request id (process-random prefix + counter: no uuid4 per request)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):016x}"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    t = int(time.time())
    cached = _date_cache
    if cached[0] != t:
        cached = _date_cache = (t, formatdate(t, usegmt=True))
    return cached[1]


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parse_head(head: bytes) -> tuple[str, str, str, Headers]:
    """Request line and headers (without the blank line that ends them)."""
    lines = head.decode("latin-1").split("\n")
    words = lines[0].split()
    if len(words) != 3:
        raise _BadRequest(400)
    method, target, version = words
    if not version.startswith("HTTP/1."):
        raise _BadRequest(505)
    if len(lines) > _MAX_HEADERS + 1:
        raise _BadRequest(431)
    headers = Headers()
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:  # obsolete line folding continues the last value
            headers.replace(last, f"{headers.get(last) or ''} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise _BadRequest(400)
        headers.add(name, value.strip())
        last = name
    return method, target, version, headers


def _keep_alive(version: str, headers: Headers) -> bool:
    conn = (headers.get("connection") or "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in conn
    return "close" not in conn


def _response_head(resp: Response, length: int, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, '')}",
        "server: provider-emulator",
        f"date: {_http_date()}",
    ]
    headers = {k.lower(): v for k, v in resp.headers.items()}
    headers.setdefault("content-type", resp.content_type)
    headers.setdefault("x-request-id", _request_id())
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    lines.append(f"content-length: {length}")
    if close:
        lines.append("connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _error_response(status: int) -> Response:
    return Response.json({"error": _REASONS.get(status, "Bad Request")}, status)


class _Head(NamedTuple):
    """A parsed request line and headers."""

    method: str
    target: str
    headers: Headers
    keep: bool  # keep-alive after the answer
    start: int  # where the body starts in the connection's buffer
    length: int  # Content-Length (0 when chunked)
    quick: bool  # may be answered on the event loop (config permitting)


class _Conn:
    """One client connection."""

    __slots__ = ("buf", "close_after", "head", "out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()  # received, not yet handled
        self.out = bytearray()  # answered, not yet sent
        self.close_after = False  # close once ``out`` is sent
        self.head: _Head | None = None  # parsed head of a request whose body is incomplete


class _SocketReader:
    """Blocking reads for a request handled by a thread: first the bytes the event loop
    already received, then the socket. Never reads past what is asked for, except for
    ``readline``, whose surplus is kept and handed back (:meth:`leftover`)."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self._sock = sock
        self._buf = bytearray(prefix)

    def read(self, n: int = -1, /) -> bytes:
        if self._buf:
            take = len(self._buf) if n < 0 else min(n, len(self._buf))
            data = bytes(self._buf[:take])
            del self._buf[:take]
            return data
        return self._sock.recv(n if n >= 0 else 1 << 16)

    def readline(self, limit: int = -1, /) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 or (0 <= limit <= len(self._buf)):
                take = end + 1 if end >= 0 else limit
                if 0 <= limit < take:
                    take = limit
                data = bytes(self._buf[:take])
                del self._buf[:take]
                return data
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                data = bytes(self._buf)
                self._buf.clear()
                return data
            self._buf += chunk

    def leftover(self) -> bytes:
        return bytes(self._buf)


class _Server:
    """A ``selectors`` event loop for HTTP/1.1 keep-alive connections (stdlib only).

    Quick requests - realtime chat/embeddings and the health/config endpoints, when no
    latency or hang is configured - are parsed and answered on the loop itself: no thread
    switch, no GIL hand-over, one ``recv`` and one ``send`` per call. Everything else (file
    uploads and downloads, batch calls that may generate a large result file, chunked or
    large bodies, configured latency or hangs) is handed with its connection to a thread of
    its own, which reads the body as a stream and writes the answer in blocking mode, then
    gives the connection back to the loop; so a slow request only ever delays its own
    client. Same interface as ``socketserver``'s servers: ``serve_forever``, ``shutdown``,
    ``server_close``, ``server_address``."""

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(1024)  # bursts of hundreds of concurrent connections
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._own_host = f"{self.server_address[0]}:{self.server_address[1]}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self._returned: deque[_Conn] = deque()  # connections threads are done with
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()

    # ------------------------------------------------------------------ loop

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            while not self._stop:
                for key, mask in self._sel.select(poll_interval):
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake_r:
                        self._take_back()
                    else:
                        conn: _Conn = key.data
                        try:
                            if mask & selectors.EVENT_WRITE:
                                self._flush(conn)
                            if mask & selectors.EVENT_READ and conn in self._conns:
                                self._receive(conn)
                        except Exception:
                            # A bug in a handler costs its connection, never the server.
                            traceback.print_exc()
                            self._close(conn)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            self._close_socket(conn.sock)
        self._sel.close()
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pipe is full: the loop is awake anyway

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. too many open files: try again on the next event
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            with self._lock:
                self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._returned:
            conn = self._returned.popleft()
            if conn not in self._conns:
                continue
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            try:
                self._handle_buffered(conn)
            except Exception:
                traceback.print_exc()
                self._close(conn)

    def _receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if conn.out:  # the client is done sending; let it have the rest of its answers
                conn.close_after = True
                self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            else:
                self._close(conn)
            return
        conn.buf += data
        self._handle_buffered(conn)

    def _handle_buffered(self, conn: _Conn) -> None:
        """Answer every complete request in ``conn.buf`` (or hand the connection over)."""
        while conn in self._conns and not conn.close_after:
            head = conn.head or self._next_head(conn)
            if head is None:
                return  # more to come, or the connection was answered with an error
            buf = conn.buf
            end = head.start + head.length
            if head.quick and len(buf) < end:
                conn.head = head  # the rest of the body is still on its way
                return
            conn.head = None
            config = self.app.store.config
            if not head.quick or config.latency_ms > 0 or config.hang_seconds > 0:
                rest = bytes(buf[head.start :])
                buf.clear()
                self._hand_over(conn, head, rest)
                return
            body = bytes(buf[head.start : end])
            del buf[:end]
            reader = BodyReader(_BytesReader(body), head.headers)
            # With the config just checked: never a sleep on the loop.
            resp = self.app.dispatch(
                head.method, head.target, head.headers, reader, self._own_host, config
            )
            if resp is None:
                self._close(conn)
                return
            self._reply(conn, resp, close=not head.keep)

    def _next_head(self, conn: _Conn) -> _Head | None:
        """The next request's head from ``conn.buf``; None if incomplete or invalid (then
        the connection has been answered and is closing)."""
        buf = conn.buf
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # stray blank lines between requests
            del buf[: 2 if buf[:1] == b"\r" else 1]
        m = _HEAD_END.search(buf, 0, _MAX_HEAD + 4)
        if m is None:
            if len(buf) > _MAX_HEAD:
                self._reply(conn, _error_response(431), close=True)
            return None
        try:
            method, target, version, headers = _parse_head(bytes(buf[: m.start()]))
            if method not in _METHODS:
                raise _BadRequest(501)
            chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
            length = 0 if chunked else int(headers.get("content-length") or 0)
            if length < 0:
                raise _BadRequest(400)
        except ValueError:
            self._reply(conn, _error_response(400), close=True)
            return None
        except _BadRequest as exc:
            self._reply(conn, _error_response(exc.status), close=True)
            return None
        quick = (
            not chunked
            and length <= _INLINE_REQUEST_BODY
            and not headers.get("expect")
            and _INLINE_PATH.fullmatch(target.partition("?")[0]) is not None
        )
        keep = _keep_alive(version, headers)
        return _Head(method, target, headers, keep, m.end(), length, quick)

    # ------------------------------------------------------------------ writing

    def _reply(self, conn: _Conn, resp: Response, close: bool) -> None:
        if resp.file_path is not None:  # not expected inline; stay correct anyway
            with open(resp.file_path, "rb") as f:
                resp = Response(resp.status, f.read(), resp.headers, None, resp.content_type)
        self._send(conn, _response_head(resp, len(resp.body), close) + resp.body)
        if close:
            conn.close_after = True
            if not conn.out:
                self._close(conn)

    def _send(self, conn: _Conn, data: bytes) -> None:
        if not conn.out:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        conn.out += data

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            if conn.close_after:
                self._close(conn)
            else:
                self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn, registered: bool = True) -> None:
        """Forget and close a connection (``registered``: it is in the selector; a thread
        that owns a connection never touches the selector)."""
        with self._lock:
            if conn not in self._conns:
                return
            self._conns.discard(conn)
        if registered:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self._close_socket(conn.sock)

    @staticmethod
    def _close_socket(sock: socket.socket) -> None:
        try:
            sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------------ threads

    def _hand_over(self, conn: _Conn, head: _Head, rest: bytes) -> None:
        self._sel.unregister(conn.sock)
        threading.Thread(
            target=self._run_in_thread,
            args=(conn, head, rest),
            daemon=True,
            name="emulator-request",
        ).start()

    def _run_in_thread(self, conn: _Conn, head: _Head, rest: bytes) -> None:
        method, target, headers, keep = head.method, head.target, head.headers, head.keep
        sock = conn.sock
        try:
            sock.setblocking(True)
            if conn.out:  # an earlier answer still being sent
                sock.sendall(conn.out)
                conn.out.clear()
            if (headers.get("expect") or "").lower() == "100-continue":
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            reader = _SocketReader(sock, rest)
            body = BodyReader(reader, headers)
            resp = self.app.dispatch(method, target, headers, body, self._own_host)
            if resp is None:
                # Simulated outage: close without a response (clients see a connection error).
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._close(conn, registered=False)
                return
            # A handler that did not read the body must not leave it in the keep-alive stream.
            if not body.done:
                try:
                    body.drain()
                except (OSError, ValueError):
                    keep = False
            self._write_blocking(sock, resp, close=not keep)
            if not keep:
                self._close(conn, registered=False)
                return
            conn.buf = bytearray(reader.leftover())
            sock.setblocking(False)
        except Exception as exc:
            self._close(conn, registered=False)
            # The client went away (a worker cancelled its call, the socket was closed by
            # reset/stop while a latency sleep ran): nothing to answer, not a crash.
            if not isinstance(exc, OSError):
                raise
            return
        self._returned.append(conn)
        self._wake()

    @staticmethod
    def _write_blocking(sock: socket.socket, resp: Response, close: bool) -> None:
        if resp.file_path is None:
            head = _response_head(resp, len(resp.body), close)
            if len(resp.body) <= _INLINE_RESPONSE_BODY:
                sock.sendall(head + resp.body)
            else:
                sock.sendall(head)
                sock.sendall(resp.body)
            return
        with open(resp.file_path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            sock.sendall(_response_head(resp, size, close))
            if size:
                sock.sendfile(f)


class _BytesReader:
    """A request body already in memory, read like a socket file."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out

    def readline(self, limit: int = -1, /) -> bytes:
        end = self._data.find(b"\n", self._pos)
        end = len(self._data) if end < 0 else end + 1
        if limit >= 0:
            end = min(end, self._pos + limit)
        out = self._data[self._pos : end]
        self._pos = end
        return out


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
