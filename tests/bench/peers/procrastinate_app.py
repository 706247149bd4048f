"""Procrastinate as a peer: a bare App with one no-op task, one job per row, run by the
stock ``procrastinate worker`` CLI in its own process (``PEER_DSN`` names its database;
``PEER_TRACE=1`` prints ``S <k> <time.time()>`` when a job starts)."""

from __future__ import annotations

import os
import sys
import time

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("PEER_DSN", ""))
)
TRACE = os.environ.get("PEER_TRACE") == "1"


@app.task(name="noop", queue="peers")
async def noop(k: str = "") -> None:
    if TRACE:
        sys.stdout.write(f"S {k} {time.time():.6f}\n")
        sys.stdout.flush()
