"""The periodic tick: the safety net under LISTEN/NOTIFY."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def run_tick(pool: AsyncConnectionPool) -> dict[str, Any]:
    """Re-wake submit when pending work exists (a lost notification costs at most a tick)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM questions WHERE ai_commentary_status = 'pending')"
        )
        row = await cur.fetchone()
        pending = bool(row and row[0])
        if pending:
            await conn.execute("SELECT worker_defer_job('submit', 'submit', 'submit')")
        await conn.execute(
            "DELETE FROM worker_task_runs WHERE started_at < now() - interval '7 days'"
        )
    return {"pending": pending}
