"""Self-healing workers (issue #5, items 6-7): `python -m worker run` as a real process keeps
working through a Postgres restart, terminated connections and SIGKILL, and drains on
SIGTERM. Real Postgres (a private cluster where the server is restarted), real HTTP (the
emulator), real processes. Healing is made fast with TICK_SECONDS / WORKER_STALLED_SECONDS.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import DEFAULT_MODELS, insert_questions, point_env_at_emulator
from tests.fixtures.private_pg import PrivateCluster
from tests.fixtures.worker_proc import (
    FAST_HEALING,
    OPEN_WORK,
    WorkerProcess,
    audit,
    query_one,
    terminate_worker_backends,
    wait_for,
)
from worker.config import get_settings
from worker.emulator import Emulator
from worker.migrate import migrate
from worker.providers.routing import reset_providers

pytestmark = pytest.mark.timeout(120)


def _env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_HEALING)
    env["DATABASE_URL"] = url
    env.update(extra)
    return env


def _all_done(url: str) -> bool:
    row = query_one(url, OPEN_WORK)
    return bool(row["total"]) and row["open"] == 0


def _assert_nothing_lost(url: str, emu: Emulator, n: int) -> None:
    result = audit(url, emu.stats())
    assert result["questions"] == n
    assert result["completed"] == n, result
    assert (result["lost"], result["duplicates"], result["paid_twice"]) == (0, 0, 0), result
    assert result["completed_unfinished"] == 0, result


LIVE_WORKERS = (
    "SELECT count(*) AS n FROM procrastinate_workers"
    " WHERE last_heartbeat > now() - interval '4 seconds'"
)
# One listening connection per process serves every queue (worker/queue/wakeups.py).
LISTENERS = (
    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'ai-worker-listen'"
    " AND datname = current_database() AND query ILIKE 'LISTEN%'"
)


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


# (b) pg_terminate_backend of every worker connection, three times, mid-run.
def test_terminated_connections_are_reopened_and_no_work_is_missed(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str, worker_log: Path
) -> None:
    n = 150
    pipeline.configure(state_seconds=0.3, latency_ms=20)
    insert_questions(db, n)
    worker = WorkerProcess(_env(db_url), worker_log)
    try:
        wait_for(
            lambda: query_one(
                db_url,
                "SELECT count(*) AS n FROM ai_commentary_batch_jobs WHERE state = 'in_flight'",
            )["n"],
            30,
            "a batch in flight",
        )
        killed = 0
        for _ in range(12):
            killed += terminate_worker_backends(db_url)
            time.sleep(0.4)
        assert killed >= 12  # pool + LISTEN connections were really cut, again and again
        wait_for(lambda: _all_done(db_url), 60, "every question settled")
        # The same process still runs one live worker per queue (fresh heartbeats), and
        # listens again.
        assert worker.alive(), worker.log_tail()
        wait_for(
            lambda: query_one(db_url, LIVE_WORKERS)["n"] == 4,
            10,
            "one heartbeating worker per queue",
        )
        wait_for(lambda: query_one(db_url, LISTENERS)["n"] == 1, 10, "the LISTEN connection back")
    finally:
        code = worker.terminate(30)
    assert code == 0, worker.log_tail()
    _assert_nothing_lost(db_url, pipeline, n)


# (c) SIGKILL mid-batch (and mid instant call), twice; a new worker finishes the work.
def test_sigkilled_worker_is_replaced_without_loss_or_double_payment(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str, worker_log: Path
) -> None:
    n = 120
    # Slow instant calls so the kill lands while requests are claimed by one.
    pipeline.configure(state_seconds=0.5, latency_ms=300)
    insert_questions(db, n)
    env = _env(db_url, INSTANT_CONCURRENCY="4")

    worker = WorkerProcess(env, worker_log)
    wait_for(
        lambda: query_one(
            db_url,
            "SELECT count(*) AS n FROM ai_commentary_requests"
            " WHERE status = 'submitted' AND batch_job_id IS NULL",
        )["n"],
        30,
        "an instant call holding claims",
    )
    worker.kill()
    claimed = query_one(
        db_url,
        "SELECT count(*) FILTER (WHERE batch_job_id IS NULL) AS instant,"
        " count(*) FILTER (WHERE batch_job_id IS NOT NULL) AS batch"
        " FROM ai_commentary_requests WHERE status = 'submitted'",
    )
    assert claimed["instant"] > 0  # the dead worker left claims behind

    worker = WorkerProcess(env, worker_log)
    wait_for(
        lambda: query_one(
            db_url,
            "SELECT count(*) AS n FROM ai_commentary_batch_jobs WHERE state = 'in_flight'",
        )["n"],
        30,
        "a batch in flight",
    )
    time.sleep(0.3)
    worker.kill()

    worker = WorkerProcess(env, worker_log)
    try:
        wait_for(lambda: _all_done(db_url), 75, "every question settled")
    finally:
        code = worker.terminate(30)
    assert code == 0, worker.log_tail()
    _assert_nothing_lost(db_url, pipeline, n)
    # The dead worker's claims were released by the tick (an attempt each), not left behind.
    released = db.execute(
        "SELECT count(*) AS n FROM worker_task_runs WHERE task_name = 'tick'"
        " AND detail ->> 'instant_released' IS NOT NULL"
    ).fetchone()
    assert released and released["n"] >= 1
    left = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'doing'"
    ).fetchone()
    assert left == {"n": 0}


# (d) SIGTERM drains: the in-flight submit finishes, nothing is left claimed.
def test_sigterm_drains_gracefully(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str, worker_log: Path
) -> None:
    pipeline.configure(state_seconds=5, latency_ms=300)
    insert_questions(db, 60)
    worker = WorkerProcess(_env(db_url, INSTANT_CONCURRENCY="4"), worker_log)
    wait_for(
        lambda: query_one(
            db_url,
            "SELECT count(*) AS n FROM ai_commentary_requests"
            " WHERE status = 'submitted' AND batch_job_id IS NULL",
        )["n"],
        30,
        "an instant call holding claims",
    )
    code = worker.terminate(25)
    assert code == 0, worker.log_tail()  # drained, not killed at the graceful timeout
    # The running submit finished its instant calls and wrote their answers.
    assert db.execute(
        "SELECT count(*) AS n FROM ai_answer_comments WHERE model_key = 'perplexity'"
    ).fetchone() == {"n": 60}
    stranded = db.execute(
        "SELECT count(*) AS n FROM questions q WHERE q.ai_commentary_status = 'processing'"
        " AND NOT EXISTS (SELECT 1 FROM ai_commentary_requests r"
        "   LEFT JOIN ai_commentary_batch_jobs b ON b.id = r.batch_job_id"
        "   WHERE r.question_id = q.id"
        "     AND (r.status = 'waiting' OR (r.status = 'submitted' AND b.state = 'in_flight')))"
    ).fetchone()
    assert stranded == {"n": 0}
    instant_claims = db.execute(
        "SELECT count(*) AS n FROM ai_commentary_requests"
        " WHERE status = 'submitted' AND batch_job_id IS NULL"
    ).fetchone()
    assert instant_claims == {"n": 0}
    assert db.execute(
        "SELECT count(*) AS n FROM ai_commentary_batch_jobs WHERE state = 'submitting'"
    ).fetchone() == {"n": 0}
    assert db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'doing'"
    ).fetchone() == {"n": 0}


# (a) Postgres restarted mid-run (down for 4 s): the same worker process finishes the run.
@pytest.fixture
def private_db(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PrivateCluster, str]]:
    with PrivateCluster() as cluster:
        url = cluster.create_database(f"aiw_heal_{uuid.uuid4().hex[:6]}")
        migrate(url)
        monkeypatch.setenv("DATABASE_URL", url)
        point_env_at_emulator(monkeypatch, emulator)
        get_settings.cache_clear()
        reset_providers()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE ai_commentary_settings SET processing_delay_minutes = 0,"
                " batch_size = 100, models = %s, models_enabled = %s",
                (
                    json.dumps(DEFAULT_MODELS),
                    json.dumps(
                        {"chatgpt": True, "gemini": True, "mistral": True, "perplexity": True}
                    ),
                ),
            )
        yield cluster, url
        get_settings.cache_clear()
        reset_providers()


def test_postgres_restart_mid_run_is_survived(
    private_db: tuple[PrivateCluster, str], emulator: Emulator, worker_log: Path
) -> None:
    cluster, url = private_db
    n = 200
    emulator.configure(state_seconds=0.5, latency_ms=20)
    with psycopg.connect(url, autocommit=True) as conn:
        insert_questions(conn, n)
    worker = WorkerProcess(_env(url), worker_log)
    try:
        wait_for(
            lambda: query_one(
                url,
                "SELECT count(*) AS n FROM ai_commentary_batch_jobs WHERE state = 'in_flight'",
            )["n"],
            30,
            "a batch in flight",
        )
        cluster.restart(down_seconds=4)
        assert worker.alive(), worker.log_tail()
        wait_for(lambda: _all_done(url), 75, "every question settled")
        assert worker.alive(), worker.log_tail()
    finally:
        code = worker.terminate(30)
    assert code == 0, worker.log_tail()
    _assert_nothing_lost(url, emulator, n)
