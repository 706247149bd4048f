"""The jobs the batch lane defers (``submit``, ``poll``): the one module that defers, so
poll and the tick never import submit. Jobs go through the named ``defer_job`` SQL, the same
Procrastinate function the database triggers call."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from worker.queries import q

log = logging.getLogger(__name__)


async def defer(
    conn: AsyncConnection[Any],
    task: str,
    lock: str,
    args: dict[str, Any] | None = None,
    scheduled_at: datetime | None = None,
    queue: str | None = None,
) -> None:
    await conn.execute(
        q("defer_job"),
        {
            "queue": queue or task,
            "task": task,
            "lock": lock,
            "args": Jsonb(args or {}),
            "scheduled_at": scheduled_at,
        },
    )


async def defer_poll(conn: AsyncConnection[Any], job_id: uuid.UUID | str, delay: float) -> None:
    await defer(
        conn,
        "poll",
        f"poll:{job_id}",
        {"batch_job_id": str(job_id)},
        scheduled_at=datetime.now(UTC) + timedelta(seconds=delay),
    )


def delayed_submit_lock(due: datetime) -> str:
    return f"submit-delayed@{int(due.timestamp())}"
