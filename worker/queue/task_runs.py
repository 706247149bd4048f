"""Recording task runs in ``worker_task_runs`` so a person can see, with psql, what ran when."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.ops.alerts import alert
from worker.ops.error_log import record_error
from worker.queries import q

log = logging.getLogger(__name__)


class RunRecord:
    """Filled in by the task body; written when the run ends."""

    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self.outcome = "ok"


@asynccontextmanager
async def recorded_run(
    pool: AsyncConnectionPool, task_name: str, job_id: int | None
) -> AsyncIterator[RunRecord]:
    # The start time is taken before any I/O: it is what the wake-up benchmark measures.
    started = datetime.fromtimestamp(time.time(), UTC)
    record = RunRecord()
    try:
        yield record
    except BaseException as exc:
        record.outcome = f"error: {type(exc).__name__}"
        if not isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            await _record_crash(pool, task_name, job_id, exc)
            await _alert_crash(pool, task_name, exc)
        raise
    finally:
        try:
            async with pool.connection() as conn:
                await conn.execute(
                    q("record_task_run"),
                    (task_name, job_id, os.getpid(), started, record.outcome, Jsonb(record.detail)),
                )
        except Exception:
            pass


async def _record_crash(
    pool: AsyncConnectionPool, task_name: str, job_id: int | None, exc: BaseException
) -> None:
    """Any exception that ends a task - MemoryError included - becomes a ``worker_errors``
    row naming the task (issue #11: a MemoryError on every submit run left nothing there).
    One row per task and problem, counted; never raises."""
    message = f"task {task_name} failed: {type(exc).__name__}: {str(exc)[:1000]}"
    try:
        async with pool.connection(timeout=10) as conn:
            await record_error(
                conn,
                "task_error",
                message,
                detail={"task": task_name, "job_id": job_id, "exception": type(exc).__name__},
            )
    except Exception:
        log.exception("could not record the failure of task %s", task_name)


async def _alert_crash(pool: AsyncConnectionPool, task_name: str, exc: BaseException) -> None:
    """A task that ended in an exception alerts (one alert per task and exception class
    per dedup window, like the old system's crash alerts). Never raises."""
    try:
        async with pool.connection(timeout=10) as conn:
            await alert(
                conn,
                f"task:{task_name}:{type(exc).__name__}",
                f"ai-worker task {task_name} crashed: {type(exc).__name__}",
                f"{type(exc).__name__}: {str(exc)[:800]}\nThe task runs again at its next"
                " wake-up; see worker_errors and `python -m worker status`.",
            )
    except Exception:
        log.exception("could not alert the crash of task %s", task_name)
