"""drain: claim due ai_jobs and run them (filled in by the realtime work)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def run_drain(pool: AsyncConnectionPool) -> dict[str, Any]:
    return {}
