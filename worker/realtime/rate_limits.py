"""Rate limits shared by every worker, kept in Postgres (``ai_rate_limits`` +
``ai_rate_usage``, admitted by the SQL function ``ai_rate_acquire``).

Before calling a provider, the drain asks Postgres to admit the claimed requests of each
(provider, model) that has a limit row: the function locks the usage rows of the current
second/minute/hour/day/week/month windows (UTC), admits the leading requests that fit every
window (requests and estimated tokens), records them and says when the next free slot opens:
the end of the window(s) that hold back the next request - with 5/min + 8/h the 6th-8th
jobs wait for the next minute, only the 9th for the next hour (schema/0023). The requests
not admitted go back to waiting with ``next_attempt_at`` = that time - never failed. Counting happens before the call, so concurrent workers can never overshoot; the
token estimate is corrected with the real usage after the call (:meth:`RateLimiter.settle`).

Fixed windows aligned to the clock (``date_trunc``) keep this one row per window and
unit; the cost is that a burst at a window boundary can reach twice the per-minute rate
over a sliding minute, which providers' own token buckets tolerate.

Models without a limit row skip all of this (the set of limited keys is cached for a few
seconds), so the mock provider and unlimited providers pay nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from worker.queries import q

CACHE_SECONDS = 2.0


class RateLimiter:
    def __init__(self) -> None:
        self._limited: set[tuple[str, str]] = set()
        self._loaded_at = -1e9
        self._deltas: dict[tuple[str, str], int] = defaultdict(int)

    async def refresh(self, conn: AsyncConnection[Any], force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < CACHE_SECONDS:
            return
        cur = await conn.execute(q("rt_limited_models"))
        self._limited = {(r[0], r[1]) for r in await cur.fetchall()}
        self._loaded_at = time.monotonic()

    def is_limited(self, provider: str, model: str) -> bool:
        return (provider, model) in self._limited or (provider, "*") in self._limited

    async def acquire(
        self, conn: AsyncConnection[Any], provider: str, model: str, tokens: list[int]
    ) -> tuple[int, datetime | None]:
        """Admit the leading requests of ``tokens`` (estimates); (admitted, retry_at)."""
        if not tokens or not self.is_limited(provider, model):
            return len(tokens), None
        cur = await conn.execute(
            q("rt_rate_acquire"), {"provider": provider, "model": model, "tokens": tokens}
        )
        row = await cur.fetchone()
        if row is None:
            return len(tokens), None
        return int(row[0]), row[1]

    def note_usage(self, provider: str, model: str, estimate: int, actual: int) -> None:
        """Remember the difference between reserved and real tokens (settled in a flush)."""
        if self.is_limited(provider, model) and actual != estimate:
            self._deltas[(provider, model)] += actual - estimate

    async def settle(self, conn: AsyncConnection[Any]) -> None:
        deltas, self._deltas = self._deltas, defaultdict(int)
        for (provider, model), delta in deltas.items():
            if delta:
                await conn.execute(
                    q("rt_rate_settle"), {"provider": provider, "model": model, "delta": delta}
                )
