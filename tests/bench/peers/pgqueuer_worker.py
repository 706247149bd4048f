"""pgqueuer side of the peers bench; runs under pgqueuer's own virtualenv (.bench-peers/),
never imported by the project.

    python pgqueuer_worker.py install DSN
    python pgqueuer_worker.py enqueue DSN N          # N no-op jobs, one enqueue statement
    python pgqueuer_worker.py run DSN CONCURRENCY TRACE

``run``: a QueueManager on the asyncpg driver (``PGQ_DRIVER=psycopg``: the psycopg one) with one entrypoint ``noop`` (concurrency
limit CONCURRENCY, dequeue batch CONCURRENCY). With TRACE=1 each job prints
``S <payload> <time.time()>`` when it starts. Prints ``READY`` once the worker is up.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta

import asyncpg
import psycopg
from pgqueuer import AsyncpgDriver, PsycopgDriver, QueueManager
from pgqueuer.db import Driver
from pgqueuer.models import Job
from pgqueuer.queries import Queries


async def connect(dsn: str) -> Driver:
    if os.environ.get("PGQ_DRIVER") == "psycopg":
        # One connection for LISTEN and queries: its notifies(timeout=1.0) loop holds the
        # connection, so every dequeue waits up to 1 s (measured: ~1-2 s pickup, <10 jobs/s).
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return PsycopgDriver(conn)
    return AsyncpgDriver(await asyncpg.connect(dsn))


async def install(dsn: str) -> None:
    await Queries(await connect(dsn)).install()


async def enqueue(dsn: str, n: int) -> None:
    queries = Queries(await connect(dsn))
    await queries.enqueue(["noop"] * n, [None] * n, [0] * n)


async def run(dsn: str, concurrency: int, trace: bool) -> None:
    qm = QueueManager(Queries(await connect(dsn)))

    @qm.entrypoint("noop", concurrency_limit=concurrency)
    async def noop(job: Job) -> None:
        if trace:
            sys.stdout.write(f"S {(job.payload or b'').decode()} {time.time():.6f}\n")
            sys.stdout.flush()

    loop = asyncio.get_running_loop()
    loop.call_later(0.5, lambda: print("READY", flush=True))
    await qm.run(dequeue_timeout=timedelta(seconds=30), batch_size=concurrency)


def main() -> None:
    cmd, dsn = sys.argv[1], sys.argv[2]
    if cmd == "install":
        asyncio.run(install(dsn))
    elif cmd == "enqueue":
        asyncio.run(enqueue(dsn, int(sys.argv[3])))
    elif cmd == "run":
        asyncio.run(run(dsn, int(sys.argv[3]), sys.argv[4] == "1"))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
