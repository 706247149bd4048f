"""Provider credit monitor (filled in by the operations work)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def run_credit_check(pool: AsyncConnectionPool) -> dict[str, Any]:
    return {}
