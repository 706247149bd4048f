"""The periodic tick (every minute, deduplicated across workers by Procrastinate): the
safety net under LISTEN/NOTIFY and the healer of crashes. It runs the batch lane's steps
(:mod:`worker.commentary.tick`), re-queues Procrastinate jobs left ``doing`` by a worker
that stopped heartbeating (``WORKER_STALLED_SECONDS``, default 30), wakes a realtime drain
when an ``ai_jobs`` row is due, sends held alerts as a digest and deletes one batch of old
finished rows of each kind (:mod:`worker.ops.retention`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from procrastinate import exceptions as pexc
from procrastinate.jobs import Status
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from worker.commentary.tick import run_commentary_steps
from worker.config import get_settings
from worker.ops.alerts import flush_held
from worker.ops.retention import apply_retention
from worker.queries import q
from worker.queue.app import app

log = logging.getLogger(__name__)


def stalled_seconds() -> float:
    """Seconds without a heartbeat after which a worker counts as dead."""
    return get_settings().worker_stalled_seconds


async def run_tick(pool: AsyncConnectionPool) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    async with pool.connection() as conn:
        detail.update(await run_commentary_steps(conn))
        detail["stalled_jobs"] = await requeue_stalled_jobs()
        detail["drain_woken"] = await wake_drain_if_due(conn)
        digest = await flush_held(conn)
        if digest is not None:
            detail["alert_digest"] = digest.value
        detail["retention"] = await apply_retention(conn)
    return {k: v for k, v in detail.items() if v}


async def requeue_stalled_jobs() -> int:
    """Jobs left ``doing`` by a worker without a heartbeat go back to ``todo``; if a job
    with the same queueing lock already waits, the stalled one is marked failed instead
    (the waiting one does the same, idempotent work)."""
    n = 0
    for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_seconds()):
        try:
            await app.job_manager.retry_job(job)
            n += 1
        except (pexc.AlreadyEnqueued, pexc.UniqueViolation, pexc.ConnectorException):
            try:
                await app.job_manager.finish_job(job, Status.FAILED, delete_job=False)
                n += 1
            except Exception as exc:
                log.warning("could not clear stalled job %s: %r", job.id, exc)
    return n


async def wake_drain_if_due(conn: AsyncConnection[Any]) -> bool:
    """Defer a realtime drain when an ai_jobs row is due (a retry whose time came, or an
    expired lease of a dead worker) and no drain is waiting: the safety net for the
    realtime lane."""
    cur = await conn.execute(q("rt_next_due"))
    row = await cur.fetchone()
    due = row[0] if row else None
    if due is None:
        return False
    if due > datetime.now(UTC):
        return False
    await conn.execute(q("rt_defer_drain"), {"lock": "drain", "scheduled_at": None})
    return True
