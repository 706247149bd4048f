"""The HTTP endpoints of ``python -m worker run`` (``METRICS_PORT``) and the readiness checks.

``serve(port)`` answers, over plain HTTP/1.1 (asyncio streams, one request per connection;
prometheus-client's own server is a thread per request and cannot await the checks below):

- ``GET /metrics``  Prometheus text format, rendered by prometheus-client (:mod:`worker.ops.metrics`)
- ``GET /health``   liveness: 200 while the process's event loop answers
- ``GET /ready``    readiness: 200 when the database answers, LISTEN/NOTIFY round-trips and a
                    worker heartbeat is fresh; 503 with the failing check otherwise

Readiness checks: database reachable, LISTEN alive, worker heartbeat fresh.

- *database*: ``SELECT 1`` on a fresh connection within a timeout.
- *listen*: this process keeps one connection LISTENing on ``ai_worker_health``; the check
  sends a NOTIFY with a random token from another connection and waits for it to come back.
  That proves the notification path the workers' wake-ups use (server, network, this
  process's event loop) end to end, not just that a socket is open.
- *heartbeat*: at least one Procrastinate worker heartbeat younger than ``fresh_seconds``
  (the workers beat every 5 s; stalled after 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from worker.database import aconnect
from worker.ops import metrics
from worker.queries import q

log = logging.getLogger(__name__)

CHANNEL = "ai_worker_health"
HEARTBEAT_FRESH_SECONDS = 30.0


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class Readiness:
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ok else "not ready",
            "checks": {k: {"ok": c.ok, "detail": c.detail} for k, c in self.checks.items()},
        }


class ListenProbe:
    """A LISTEN connection kept open (and reopened) in the background."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self.listening = asyncio.Event()
        self.last_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ai-worker-listen-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.listening.clear()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await aconnect(self._url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self.listening.set()
                    self.last_error = None
                    backoff = 0.5
                    while True:
                        # The timeout bounds how long a dead server goes unnoticed.
                        async for n in conn.notifies(timeout=15.0):
                            fut = self._waiters.pop(n.payload, None)
                            if fut is not None and not fut.done():
                                fut.set_result(time.monotonic())
                        await conn.execute(q("ping"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("health LISTEN connection lost (%s); reconnecting", self.last_error)
            self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def roundtrip(self, conn: psycopg.AsyncConnection[Any], timeout: float = 2.0) -> Check:
        """NOTIFY a fresh token on ``conn`` and wait for the listener to receive it."""
        if not self.listening.is_set():
            return Check(False, f"not listening ({self.last_error or 'connecting'})")
        token = secrets.token_hex(8)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[token] = fut
        started = time.monotonic()
        try:
            await conn.execute(q("notify"), (CHANNEL, token))
            got = await asyncio.wait_for(fut, timeout)
            return Check(True, f"notification received in {1000 * (got - started):.0f} ms")
        except TimeoutError:
            return Check(False, f"no notification within {timeout:.0f} s")
        finally:
            self._waiters.pop(token, None)


async def readiness(
    probe: ListenProbe | None,
    *,
    url: str | None = None,
    timeout: float = 3.0,
    fresh_seconds: float = HEARTBEAT_FRESH_SECONDS,
) -> Readiness:
    """Run the three checks (each bounded by ``timeout``)."""
    out = Readiness()
    try:
        conn = await asyncio.wait_for(aconnect(url, autocommit=True), timeout)
    except Exception as exc:
        out.checks["database"] = Check(False, f"{type(exc).__name__}: {exc}".strip())
        out.checks["listen"] = Check(False, "database unreachable")
        out.checks["heartbeat"] = Check(False, "database unreachable")
        return out
    async with conn:
        try:
            cur = await asyncio.wait_for(conn.execute(q("ops_ping")), timeout)
            await cur.fetchone()
            out.checks["database"] = Check(True, "reachable")
        except Exception as exc:
            out.checks["database"] = Check(False, f"{type(exc).__name__}: {exc}")
        if probe is None:
            out.checks["listen"] = Check(False, "no listener in this process")
        else:
            try:
                out.checks["listen"] = await probe.roundtrip(conn, timeout)
            except Exception as exc:
                out.checks["listen"] = Check(False, f"{type(exc).__name__}: {exc}")
        try:
            cur = await asyncio.wait_for(
                conn.execute(q("ops_workers"), {"fresh_seconds": fresh_seconds}), timeout
            )
            row = await cur.fetchone()
            fresh = int(row["fresh"]) if row else 0
            age = row["newest_heartbeat_age_seconds"] if row else None
            if fresh > 0:
                out.checks["heartbeat"] = Check(
                    True, f"{fresh} worker(s) beat within {fresh_seconds:.0f} s"
                )
            elif age is None:
                out.checks["heartbeat"] = Check(False, "no worker registered")
            else:
                out.checks["heartbeat"] = Check(False, f"newest heartbeat {age:.0f} s old")
        except Exception as exc:
            out.checks["heartbeat"] = Check(False, f"{type(exc).__name__}: {exc}")
    return out


# --------------------------------------------------------------------------- HTTP

_STARTED = time.time()


@dataclass
class _ServerState:
    probe: ListenProbe
    url: str | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_SERVERS: dict[int, _ServerState] = {}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes | str,
    content_type: str,
    head: bool = False,
) -> None:
    data = body.encode("utf-8") if isinstance(body, str) else body
    headers = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(headers.encode("ascii") + (b"" if head else data))
    await writer.drain()


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str) + "\n"


async def _handle(
    state: _ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            await _respond(writer, 400, "bad request\n", "text/plain")
            return
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, "GET only\n", "text/plain")
            return
        is_head = method == "HEAD"
        if path == "/metrics":
            async with state.lock:
                body = await metrics.render_metrics(state.url)
            await _respond(writer, 200, body, metrics.CONTENT_TYPE, is_head)
        elif path in ("/health", "/healthz"):
            up = round(time.time() - _STARTED, 1)
            body_s = _json({"status": "ok", "pid": os.getpid(), "uptime_seconds": up})
            await _respond(writer, 200, body_s, "application/json", is_head)
        elif path in ("/ready", "/readyz"):
            result = await readiness(state.probe, url=state.url)
            code = 200 if result.ok else 503
            await _respond(writer, code, _json(result.as_dict()), "application/json", is_head)
        elif path == "/":
            await _respond(writer, 200, "ai-worker: /metrics /health /ready\n", "text/plain")
        else:
            await _respond(writer, 404, "not found\n", "text/plain", is_head)
    except (ConnectionError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("metrics endpoint failed")
        with contextlib.suppress(Exception):
            await _respond(writer, 500, "internal error\n", "text/plain")
    finally:
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()


async def serve(port: int, host: str = "0.0.0.0", *, url: str | None = None) -> asyncio.Server:
    """Start serving /metrics, /health and /ready; stop with :func:`shutdown`.

    ``port=0`` binds any free port (read it from ``server.sockets[0].getsockname()[1]``).
    ``url``: the database (default: the worker's, see :mod:`worker.database`).
    """
    state = _ServerState(probe=ListenProbe(url), url=url)
    # reuse_port: the processes of `run --processes N` share the port (the kernel spreads
    # scrapes over them; the database figures are the same from each).
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w),
        host=host,
        port=port,
        reuse_address=True,
        reuse_port=hasattr(socket, "SO_REUSEPORT") and port != 0,
    )
    state.probe.start()
    _SERVERS[id(server)] = state
    bound = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
    log.info("metrics and health endpoints on %s", bound)
    return server


def probe_of(server: asyncio.Server) -> ListenProbe | None:
    """The LISTEN probe of a server started by :func:`serve`."""
    state = _SERVERS.get(id(server))
    return None if state is None else state.probe


async def shutdown(server: asyncio.Server) -> None:
    """Stop accepting, close the server and its LISTEN probe connection."""
    server.close()
    state = _SERVERS.pop(id(server), None)
    if state is not None:
        await state.probe.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5.0)
