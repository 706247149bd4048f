"""The Procrastinate app (exposed as ``worker.app``): ``procrastinate --app=worker.app worker``
or ``python -m worker run``.

The connection pool is created when the app opens, from ``DATABASE_URL`` (or the discovered
server, see :mod:`worker.database`), so importing this module never connects. Task code
borrows connections from the same pool: one pool per process.
"""

from __future__ import annotations

from typing import Any

import procrastinate
import psycopg
import psycopg_pool

from worker.database import APPLICATION_NAME, resolve_database_url

# Queue names: one per kind of coarse job, so a worker per queue runs at concurrency 1
# (Procrastinate loses wake-ups above 1) without a long submit delaying polls.
QUEUE_SUBMIT = "submit"
QUEUE_POLL = "poll"
QUEUE_REALTIME = "realtime"
QUEUE_MAINTENANCE = "maintenance"
ALL_QUEUES = (QUEUE_SUBMIT, QUEUE_POLL, QUEUE_REALTIME, QUEUE_MAINTENANCE)


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


def _pool_factory(**kwargs: Any) -> psycopg_pool.AsyncConnectionPool:
    return psycopg_pool.AsyncConnectionPool(
        conninfo=resolve_database_url(),
        # autocommit: every multi-statement unit of work uses an explicit transaction, and
        # nothing is ever left "idle in transaction" across a provider call.
        kwargs={"application_name": APPLICATION_NAME},
        configure=_autocommit,
        min_size=2,
        max_size=10,
        **kwargs,
    )


app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(pool_factory=_pool_factory),
    import_paths=["worker.tasks"],
)

# Task definitions register themselves on `app` when imported.
import worker.tasks  # noqa: E402,F401
