"""poll: check one provider batch (filled in by the pipeline)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool


async def run_poll(pool: AsyncConnectionPool, batch_job_id: str) -> dict[str, Any]:
    return {"batch_job_id": batch_job_id}
