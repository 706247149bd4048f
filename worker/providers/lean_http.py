"""A lean HTTP/1.1 client for the hot path of the realtime lane: JSON ``POST`` to an
OpenAI-compatible ``/chat/completions`` over pooled keep-alive connections.

Why not the SDK here: measured against the emulator (``tests/bench/bench_realtime.py``),
``AsyncOpenAI.chat.completions.create`` costs about 1.5 ms of CPU per call (request
options and ``TypedDict`` transforms, httpx request/response objects, httpcore's pool scan,
anyio streams, pydantic models), a bare ``httpx.AsyncClient`` still about 0.8 ms - while the
drain's own work per job is about 0.15 ms. With one event loop per process that caps a
worker at ~600 calls/s whatever the provider's speed; this client spends ~0.05 ms per call.

It does only what that call needs and nothing an SDK user could be relying on silently:

* ``http``/``https`` (TLS verified against ``SSL_CERT_FILE``/``SSL_CERT_DIR`` or certifi,
  as httpx does), HTTP/1.1 keep-alive, one request per connection at a time;
* answers with ``Content-Length``, ``Transfer-Encoding: chunked`` or read-to-close, and
  ``Content-Encoding`` gzip/deflate; interim 1xx answers are skipped;
* a reused idle connection the server closed meanwhile (nothing of the answer arrived) is
  retried once on a fresh connection; every other failure is raised as
  :class:`TransportError` (a ``ConnectionError``: classified as retryable "connection",
  like the SDK's ``APIConnectionError``). Timeouts are the caller's (``asyncio.wait_for``);
  a cancelled request's connection is dropped, never reused;
* no proxies, redirects, HTTP/2 or cookies: the caller uses the SDK when a proxy is
  configured (see :mod:`worker.providers.compat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Idle connections older than this are closed instead of reused (httpx uses 5 s; servers
#: commonly keep idle connections 60 s or more).
KEEPALIVE_SECONDS = 15.0
#: Most idle connections kept per client (the drain's semaphores bound the busy ones).
MAX_IDLE = 1024
#: Largest answer accepted (a chat completion is a few kB).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Largest status line + headers (StreamReader's buffer limit).
MAX_HEADER_BYTES = 64 * 1024

USER_AGENT = "pg-ai-worker"


class TransportError(ConnectionError):
    """The connection failed or the server's answer was not valid HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < KEEPALIVE_SECONDS
            and not self.reader.at_eof()
            and self.reader.exception() is None
            and not self.writer.is_closing()
        )

    def abort(self) -> None:
        with contextlib.suppress(RuntimeError):  # its event loop is already closed
            self.writer.transport.abort()


def _ssl_context() -> ssl.SSLContext:
    # The CA variables as httpx (trust_env) reads them, from the process environment, so
    # this client and the SDKs trust the same CAs (worker.config.PLATFORM_VARIABLES).
    cafile = os.environ.get("SSL_CERT_FILE")
    capath = os.environ.get("SSL_CERT_DIR")
    if not cafile and not capath:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


def _check_header(name: str, value: str) -> None:
    if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
        raise ValueError(f"invalid HTTP header {name!r}")


class LeanClient:
    """Keep-alive connections to one origin; ``post_json`` sends one request on one of them.

    ``base_url`` may carry a path prefix (``https://openrouter.ai/api/v1``); request paths
    are appended to it."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"unsupported base URL {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        all_headers = {
            "Host": host if default_port else f"{host}:{self.port}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
            **headers,
        }
        for k, v in all_headers.items():
            _check_header(k, v)
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
        self._ssl: ssl.SSLContext | None = _ssl_context() if self.tls else None
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connects = 0  # connections opened (tests, diagnostics)

    async def post_json(self, path: str, payload: Any) -> Response:
        body = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        data = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._headers}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        conn = self._take()
        if conn is not None:
            try:
                return await self._exchange(conn, data, reused=True)
            except _StaleConnection:
                pass  # the server closed it while idle: nothing was received, send again
        return await self._exchange(await self._connect(), data, reused=False)

    async def aclose(self) -> None:
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
        self._busy.clear()

    # ------------------------------------------------------------------ connections

    def _take(self) -> _Conn | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that opened them (a process that runs one
            # asyncio.run after another, as tests do): forget those of an earlier loop.
            self._idle.clear()
            self._busy.clear()
            self._loop = loop
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used first
            if conn.usable(now):
                return conn
            conn.abort()
        return None

    def _put(self, conn: _Conn) -> None:
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle
        # The oldest idle connections sit at the bottom; drop the expired ones.
        while idle and not idle[0].usable(now):
            idle.pop(0).abort()
        if len(idle) >= MAX_IDLE:
            conn.abort()
        else:
            idle.append(conn)

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self.tls else None,
                limit=MAX_HEADER_BYTES,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise TransportError(
                f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from exc
        self.connects += 1
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, data: bytes, *, reused: bool) -> Response:
        self._busy.add(conn)
        keep = False
        try:
            conn.writer.write(data)
            resp, keep = await _read_response(conn.reader, reused)
            return resp
        except TransportError:
            raise
        except OSError as exc:  # reset, broken pipe, TLS failure mid-answer
            raise TransportError(f"connection failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._busy.discard(conn)
            if keep:
                self._put(conn)
            else:
                conn.abort()  # failed, cancelled, or the server said close


class _StaleConnection(Exception):
    """A reused connection ended before any byte of the answer."""


async def _read_response(reader: asyncio.StreamReader, reused: bool) -> tuple[Response, bool]:
    """Read one answer: (response, connection reusable)."""
    first = True
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if first and reused and not exc.partial:
                    raise _StaleConnection from exc
                raise TransportError("server closed the connection without an answer") from exc
            except ConnectionError as exc:
                if first and reused:
                    raise _StaleConnection from exc
                raise
            first = False
            version, status, headers = _parse_head(head)
            if 100 <= status < 200 and status != 101:
                continue  # interim answer (100 Continue, 103 Early Hints)
            break
        te = headers.get("transfer-encoding")
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise TransportError(f"unsupported transfer-encoding {te!r}")
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError as exc:
                raise TransportError("invalid content-length") from exc
            if n < 0 or n > MAX_BODY_BYTES:
                raise TransportError(f"answer too large ({n} bytes)")
            body = await reader.readexactly(n)
        elif status in (204, 304):
            body = b""
        else:  # the body runs until the server closes
            body = await reader.read(MAX_BODY_BYTES + 1)
            while len(body) <= MAX_BODY_BYTES:
                more = await reader.read(MAX_BODY_BYTES + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > MAX_BODY_BYTES:
                raise TransportError("answer too large")
            keep = False
    except asyncio.IncompleteReadError as exc:
        raise TransportError("server closed the connection mid-answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise TransportError("answer headers too large") from exc
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        body = _decode(body, encoding)
    return Response(status, headers, body), keep


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise TransportError(f"invalid header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        # Repeated headers are joined (RFC 9110 5.3); only a few matter here.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return parts[0], int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise TransportError(f"invalid chunk size {line[:40]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields, ignored
            return b"".join(chunks)
        total += size
        if size < 0 or total > MAX_BODY_BYTES:
            raise TransportError("answer too large")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise TransportError("chunk not terminated by CRLF")


def _decode(body: bytes, encoding: str) -> bytes:
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some send
    except zlib.error as exc:
        raise TransportError(f"invalid {encoding} body: {exc}") from exc
    raise TransportError(f"unsupported content-encoding {encoding!r}")
