"""Realtime behaviour (issue #13, part 5) through the real drain, real Postgres and real HTTP
to the emulator: the breaker counts failed calls, rate-limited jobs wait for the next free
slot of the tier that blocks them, a moderation rejection fails that job only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.settings import configure
from worker.config import get_settings
from worker.emulator import Emulator
from worker.providers.routing import reset_providers
from worker.realtime.drain import reset_clients, run_drain


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
    configure(monkeypatch, BREAKER_FAILURE_THRESHOLD="5", BREAKER_COOLDOWN_SECONDS="600")
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


# ------------------------------------------------------------------------------ rate limits


def acquire(db: psycopg.Connection[Any], n: int, at: str, provider: str = "mistral") -> Any:
    return db.execute(
        "SELECT granted, retry_at FROM ai_rate_acquire_at(%s, 'mistral-small-latest',"
        " array_fill(10, ARRAY[%s]), %s::timestamptz)",
        (provider, n, at),
    ).fetchone()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_rate_limited_jobs_wait_for_the_next_free_slot_of_the_blocking_tier(
    db: psycopg.Connection[Any],
) -> None:
    # 5 per minute and 8 per hour, ten jobs queued at 10:00:30 (a fixed clock: the windows
    # are checked from the ledger, never by waiting for them).
    db.execute(
        "INSERT INTO ai_rate_limits (provider, model, rpm, requests_per_hour)"
        " VALUES ('mistral', '*', 5, 8)"
    )
    first = acquire(db, 10, "2026-01-05 10:00:30+00")
    # The 6th is held by the minute limit only: next minute, not the end of the hour.
    assert first == {"granted": 5, "retry_at": utc("2026-01-05 10:01:00")}
    second = acquire(db, 5, "2026-01-05 10:01:00+00")
    # The 6th-8th start in the next minute; the 9th is held by the hour limit.
    assert second == {"granted": 3, "retry_at": utc("2026-01-05 11:00:00")}
    assert acquire(db, 2, "2026-01-05 10:01:10+00") == {
        "granted": 0,
        "retry_at": utc("2026-01-05 11:00:00"),
    }
    ledger = db.execute(
        "SELECT unit, window_start, requests FROM ai_rate_usage ORDER BY unit, window_start"
    ).fetchall()
    assert [(r["unit"], r["window_start"], r["requests"]) for r in ledger] == [
        ("hour", utc("2026-01-05 10:00:00"), 8),
        ("minute", utc("2026-01-05 10:00:00"), 5),
        ("minute", utc("2026-01-05 10:01:00"), 3),
    ]


def test_a_weekly_tier_waits_for_monday_and_month_still_counts(
    db: psycopg.Connection[Any],
) -> None:
    db.execute(
        "INSERT INTO ai_rate_limits (provider, model, requests_per_week, requests_per_month)"
        " VALUES ('mistral', '*', 2, 100)"
    )
    # Thursday 2026-01-08: two this week, the third waits for Monday 2026-01-12 00:00 UTC.
    assert acquire(db, 3, "2026-01-08 12:00:00+00") == {
        "granted": 2,
        "retry_at": utc("2026-01-12 00:00:00"),
    }
    assert acquire(db, 1, "2026-01-12 00:00:00+00") == {"granted": 1, "retry_at": None}
    rows = db.execute(
        "SELECT unit, window_start, requests FROM ai_rate_usage ORDER BY unit, window_start"
    ).fetchall()
    assert [(r["unit"], r["window_start"], r["requests"]) for r in rows] == [
        ("month", utc("2026-01-01 00:00:00"), 3),
        ("week", utc("2026-01-05 00:00:00"), 2),
        ("week", utc("2026-01-12 00:00:00"), 1),
    ]


async def test_the_drain_gives_jobs_the_next_minute_not_the_end_of_the_hour(
    rt: Emulator, db: psycopg.Connection[Any], pool: AsyncConnectionPool
) -> None:
    # Not across a minute boundary: the next window would admit the waiting jobs mid-test.
    sec = db.execute("SELECT extract(second FROM clock_timestamp()) AS s").fetchone()
    if sec is not None and sec["s"] > 52:
        await asyncio.sleep(60.5 - float(sec["s"]))
    db.execute(
        "INSERT INTO ai_rate_limits (provider, model, rpm, requests_per_hour)"
        " VALUES ('mistral', '*', 5, 8)"
    )
    insert_jobs(db, 10, provider="mistral", model="mistral-small-latest")
    await run_drain(pool)
    done = db.execute(
        "SELECT count(*) AS n, min(called_at) AS t FROM ai_jobs WHERE status = 'completed'"
    ).fetchone()
    assert done is not None and done["n"] == 5
    # The minute window the five used, from the ledger the drain wrote.
    window = db.execute(
        "SELECT window_start FROM ai_rate_usage WHERE unit = 'minute' AND requests = 5"
    ).fetchone()
    assert window is not None
    waiting = db.execute(
        "SELECT DISTINCT next_attempt_at AS at FROM ai_jobs WHERE status = 'pending'"
    ).fetchall()
    assert [r["at"] for r in waiting] == [
        db.execute(
            "SELECT %s::timestamptz + interval '1 minute' AS m", (window["window_start"],)
        ).fetchone()["m"]  # type: ignore[index]
    ]


# ------------------------------------------------------------------------------ moderation


@pytest.mark.parametrize(
    ("provider", "model", "status"),
    [("openrouter", "openai/gpt-4.1-mini", 403), ("openai", "gpt-4.1-mini", 400)],
    ids=["openrouter-403", "openai-400"],
)
async def test_a_moderation_rejection_fails_that_job_only_and_stops_no_provider(
    rt: Emulator,
    db: psycopg.Connection[Any],
    pool: AsyncConnectionPool,
    provider: str,
    model: str,
    status: int,
) -> None:
    db.execute(
        "UPDATE ai_realtime_settings SET provider_concurrency = %s", (f'{{"{provider}": 1}}',)
    )
    rt.configure(http_faults=[{"kind": "moderation", "provider": provider, "count": 1}])
    insert_jobs(db, 5, provider=provider, model=model)
    await run_drain(pool)
    rows = db.execute(
        "SELECT status, error_kind, error, attempts FROM ai_jobs ORDER BY id"
    ).fetchall()
    assert [r["status"] for r in rows] == ["failed"] + ["completed"] * 4
    assert rows[0]["error_kind"] == "content_refused"
    assert f"status={status}" in rows[0]["error"]
    assert db.execute("SELECT count(*) AS n FROM provider_stops").fetchone() == {"n": 0}
    assert health(db, provider).get("state", "closed") == "closed"
    assert rt.stats()[provider]["requests"] == 5  # one call each, no retry of the flagged one


# ------------------------------------------------------------------------------ sessions


def chat(db: psycopg.Connection[Any], session: str) -> None:
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
        " VALUES ('chat', 'openai', 'gpt-4.1-mini', 'Hallo', %s)",
        (session,),
    )


def test_sessions_expire_after_their_age_limit_and_can_be_required_to_exist(
    db: psycopg.Connection[Any],
) -> None:
    chat(db, "new")  # created on the fly by default
    db.execute("UPDATE ai_chat_sessions SET created_at = now() - interval '31 days'")
    with pytest.raises(psycopg.errors.CheckViolation, match="session 'new' has expired"):
        chat(db, "new")  # the default age limit is 30 days (720 hours)
    db.execute("UPDATE ai_realtime_settings SET session_max_age_hours = NULL")
    chat(db, "new")  # no limit
    db.execute("UPDATE ai_realtime_settings SET session_max_age_hours = 720")

    db.execute("UPDATE ai_realtime_settings SET require_sessions = true")
    with pytest.raises(psycopg.errors.CheckViolation, match="session 'unknown' does not exist"):
        chat(db, "unknown")
    assert db.execute(
        "SELECT count(*) AS n FROM ai_chat_sessions WHERE id = 'unknown'"
    ).fetchone() == {"n": 0}
    db.execute("INSERT INTO ai_chat_sessions (id) VALUES ('known')")
    chat(db, "known")
    assert db.execute(
        "SELECT session_id, count(*) AS n FROM ai_jobs GROUP BY 1 ORDER BY 1"
    ).fetchall() == [{"session_id": "known", "n": 1}, {"session_id": "new", "n": 2}]


# ------------------------------------------------------------------------------ retention


async def test_the_tick_deletes_old_rows_in_small_batches(
    db: psycopg.Connection[Any], opened_app: Any
) -> None:
    from worker.ops import maintenance

    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'mock', 'mock', 'Text ' || g FROM generate_series(1, 6) g"
    )
    # ids 1-3 completed 40 days ago (> 30), 4 completed today, 5 failed 100 days ago
    # (> 90), 6 failed 40 days ago (< 90: kept).
    db.execute(
        "UPDATE ai_jobs SET status = CASE WHEN id <= 4 THEN 'completed' ELSE 'failed' END,"
        " completed_at = now() - CASE id WHEN 4 THEN interval '1 hour'"
        "   WHEN 5 THEN interval '100 days' ELSE interval '40 days' END"
    )
    db.execute(
        "INSERT INTO ai_chat_sessions (id, created_at) VALUES ('old', now() - interval '61 days'),"
        " ('recent', now() - interval '40 days')"
    )
    db.execute(
        "INSERT INTO ai_chat_messages (session_id, role, content)"
        " SELECT s, 'user', 'Frage' FROM unnest(ARRAY['old', 'old', 'recent']) s"
    )
    db.execute(
        "INSERT INTO ai_rate_usage (provider, model, unit, window_start, requests) VALUES"
        " ('openai', '*', 'minute', date_trunc('minute', now() - interval '3 days'), 1),"
        " ('openai', '*', 'second', date_trunc('second', now() - interval '5 days'), 1),"
        " ('openai', '*', 'hour', date_trunc('hour', now()), 1),"
        " ('openai', '*', 'month', date_trunc('month', now()), 1)"
    )
    db.execute(
        "INSERT INTO worker_alerts (dedup_key, title, message, status, created_at) VALUES"
        " ('a', 't', 'm', 'disabled', now() - interval '100 days'),"
        " ('b', 't', 'm', 'disabled', now())"
    )
    db.execute(
        "INSERT INTO worker_task_runs (task_name, started_at, finished_at, outcome)"
        " VALUES ('tick', now() - interval '8 days', now() - interval '8 days', 'ok')"
    )
    db.execute("UPDATE worker_retention_settings SET batch_rows = 2")

    pool = opened_app.connector.pool
    first = (await maintenance.run_tick(pool))["retention"]
    assert first == {
        "completed_jobs": 2,  # a batch of two of the three
        "failed_jobs": 1,
        "session_messages": 2,
        "rate_usage": 2,
        "alerts": 1,
        "task_runs": 1,
    }
    second = (await maintenance.run_tick(pool))["retention"]
    assert second == {"completed_jobs": 1}
    assert "retention" not in await maintenance.run_tick(pool)  # nothing left to delete
    assert [r["id"] for r in db.execute("SELECT id FROM ai_jobs ORDER BY id")] == [4, 6]
    assert [r["session_id"] for r in db.execute("SELECT session_id FROM ai_chat_messages")] == [
        "recent"
    ]
    assert [r["unit"] for r in db.execute("SELECT unit FROM ai_rate_usage ORDER BY unit")] == [
        "hour",
        "month",
    ]
    assert [r["dedup_key"] for r in db.execute("SELECT dedup_key FROM worker_alerts")] == ["b"]


# ------------------------------------------------------------------------------ queue view


def test_queue_position_estimates_the_wait_from_recent_throughput(
    db: psycopg.Connection[Any],
) -> None:
    # openai finished 60 jobs over the last minute (1 per second); gemini none recently.
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'Done ' || g FROM generate_series(1, 60) g"
    )
    db.execute(
        "UPDATE ai_jobs SET status = 'completed',"
        " completed_at = now() - (id - 1) * interval '1 second'"
    )
    insert_jobs(db, 30)
    insert_jobs(db, 1, provider="gemini", model="gemini-2.5-flash")
    rows = db.execute(
        "SELECT provider, provider_position, estimated_wait_seconds AS w"
        " FROM ai_job_queue_position ORDER BY id"
    ).fetchall()
    openai = [r for r in rows if r["provider"] == "openai"]
    assert [r["provider_position"] for r in openai] == list(range(1, 31))
    # position / (60 jobs / ~59 s): the 30th waits about 30 s, the 1st about 1 s
    assert 25 <= openai[-1]["w"] <= 35 and 0.5 <= openai[0]["w"] <= 1.5
    assert rows[-1]["provider"] == "gemini" and rows[-1]["w"] is None  # no basis
    # A job waiting for a retry waits at least until then.
    db.execute(
        "UPDATE ai_jobs SET next_attempt_at = now() + interval '300 seconds'"
        " WHERE id = (SELECT max(id) FROM ai_jobs WHERE provider = 'openai')"
    )
    later = db.execute(
        "SELECT estimated_wait_seconds AS w FROM ai_job_queue_position"
        " WHERE provider = 'openai' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert later is not None and later["w"] >= 295


# ------------------------------------------------------------------------------ templates


async def test_the_old_job_type_names_run_as_built_in_templates(
    rt: Emulator, db: psycopg.Connection[Any], pool: AsyncConnectionPool
) -> None:
    kinds = ["ai_generation", "review_processing", "prompt_analysis", "sentiment_analysis"]
    for kind in kinds:
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, input_text)"
            " VALUES (%s, 'openai', 'gpt-4.1-mini', 'Tolles Essen, langsamer Service.')",
            (kind,),
        )
    await run_drain(pool)
    rows = {
        r["kind"]: r
        for r in db.execute("SELECT kind, status, result_text, result_json, error FROM ai_jobs")
    }
    assert {k: rows[k]["status"] for k in kinds} == dict.fromkeys(kinds, "completed"), rows
    assert rows["ai_generation"]["result_text"]
    assert set(rows["review_processing"]["result_json"]) == {
        "sentiment",
        "summary",
        "topics",
        "reply",
    }
    assert rows["sentiment_analysis"]["result_json"]["sentiment"] in (
        "positive",
        "neutral",
        "negative",
    )
    assert set(rows["prompt_analysis"]["result_json"]) == {"intent", "clarity", "suggestions"}


async def test_jobs_of_a_stopped_provider_do_not_make_the_drain_spin(
    rt: Emulator, db: psycopg.Connection[Any], pool: AsyncConnectionPool
) -> None:
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason) VALUES ('openai', 'manual', 't')"
    )
    insert_jobs(db, 3)
    report = await run_drain(pool)
    assert report.get("claimed", 0) == 0 and rt.stats()["openai"]["requests"] == 0
    # The next drain is due in seconds, not at once (it used to run again immediately, one
    # drain a second per process for as long as the stop lasted).
    row = db.execute(
        "SELECT min(scheduled_at) - now() AS wait FROM procrastinate_jobs"
        " WHERE task_name = 'drain' AND status = 'todo' AND scheduled_at IS NOT NULL"
    ).fetchone()
    assert row is not None and row["wait"].total_seconds() > 3
