"""One listening connection per process for every queue and lane.

Procrastinate gives each worker its own LISTEN connection, and the realtime drain opened
one more: a process running the four queues held five connections just to be woken. Here
one connection LISTENs on every channel the process cares about and hands each
notification to whoever subscribed to that channel (the Procrastinate worker of a queue, a
running drain). Nothing is lost when the connection drops: on every (re)connect each
subscriber is woken once, and the workers keep their polling interval as a safety net.

At start :func:`check_delivery` sends a NOTIFY through a second connection and waits for it
on the listening one: behind a transaction-mode pooler (Supabase's port 6543) LISTEN is
accepted but never delivers, and the process refuses to start with one readable line
instead of silently falling back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from worker.database import APPLICATION_NAME
from worker.errors import ConfigError
from worker.queries import q

log = logging.getLogger(__name__)

Callback = Callable[[str], None]
"""Called with the notification's payload, on the event loop; must not block."""

PROCRASTINATE_CHANNEL = "procrastinate_queue_v1#{queue}"
DRAIN_CHANNEL = "worker_ai_jobs"  # notified by the ai_jobs triggers (schema/0010)
DELIVERY_TIMEOUT_SECONDS = 3.0
KEEPALIVE_SECONDS = 30.0

POOLER_HINT = (
    "LISTEN/NOTIFY does not work through a transaction-mode pooler (Supabase: port 6543). "
    "Set DATABASE_URL to the session-mode pooler (port 5432 on *.pooler.supabase.com) "
    "or to the direct connection (db.<project>.supabase.co:5432)."
)


def queue_channel(queue: str) -> str:
    """The channel Procrastinate's insert trigger notifies for ``queue``."""
    return PROCRASTINATE_CHANNEL.format(queue=queue)


def looks_like_transaction_pooler(url: str) -> bool:
    """Supabase's transaction-mode pooler by its address: port 6543 (pooler hosts and the
    dedicated pooler alike). Other poolers are caught by :func:`check_delivery`."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return False
    return str(info.get("port") or "") == "6543"


class Wakeups:
    """Subscribers by channel, fed from one LISTEN connection (see the module docstring)."""

    def __init__(self, url: str, channels: Iterable[str]) -> None:
        self.url = url
        self.channels = tuple(dict.fromkeys(channels))
        self._subs: dict[str, list[Callback]] = defaultdict(list)
        self.connected = asyncio.Event()
        self.connects = 0  # how many times the connection was (re)opened

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` for every notification on ``channel``; returns the unsubscribe."""
        if channel not in self.channels:
            raise ValueError(f"channel {channel!r} is not listened to by this process")
        self._subs[channel].append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs[channel].remove(callback)

        return unsubscribe

    def _dispatch(self, channel: str, payload: str) -> None:
        for cb in list(self._subs.get(channel, ())):
            try:
                cb(payload)
            except Exception:  # a subscriber's bug must not stop the others' wake-ups
                log.exception("wake-up subscriber for %s failed", channel)

    def _wake_all(self) -> None:
        """After a (re)connect: anything may have been missed while we were away."""
        for channel in self.channels:
            self._dispatch(channel, "")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=f"{APPLICATION_NAME}-listen"
        )
        for channel in self.channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (with a capped backoff) when the connection
        or the server goes away."""
        backoff = 0.2
        while True:
            try:
                async with await self._connect() as conn:
                    self.connects += 1
                    self.connected.set()
                    backoff = 0.2
                    self._wake_all()
                    while True:
                        got = False
                        async for n in conn.notifies(timeout=KEEPALIVE_SECONDS):
                            got = True
                            self._dispatch(n.channel, n.payload)
                        if not got:  # quiet: prove the connection is still there
                            await conn.execute(q("ping"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                log.warning("listening connection lost (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


async def check_delivery(url: str, timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
    """Raise :class:`ConfigError` unless a NOTIFY sent on one connection reaches a LISTEN on
    another within ``timeout`` (it never does through a transaction-mode pooler)."""
    if looks_like_transaction_pooler(url):
        raise ConfigError(f"DATABASE_URL points at port 6543. {POOLER_HINT}")
    channel = f"ai_worker_probe_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, application_name=f"{APPLICATION_NAME}-probe"
    ) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name=f"{APPLICATION_NAME}-probe"
        ) as sender:
            await sender.execute(q("notify"), (channel, "probe"))
        async for _ in listener.notifies(timeout=timeout, stop_after=1):
            return
    raise ConfigError(
        f"a NOTIFY sent to the database did not arrive within {timeout:.0f}s. {POOLER_HINT}"
    )


# The process's hub while `python -m worker run` runs it; None elsewhere (a bare
# `procrastinate worker`, tests calling tasks directly): users then listen on their own.
current: Wakeups | None = None
