"""Realtime behaviour (issue #13, part 5) through the real drain, real Postgres and real HTTP
to the emulator: the breaker counts failed calls, rate-limited jobs wait for the next free
slot of the tier that blocks them, a moderation rejection fails that job only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.fixtures.pipeline import point_env_at_emulator
from worker.config import get_settings
from worker.emulator import Emulator
from worker.realtime.drain import reset_clients, run_drain
from worker.routing import reset_providers


@pytest.fixture
def rt(db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    reset_providers()
    reset_clients()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_realtime_settings SET backoff_base_seconds = 0.1, linger_seconds = 0.2"
        )
    yield emulator
    get_settings.cache_clear()
    reset_providers()
    reset_clients()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async def autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)

    p = AsyncConnectionPool(db_url, min_size=1, max_size=4, configure=autocommit, open=False)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


def insert_jobs(
    db: psycopg.Connection[Any],
    n: int,
    provider: str = "openai",
    model: str = "gpt-4.1-mini",
    max_attempts: int | None = None,
    text: str = "Text",
) -> None:
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, max_attempts)"
        " SELECT 'completion', %s, %s, %s || ' ' || g, %s FROM generate_series(1, %s) g",
        (provider, model, text, max_attempts, n),
    )


def health(db: psycopg.Connection[Any], provider: str = "openai") -> dict[str, Any]:
    row = db.execute(
        "SELECT state, consecutive_failures, times_opened FROM provider_health WHERE provider = %s",
        (provider,),
    ).fetchone()
    return dict(row) if row else {}


# ------------------------------------------------------------------------------ breaker


async def test_breaker_counts_every_failed_call_and_opens_at_the_fifth(
    rt: Emulator,
    db: psycopg.Connection[Any],
    pool: AsyncConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BREAKER_FAILURE_THRESHOLD", "5")
    monkeypatch.setenv("BREAKER_COOLDOWN_SECONDS", "600")
    db.execute("UPDATE ai_realtime_settings SET provider_concurrency = '{\"openai\": 10}'")
    rt.configure(latency_ms=100, http_faults=[{"kind": "server", "provider": "openai", "count": 4}])
    insert_jobs(db, 4, max_attempts=1)
    await run_drain(pool)
    # Four calls failed together (one flush): four counted, still closed.
    assert health(db) == {"state": "closed", "consecutive_failures": 4, "times_opened": 0}

    rt.configure(http_faults=[{"kind": "server", "provider": "openai", "count": 6}])
    insert_jobs(db, 6, max_attempts=1)
    await run_drain(pool)
    # Ten failed calls: the fifth opened the breaker (once), every one was counted.
    assert health(db) == {"state": "open", "consecutive_failures": 10, "times_opened": 1}
    assert rt.stats()["openai"]["requests"] == 10
    alerts = db.execute(
        "SELECT count(*) AS n FROM worker_alerts WHERE dedup_key = 'breaker:openai'"
    ).fetchone()
    assert alerts == {"n": 1}

    # Open: the next jobs are not sent at all.
    insert_jobs(db, 3)
    await run_drain(pool)
    assert rt.stats()["openai"]["requests"] == 10
    assert db.execute(
        "SELECT count(*) AS n FROM ai_jobs WHERE status = 'pending' AND attempts = 0"
    ).fetchone() == {"n": 3}
