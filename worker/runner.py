"""``python -m worker run``: worker processes that keep themselves alive.

Each process runs one Procrastinate worker per queue at concurrency 1 (Procrastinate loses
wake-ups above 1; see docs), each under a supervisor loop that restarts it after a
database outage or a terminated connection instead of exiting, as a bare
``procrastinate worker`` would. ``--processes N`` starts N such processes and restarts any
that dies. ``--until-idle`` exits once nothing is pending, claimed or due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from worker.config import get_settings
from worker.database import aconnect, resolve_database_url
from worker.queue_app import ALL_QUEUES, app

log = logging.getLogger(__name__)

IDLE_QUERY = """
SELECT
    (SELECT count(*) FROM questions q
      WHERE q.ai_commentary_status IN ('pending', 'processing')
        AND EXISTS (SELECT 1 FROM ai_commentary_settings s WHERE s.feature_enabled))
  + (SELECT count(*) FROM ai_jobs a
      WHERE a.status IN ('pending', 'processing', 'retrying'))
  + (SELECT count(*) FROM procrastinate_jobs j
      WHERE j.status IN ('todo', 'doing') AND j.task_name <> 'tick') AS open_work
"""


async def _supervised_worker(queue: str, polling_interval: float) -> None:
    """Run a worker for ``queue`` forever, restarting it after any failure."""
    backoff = 0.2
    while True:
        started = time.monotonic()
        try:
            await app.run_worker_async(
                queues=[queue],
                name=f"{queue}-{os.getpid()}",
                concurrency=1,
                wait=True,
                install_signal_handlers=False,
                fetch_job_polling_interval=polling_interval,
                shutdown_graceful_timeout=60.0,
                update_heartbeat_interval=5.0,
                stalled_worker_timeout=30.0,
                delete_jobs="successful",
            )
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() - started > 30:
                backoff = 0.2
            log.warning(
                "worker for queue %s stopped (%s); restarting in %.1fs", queue, exc, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def _open_app_with_retry() -> None:
    backoff = 0.5
    while True:
        try:
            await app.open_async()
            return
        except Exception as exc:
            log.warning("database not reachable (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def _wait_idle(timeout: float | None) -> bool:
    """Return True once the database shows no open work twice in a row."""
    deadline = None if timeout is None else time.monotonic() + timeout
    quiet = 0
    while deadline is None or time.monotonic() < deadline:
        try:
            async with await aconnect(autocommit=True) as conn:
                cur = await conn.execute(IDLE_QUERY)
                row = await cur.fetchone()
            quiet = quiet + 1 if row and row["open_work"] == 0 else 0
        except Exception as exc:
            log.warning("idle check failed: %s", exc)
            quiet = 0
        if quiet >= 3:
            return True
        await asyncio.sleep(0.3)
    return False


async def run_async(
    *,
    until_idle: bool = False,
    timeout: float | None = None,
    queues: Sequence[str] = ALL_QUEUES,
) -> int:
    settings = get_settings()
    resolve_database_url()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics_server: asyncio.Server | None = None
    if settings.metrics_port is not None:
        from worker import metrics

        try:
            metrics_server = await metrics.serve(settings.metrics_port)
        except OSError as exc:
            log.error(
                "cannot serve metrics on port %s (%s); continuing without",
                settings.metrics_port,
                exc,
            )
    await _open_app_with_retry()
    try:
        workers = [
            asyncio.create_task(_supervised_worker(q, settings.fetch_job_polling_interval))
            for q in queues
        ]
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
        if until_idle:
            waiters.append(asyncio.create_task(_wait_idle(timeout)))
        elif timeout is not None:
            waiters.append(asyncio.create_task(asyncio.sleep(timeout)))
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        idle_ok = any(t.result() is True for t in done if not t.cancelled())
        # Cancelling a Procrastinate worker stops it gracefully: running jobs finish.
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    finally:
        await app.close_async()
        if metrics_server is not None:
            from worker import metrics

            await metrics.shutdown(metrics_server)
    if until_idle and not idle_ok and not stop.is_set():
        log.error("not idle after %.0fs", timeout or 0)
        return 1
    return 0


def run_processes(n: int, *, until_idle: bool, timeout: float | None) -> int:
    """Start ``n`` worker processes and restart any that dies (until stopped or idle)."""
    os.environ["DATABASE_URL"] = resolve_database_url()
    base = [sys.executable, "-m", "worker", "run", "--processes", "1"]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    children = [subprocess.Popen(base) for _ in range(n)]
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stopping:
        time.sleep(0.5)
        for i, c in enumerate(children):
            if c.poll() is not None and not stopping:
                log.warning("worker process %s exited with %s; restarting", c.pid, c.returncode)
                children[i] = subprocess.Popen(base)
        if until_idle and asyncio.run(_wait_idle(2.0)):
            _stop(signal.SIGTERM, None)
        if deadline is not None and time.monotonic() > deadline:
            _stop(signal.SIGTERM, None)
    for c in children:
        c.wait()
    return 0
