"""SIGTERM with a realtime backlog (issue #13, part 5): a real `python -m worker run`
process, real HTTP to the emulator at 1 s per call. After the signal the drain claims
nothing new, gives back what it had not started, writes every answer that arrives within
the grace period and releases the rest: after a clean exit no row is `processing` and the
provider saw exactly the calls whose answers were written plus the ones cut off."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.worker_proc import WorkerProcess, query_one, wait_for
from worker.config import get_settings
from worker.emulator import Emulator

pytestmark = pytest.mark.timeout(180)

JOBS = 2000
CONCURRENCY = 50  # per process (the default); the lane also prefetches a tenth more


def _counts(url: str) -> dict[str, int]:
    row = query_one(
        url,
        "SELECT count(*) FILTER (WHERE status = 'processing') AS processing,"
        " count(*) FILTER (WHERE status = 'completed') AS completed,"
        " count(*) FILTER (WHERE status = 'completed' AND result_text IS NOT NULL) AS answered,"
        " count(*) FILTER (WHERE status IN ('pending', 'retrying')) AS waiting,"
        " count(*) FILTER (WHERE status = 'failed') AS failed FROM ai_jobs",
    )
    return {k: int(v) for k, v in row.items()}


def _stable_requests(emu: Emulator) -> int:
    """The emulator's request count once it stops moving (requests already on the wire
    when the worker exited are counted as they arrive)."""
    last = -1
    while True:
        n = int(emu.stats()["openai"]["requests"])
        if n == last:
            return n
        last = n
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("latency_ms", "grace"),
    [
        (1000, "20"),  # every call in flight finishes within the grace period
        (8000, "4"),  # none can: they are cut off at the deadline and released
    ],
    ids=["in-flight-finish", "in-flight-cut-off"],
)
def test_sigterm_with_a_backlog_stops_claiming_writes_answers_and_leaves_nothing_processing(
    db_url: str,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    latency_ms: int,
    grace: str,
) -> None:
    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    emulator.configure(latency_ms=latency_ms)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_realtime_settings SET provider_concurrency = %s",
            (f'{{"openai": {CONCURRENCY}}}',),
        )
        conn.execute(
            "INSERT INTO ai_jobs (kind, provider, model, input_text)"
            " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'Text ' || g"
            " FROM generate_series(1, %s) g",
            (JOBS,),
        )
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "SHUTDOWN_GRACEFUL_SECONDS": grace,
            "TICK_SECONDS": "3600",
            "LOG_LEVEL": "WARNING",
        }
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        # Calls in flight: the emulator has received them.
        wait_for(
            lambda: int(emulator.stats()["openai"]["requests"]) >= CONCURRENCY,
            60,
            "a full lane of calls in flight",
        )
        if latency_ms < 5000:
            wait_for(lambda: _counts(db_url)["completed"] >= CONCURRENCY, 60, "answers")
        signalled_at = query_one(db_url, "SELECT now() AS t")["t"]
        code = worker.terminate(90)
    finally:
        if worker.alive():
            worker.kill()
    assert code == 0, worker.log_tail()

    after = _counts(db_url)
    assert after["processing"] == 0, after
    assert after["failed"] == 0, after
    assert after["answered"] == after["completed"]  # every completed job has its answer
    assert after["completed"] + after["waiting"] == JOBS

    runs: list[dict[str, Any]] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for (detail,) in conn.execute(
            "SELECT detail FROM worker_task_runs WHERE task_name = 'drain'"
        ).fetchall():
            runs.append(detail)
        claimed_after = conn.execute(
            "SELECT count(*) FROM ai_jobs WHERE claimed_at > %s", (signalled_at,)
        ).fetchone()
    in_flight_released = sum(int(r.get("released_in_flight", 0)) for r in runs)
    unstarted_released = sum(int(r.get("released_unstarted", 0)) for r in runs)

    # The provider saw exactly the written answers plus the calls cut off at the deadline:
    # no answer that arrived was thrown away (it would be a call without a completed job).
    calls = _stable_requests(emulator)
    assert calls == after["completed"] + in_flight_released, (calls, after, runs)
    if latency_ms < 5000:
        assert in_flight_released == 0, runs  # 1 s calls all finish within 20 s
        assert after["completed"] >= CONCURRENCY
    else:
        assert in_flight_released > 0, runs  # 8 s calls cannot finish within 4 s
        assert after["completed"] == 0
    assert unstarted_released > 0, runs  # the prefetched jobs went straight back
    # Claiming stopped with the signal: at most the claims of the moment the signal was
    # being delivered (the old drain made 1,500 claims after it).
    assert claimed_after is not None and claimed_after[0] <= 2 * CONCURRENCY, claimed_after
