"""Procrastinate task definitions: thin wrappers that record the run and call the pipeline.

Every task is coarse: one job claims many rows (``FOR UPDATE SKIP LOCKED``), so the queue's
one-job-per-round-trip ceiling never limits row throughput.
"""

from __future__ import annotations

from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from worker.commentary import poll as poll_stage
from worker.commentary import submit as submit_stage
from worker.ops import credits, maintenance
from worker.queue.app import QUEUE_MAINTENANCE, QUEUE_POLL, QUEUE_REALTIME, QUEUE_SUBMIT, app
from worker.queue.task_runs import recorded_run
from worker.realtime import drain as drain_stage

__all__ = ["app", "credit_check", "drain", "poll", "submit", "tick"]


def _pool() -> AsyncConnectionPool:
    pool: AsyncConnectionPool = app.connector.pool  # type: ignore[attr-defined]
    return pool


@app.task(name="submit", queue=QUEUE_SUBMIT, queueing_lock="submit", pass_context=True)
async def submit(context: JobContext) -> None:
    """Claim pending questions and send them to the providers."""
    async with recorded_run(_pool(), "submit", context.job.id) as run:
        run.detail = await submit_stage.run_submit(_pool())


@app.task(name="poll", queue=QUEUE_POLL, pass_context=True)
async def poll(context: JobContext, batch_job_id: str) -> None:
    """Check one provider batch; ingest it when finished, else reschedule itself."""
    async with recorded_run(_pool(), "poll", context.job.id) as run:
        run.detail = await poll_stage.run_poll(_pool(), batch_job_id)


@app.periodic(cron="* * * * *", periodic_id="tick")
@app.task(name="tick", queue=QUEUE_MAINTENANCE, queueing_lock="tick", pass_context=True)
async def tick(context: JobContext, timestamp: int) -> None:
    """Safety net every minute: wake submit and polls whose notifications were lost."""
    async with recorded_run(_pool(), "tick", context.job.id) as run:
        run.detail = await maintenance.run_tick(_pool())


@app.task(name="drain", queue=QUEUE_REALTIME, queueing_lock="drain", pass_context=True)
async def drain(context: JobContext) -> None:
    """Claim due ai_jobs rows and run them at provider speed; re-defers itself while work remains."""
    async with recorded_run(_pool(), "drain", context.job.id) as run:
        run.detail = await drain_stage.run_drain(_pool())


@app.periodic(cron="7 * * * *", periodic_id="credit_check")
@app.task(
    name="credit_check", queue=QUEUE_MAINTENANCE, queueing_lock="credit_check", pass_context=True
)
async def credit_check(context: JobContext, timestamp: int) -> None:
    """Hourly: read provider credit balances (OpenRouter) and alert below thresholds."""
    async with recorded_run(_pool(), "credit_check", context.job.id) as run:
        run.detail = await credits.run_credit_check(_pool())
