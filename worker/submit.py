"""submit: claim pending questions and send them to the providers (filled in by the pipeline)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def run_submit(pool: AsyncConnectionPool) -> dict[str, Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM questions WHERE ai_commentary_status = 'pending'"
        )
        row = await cur.fetchone()
    return {"pending_seen": int(row[0]) if row else 0}
