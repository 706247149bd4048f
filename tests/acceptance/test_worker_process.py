"""The chain trigger → NOTIFY → worker process → task, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

QUESTION = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, correct_answer,"
    " ai_commentary_status) VALUES (%s, 'a', 'b', 'c', 'd', 'A', 'pending')"
)


def _wait_for(db: psycopg.Connection[Any], sql: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(sql).fetchone()
        if row:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {sql}")


@pytest.fixture
def worker_env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = db_url
    # Long polling interval: the test passes only if the NOTIFY wake-up works.
    env["FETCH_JOB_POLLING_INTERVAL"] = "30"
    return env


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def procrastinate_worker(worker_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start(
        [
            sys.executable,
            "-m",
            "procrastinate",
            "--app=worker.app",
            "worker",
            "--queues=submit",
            "--fetch-job-polling-interval=30",
        ],
        worker_env,
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_procrastinate_cli_worker_runs_submit_on_insert(
    db: psycopg.Connection[Any], procrastinate_worker: subprocess.Popen[bytes]
) -> None:
    # The worker registers before it LISTENs: wait for the LISTEN itself, since a NOTIFY
    # sent earlier is lost (the 30 s polling interval would then fail the test).
    _wait_for(
        db,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND query ILIKE 'LISTEN%'",
    )
    db.execute(QUESTION, ("Q1",))
    run = _wait_for(db, "SELECT * FROM worker_task_runs WHERE task_name = 'submit'")
    assert run["outcome"] == "ok"
    assert run["worker_pid"] == procrastinate_worker.pid


def test_python_m_worker_run_until_idle_exits(
    db: psycopg.Connection[Any], worker_env: dict[str, str]
) -> None:
    """`python -m worker run --until-idle` drains queued jobs and exits by itself."""
    db.execute("UPDATE ai_commentary_settings SET feature_enabled = false")
    db.execute(QUESTION, ("Q1",))
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--until-idle", "--timeout", "60"],
        env=worker_env,
        capture_output=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    run = db.execute("SELECT outcome FROM worker_task_runs WHERE task_name = 'submit'").fetchone()
    assert run == {"outcome": "ok"}
    left = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo','doing')"
        " AND task_name <> 'tick'"
    ).fetchone()
    assert left == {"n": 0}
