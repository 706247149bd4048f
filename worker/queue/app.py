"""The Procrastinate app (exposed as ``worker.app``): ``procrastinate --app=worker.app worker``
or ``python -m worker run``.

The connection pool is created when the app opens, from ``DATABASE_URL`` (or the discovered
server, see :mod:`worker.database`), so importing this module never connects. Task code
borrows connections from the same pool: one pool per process.

Import order: the pipeline modules may import this one; the tasks (:mod:`worker.queue.tasks`)
import the pipeline and this app; nothing here imports back.
"""

from __future__ import annotations

from typing import Any

import procrastinate
import psycopg
import psycopg_pool

from worker.config import get_settings
from worker.database import APPLICATION_NAME, resolve_database_url

# Queue names: one per kind of coarse job, so a worker per queue runs at concurrency 1
# (Procrastinate loses wake-ups above 1) without a long submit delaying polls.
QUEUE_SUBMIT = "submit"
QUEUE_POLL = "poll"
QUEUE_REALTIME = "realtime"
QUEUE_MAINTENANCE = "maintenance"
ALL_QUEUES = (QUEUE_SUBMIT, QUEUE_POLL, QUEUE_REALTIME, QUEUE_MAINTENANCE)

# Jobs woken by NOTIFY (submit, drain) run at concurrency 1: Procrastinate loses wake-ups
# above 1. Polls are scheduled in the future and found by polling anyway, so several can
# run at once (each locks its own batch row).
QUEUE_CONCURRENCY = {QUEUE_POLL: 4}


def queue_concurrency(queue: str) -> int:
    return QUEUE_CONCURRENCY.get(queue, 1)


def pool_max_size(queues: tuple[str, ...] = ALL_QUEUES) -> int:
    """The pool's ceiling: one connection per job the process can run at once, plus one
    for the side work (heartbeats, the tick, idle checks), capped by ``DB_POOL_MAX``
    (default 5: with the LISTEN connection a busy process holds at most 6)."""
    wanted = 1 + sum(queue_concurrency(q) for q in queues)
    return max(2, min(get_settings().db_pool_max, wanted))


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


def _pool_factory(**kwargs: Any) -> psycopg_pool.AsyncConnectionPool:
    return psycopg_pool.AsyncConnectionPool(
        conninfo=resolve_database_url(),
        # autocommit: every multi-statement unit of work uses an explicit transaction, and
        # nothing is ever left "idle in transaction" across a provider call.
        kwargs={"application_name": APPLICATION_NAME},
        configure=_autocommit,
        min_size=1,
        max_size=pool_max_size(),
        max_idle=get_settings().db_pool_idle_seconds,
        **kwargs,
    )


# The task definitions (worker.queue.tasks) register themselves on `app` when imported. This
# module does not import them (they import the pipeline, which imports this app: a cycle);
# Procrastinate imports `import_paths` itself before a worker runs or a task is looked up by
# name (`App.perform_import_paths`), and `worker.app` loads them too.
app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(pool_factory=_pool_factory),
    import_paths=["worker.queue.tasks"],
)
