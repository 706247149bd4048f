"""The realtime lane across several real `python -m worker run` processes (issue #13,
part 5): a half-open breaker admits exactly one probe call among all of them, and a bulk
insert is worked by every idle process, not by one until the next tick."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.worker_proc import WorkerProcess, query_one, wait_for
from worker.config import get_settings
from worker.emulator import Emulator

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def base_env(
    db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    env = dict(os.environ)
    env.update({"DATABASE_URL": db_url, "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACEFUL_SECONDS": "5"})
    yield env
    get_settings.cache_clear()


def _start(env: dict[str, str], tmp_path: Path, n: int) -> list[WorkerProcess]:
    return [WorkerProcess(env, tmp_path / f"worker{i}.log") for i in range(n)]


def _stop(workers: list[WorkerProcess]) -> None:
    for w in workers:
        if w.alive():
            try:
                w.terminate(30)
            except Exception:
                w.kill()


def _drain_pids(url: str, since: object) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT worker_pid) FROM worker_task_runs"
            " WHERE task_name = 'drain' AND started_at > %s",
            (since,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_half_open_breaker_admits_one_probe_call_across_three_processes(
    base_env: dict[str, str], emulator: Emulator, db_url: str, tmp_path: Path
) -> None:
    env = dict(base_env)
    env.update(
        {
            "BREAKER_FAILURE_THRESHOLD": "5",
            "BREAKER_COOLDOWN_SECONDS": "600",
            "BREAKER_PROBE_TIMEOUT_SECONDS": "600",
            "TICK_SECONDS": "1",
        }
    )
    # The provider still fails; each call takes a while, so the other processes look at
    # the breaker while the probe is in flight.
    emulator.configure(
        latency_ms=500,
        http_faults=[{"kind": "server", "provider": "openai", "count": None}],
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Opened an hour ago after five failures: its cooldown is over, a probe is due.
        conn.execute(
            "INSERT INTO provider_health (provider, state, consecutive_failures, opened_at,"
            " times_opened) VALUES ('openai', 'open', 5, now() - interval '1 hour', 1)"
        )
        started = conn.execute("SELECT now()").fetchone()
        assert started is not None
    workers = _start(env, tmp_path, 3)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ai_jobs (kind, provider, model, input_text)"
                " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'Text ' || g"
                " FROM generate_series(1, 30) g"
            )
        # Every process ran drains while the backlog waited (the tick wakes them).
        wait_for(lambda: _drain_pids(db_url, started[0]) >= 3, 90, "drains in all 3 processes")
        wait_for(
            lambda: (
                query_one(db_url, "SELECT state FROM provider_health")["state"] == "open"
                and emulator.stats()["openai"]["requests"] >= 1
            ),
            30,
            "the probe's failure recorded",
        )
    finally:
        _stop(workers)
    assert emulator.stats()["openai"]["requests"] == 1
    row = query_one(
        db_url,
        "SELECT state, consecutive_failures, times_opened FROM provider_health",
    )
    assert row == {"state": "open", "consecutive_failures": 6, "times_opened": 2}
    jobs = query_one(
        db_url,
        "SELECT count(*) FILTER (WHERE attempts = 1) AS probed,"
        " count(*) FILTER (WHERE status IN ('pending', 'retrying')) AS waiting,"
        " count(*) FILTER (WHERE status = 'processing') AS processing FROM ai_jobs",
    )
    assert jobs == {"probed": 1, "waiting": 30, "processing": 0}


def test_a_bulk_insert_is_worked_by_every_idle_process(
    base_env: dict[str, str], emulator: Emulator, db_url: str, tmp_path: Path
) -> None:
    env = dict(base_env)
    env["TICK_SECONDS"] = "3600"  # no tick: only the drains themselves can invite others
    emulator.configure(latency_ms=1000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        # 20 calls at a time per process: 600 one-second jobs keep one process busy 30 s.
        conn.execute("UPDATE ai_realtime_settings SET provider_concurrency = '{\"openai\": 20}'")
        started = conn.execute("SELECT now()").fetchone()
        assert started is not None
    workers = _start(env, tmp_path, 3)
    try:
        wait_for(
            lambda: (
                query_one(db_url, "SELECT count(*) AS n FROM procrastinate_workers")["n"] >= 12
            ),  # four queues per process
            60,
            "three worker processes up",
        )
        # The ticks each process defers at start-up (each may wake a drain) are over.
        wait_for(
            lambda: query_one(
                db_url,
                "SELECT (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'tick'"
                "        AND status IN ('todo', 'doing')) = 0"
                " AND (SELECT count(*) FROM worker_task_runs WHERE task_name = 'tick') > 0"
                " AS settled",
            )["settled"],
            30,
            "the start-up ticks done",
        )
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ai_jobs (kind, provider, model, input_text)"
                " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'Text ' || g"
                " FROM generate_series(1, 600) g"
            )
        # Jobs in flight in three processes at once (the claim owner names the pid).
        wait_for(
            lambda: (
                query_one(
                    db_url,
                    "SELECT count(DISTINCT split_part(claimed_by, ':', 2)) AS n FROM ai_jobs"
                    " WHERE status = 'processing'",
                )["n"]
                == 3
            ),
            60,
            "all three processes working the backlog",
        )
        done = query_one(db_url, "SELECT count(*) AS n FROM ai_jobs WHERE status = 'completed'")
    finally:
        _stop(workers)
    # Long before one process alone could have finished (600 jobs at 20 per second).
    assert int(done["n"]) < 600
