"""The resilience hooks against real Postgres and a fake Pushover: breaker state shared
through provider_health, one half-open probe, provider stops and their re-enable SQL, the
daily budget, batch alerts, and bookkeeping that never raises into the pipeline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.fixtures.pipeline import insert_questions
from tests.fixtures.settings import configure
from tests.integration import test_alerts
from tests.integration.test_alerts import FakePushover
from worker.commentary.claim import load_settings
from worker.commentary.ingest import IngestCounts
from worker.commentary.rows import BatchJob
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.ops import resilience
from worker.providers.base import BatchState, BatchStatus

# The fake Pushover fixtures (Pushover is off unless a test asks for the fake).
pushover = test_alerts.pushover
pushover_off = test_alerts.pushover_off

K = ErrorKind


def perr(kind: ErrorKind, provider: str = "openai", status: int | None = 500) -> ProviderError:
    return ProviderError(
        f"{kind.value} from the test", kind=kind, provider=provider, status_code=status
    )


@pytest.fixture
def breaker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        BREAKER_FAILURE_THRESHOLD="3",
        BREAKER_COOLDOWN_SECONDS="0.4",
        BREAKER_PROBE_TIMEOUT_SECONDS="0.4",
    )


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def connections(db_url: str, n: int) -> list[psycopg.AsyncConnection[Any]]:
    return [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(n)]


def health(db: psycopg.Connection[Any], provider: str) -> dict[str, Any] | None:
    return db.execute("SELECT * FROM provider_health WHERE provider = %s", (provider,)).fetchone()


def alert_keys(db: psycopg.Connection[Any]) -> list[str]:
    return [r["dedup_key"] for r in db.execute("SELECT dedup_key FROM worker_alerts ORDER BY id")]


# ------------------------------------------------------------------------------ breaker


async def test_breaker_opens_after_consecutive_failures_and_alerts_once(
    breaker_env: None,
    pushover: FakePushover,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
) -> None:
    for _ in range(2):
        await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE, status=429))
    assert health(db, "openai")["state"] == "closed"  # type: ignore[index]
    assert await resilience.blocked_providers(aconn) == set()
    await resilience.on_provider_error(aconn, "openai", perr(K.UNKNOWN, status=None))
    h = health(db, "openai")
    assert h is not None
    assert (h["state"], h["consecutive_failures"], h["times_opened"]) == ("open", 3, 1)
    assert h["last_error_kind"] == "unknown" and h["opened_at"] is not None
    # more failures while open: still one alert
    await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE))
    assert alert_keys(db) == ["breaker:openai"]
    assert len(pushover.messages) == 1 and "circuit open" in pushover.messages[0]["title"]
    # open: blocked for everyone; other providers go on
    assert await resilience.blocked_providers(aconn) == {"openai"}
    assert health(db, "gemini") is None


async def test_request_faults_never_count_and_success_resets(
    breaker_env: None, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    for kind in (K.INVALID_REQUEST, K.CONTENT_REFUSED, K.CONTEXT_TOO_LONG) * 3:
        await resilience.on_provider_error(aconn, "mistral", perr(kind, "mistral", 400))
    assert health(db, "mistral") is None
    # one alert per kind (deduplicated), no breaker
    assert sorted(alert_keys(db)) == [
        "request-error:mistral:content_refused",
        "request-error:mistral:context_too_long",
        "request-error:mistral:invalid_request",
    ]
    # ConfigError (our configuration) says nothing about the provider
    await resilience.on_provider_error(aconn, "mistral", ConfigError("no key"))
    assert health(db, "mistral") is None
    # two failures, a success, two failures: never 3 consecutive
    for outcome in ("f", "f", "s", "f", "f"):
        if outcome == "f":
            await resilience.on_provider_error(aconn, "mistral", perr(K.RETRYABLE, "mistral"))
        else:
            await resilience.on_provider_success(aconn, "mistral")
    h = health(db, "mistral")
    assert h is not None and (h["state"], h["consecutive_failures"]) == ("closed", 2)
    assert h["last_success_at"] is not None
    # plain exceptions are classified: a connection error counts
    await resilience.on_provider_error(aconn, "mistral", ConnectionResetError("reset"))
    assert health(db, "mistral")["state"] == "open"  # type: ignore[index]


async def test_half_open_hands_out_exactly_one_probe(
    breaker_env: None,
    db_url: str,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
) -> None:
    for _ in range(3):
        await resilience.on_provider_error(aconn, "gemini", perr(K.RETRYABLE, "gemini"))
    conns = await connections(db_url, 8)
    try:
        assert all(
            b == {"gemini"}
            for b in await asyncio.gather(*(resilience.blocked_providers(c) for c in conns))
        )
        await asyncio.sleep(0.45)  # cooldown over
        results = await asyncio.gather(*(resilience.blocked_providers(c) for c in conns))
        assert sorted(len(b) for b in results) == [0] + [1] * 7  # one caller probes
        h = health(db, "gemini")
        assert h is not None and h["state"] == "half_open" and h["probe_started_at"]
        # the probe succeeds: closed for everyone
        await resilience.on_provider_success(conns[0], "gemini")
        assert all(
            b == set()
            for b in await asyncio.gather(*(resilience.blocked_providers(c) for c in conns))
        )
        h = health(db, "gemini")
        assert h is not None and (h["state"], h["consecutive_failures"]) == ("closed", 0)
    finally:
        for c in conns:
            await c.close()


async def test_failed_probe_reopens_and_an_abandoned_probe_is_handed_out_again(
    breaker_env: None,
    db_url: str,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
) -> None:
    for _ in range(3):
        await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE))
    first_open = health(db, "openai")["opened_at"]  # type: ignore[index]
    await asyncio.sleep(0.45)
    assert await resilience.blocked_providers(aconn) == set()  # we hold the probe
    await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE))  # probe fails
    h = health(db, "openai")
    assert h is not None and h["state"] == "open" and h["opened_at"] > first_open
    assert h["times_opened"] == 2
    assert await resilience.blocked_providers(aconn) == {"openai"}  # fresh cooldown
    await asyncio.sleep(0.45)
    assert await resilience.blocked_providers(aconn) == set()  # probe taken, never resolved
    (other,) = await connections(db_url, 1)
    try:
        assert await resilience.blocked_providers(other) == {"openai"}
        await asyncio.sleep(0.45)  # the probe timed out: handed out again, once
        assert await resilience.blocked_providers(other) == set()
        assert await resilience.blocked_providers(aconn) == {"openai"}
    finally:
        await other.close()


async def test_probes_are_claimed_only_by_callers_about_to_call_the_provider(
    breaker_env: None,
    db_url: str,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
) -> None:
    for provider in ("openai", "gemini"):
        for _ in range(3):
            await resilience.on_provider_error(aconn, provider, perr(K.RETRYABLE, provider))
    await asyncio.sleep(0.45)
    # a poll of a mistral batch leaves both probes alone (and is not blocked itself)
    assert await resilience.blocked_providers(aconn, providers={"mistral"}) == {"openai", "gemini"}
    rows = db.execute("SELECT provider, state FROM provider_health ORDER BY 1").fetchall()
    assert [r["state"] for r in rows] == ["open", "open"]
    # a caller about to call gemini takes only gemini's probe
    assert await resilience.blocked_providers(aconn, providers=["gemini"]) == {"openai"}
    (other,) = await connections(db_url, 1)
    try:
        assert await resilience.blocked_providers(other, providers=["gemini", "openai"]) == {
            "gemini"
        }
    finally:
        await other.close()
    # each claim schedules a submit for when an unused probe expires
    jobs = db.execute(
        "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo'"
        " AND queueing_lock LIKE 'submit:probe:%%' ORDER BY 1"
    ).fetchall()
    assert [j["queueing_lock"] for j in jobs] == ["submit:probe:gemini", "submit:probe:openai"]


async def test_probe_claim_inside_a_callers_transaction_never_waits(
    breaker_env: None, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    """poll holds a transaction (batch row locked) across the hooks; another process must
    neither wait for it nor get a second probe."""
    for _ in range(3):
        await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE))
    await asyncio.sleep(0.45)
    (other,) = await connections(db_url, 1)
    try:
        async with aconn.transaction():
            assert await resilience.blocked_providers(aconn) == set()
            blocked = await asyncio.wait_for(resilience.blocked_providers(other), 2)
            assert blocked == {"openai"}
            await resilience.on_provider_success(aconn, "openai")
            cur = await aconn.execute("SELECT 1")  # the caller's transaction is intact
            assert await cur.fetchone() == (1,)
        assert await resilience.blocked_providers(other) == set()
    finally:
        await other.close()


# ------------------------------------------------------------------------- stops


async def test_quota_stops_only_that_provider_once_until_re_enabled(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    for _ in range(4):
        await resilience.on_provider_error(aconn, "openai", perr(K.QUOTA, status=429))
    stops = db.execute("SELECT * FROM provider_stops").fetchall()
    assert len(stops) == 1
    assert (stops[0]["provider"], stops[0]["kind"], stops[0]["cleared_at"]) == (
        "openai",
        "quota",
        None,
    )
    assert "quota" in stops[0]["reason"] and stops[0]["stopped_at"] is not None
    assert len(pushover.messages) == 1
    msg = pushover.messages[0]
    assert msg["priority"] == "1" and "openai stopped (quota)" in msg["title"]
    assert "SELECT worker_resume_provider('openai');" in msg["message"]
    assert health(db, "openai") is None  # quota is not a breaker matter
    assert await resilience.blocked_providers(aconn) == {"openai"}
    # the feature stays on (quota_disables_feature defaults to false)
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": True
    }
    err = db.execute("SELECT kind, provider FROM worker_errors WHERE kind = 'provider_stopped'")
    assert err.fetchall() == [{"kind": "provider_stopped", "provider": "openai"}]

    # the documented one-statement re-enable; it also wakes submit
    db.execute("DELETE FROM procrastinate_jobs")
    db.execute(
        "UPDATE provider_stops SET cleared_at = now()"
        " WHERE provider = 'openai' AND cleared_at IS NULL"
    )
    assert await resilience.blocked_providers(aconn) == set()
    jobs = db.execute("SELECT task_name FROM procrastinate_jobs WHERE status = 'todo'").fetchall()
    assert jobs == [{"task_name": "submit"}]

    # a later quota error is a new stop with its own alert
    await resilience.on_provider_error(aconn, "openai", perr(K.QUOTA, status=429))
    assert len(pushover.messages) == 2
    assert db.execute("SELECT worker_resume_provider('openai') AS n").fetchone() == {"n": 1}
    assert db.execute("SELECT worker_resume_provider('openai') AS n").fetchone() == {"n": 0}
    assert await resilience.blocked_providers(aconn) == set()


async def test_auth_stops_with_its_own_reason(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    await resilience.on_provider_error(aconn, "mistral", perr(K.AUTH, "mistral", 401))
    await resilience.on_provider_error(aconn, "gemini", perr(K.RETRYABLE, "gemini"))
    rows = db.execute("SELECT provider, kind FROM provider_stops").fetchall()
    assert rows == [{"provider": "mistral", "kind": "auth"}]
    assert await resilience.blocked_providers(aconn) == {"mistral"}
    # recorded even though Pushover is not configured here
    assert db.execute("SELECT dedup_key, status, priority FROM worker_alerts").fetchall() == [
        {"dedup_key": f"stop:mistral:{1}", "status": "disabled", "priority": 1}
    ]


async def test_quota_can_switch_the_feature_off_by_configuration(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute("UPDATE ai_commentary_settings SET quota_disables_feature = true")
    await resilience.on_provider_error(aconn, "gemini", perr(K.AUTH, "gemini", 400))
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": True
    }  # auth never switches the feature off
    await resilience.on_provider_error(aconn, "openai", perr(K.QUOTA, status=429))
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": False
    }
    row = db.execute("SELECT message FROM worker_alerts WHERE dedup_key LIKE 'stop:openai:%'")
    assert "feature_enabled = true" in row.fetchone()["message"]  # type: ignore[index]


async def test_manual_stop_blocks(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason)"
        " VALUES ('deepseek', 'manual', 'maintenance')"
    )
    assert await resilience.blocked_providers(aconn) == {"deepseek"}


# ------------------------------------------------------------------------ budget


async def test_daily_budget_pauses_submissions_and_alerts_once_a_day(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    q1, q2, q3 = insert_questions(db, 3, status="completed")
    db.execute(
        "INSERT INTO ai_answer_comments (question_id, model_key, cost_usd, updated_at) VALUES"
        " (%s, 'chatgpt', 0.30, now()), (%s, 'gemini', 0.25, now()),"
        " (%s, 'mistral', 5.00, now() - interval '2 days')",
        (q1, q2, q3),
    )
    db.execute(
        "INSERT INTO ai_commentary_summaries (question_id, cost_usd, updated_at)"
        " VALUES (%s, 0.20, now())",
        (q1,),
    )
    spent = db.execute("SELECT worker_spent_usd_since(date_trunc('day', now(), 'UTC')) AS s")
    assert spent.fetchone() == {"s": Decimal("0.75")}  # the 2-day-old 5.00 does not count

    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = NULL")
    assert not await resilience.budget_exhausted(aconn, await load_settings(aconn))
    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = 0.80")
    assert not await resilience.budget_exhausted(aconn, await load_settings(aconn))
    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = 0.75")
    settings = await load_settings(aconn)
    assert await resilience.budget_exhausted(aconn, settings)
    assert await resilience.budget_exhausted(aconn, settings)
    assert len(pushover.messages) == 1
    assert "daily budget" in pushover.messages[0]["title"]
    assert alert_keys(db)[0].startswith("budget:")


async def test_budget_counts_ai_jobs(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    ids = [
        r["id"]
        for r in db.execute(
            "INSERT INTO ai_jobs (kind, provider, input_text)"
            " SELECT 'chat', 'mock', 'x' FROM generate_series(1, 3) RETURNING id"
        ).fetchall()
    ]
    for job_id, cost, completed, created in [
        (ids[0], 2.5, "now()", "now() - interval '3 days'"),
        (ids[1], 9, "now() - interval '3 days'", "now()"),
        (ids[2], None, "now()", "now()"),
    ]:
        db.execute(
            "UPDATE ai_jobs SET status = 'completed', cost_usd = %s,"
            " completed_at = now() - %s::interval, created_at = now() - %s::interval"
            " WHERE id = %s",
            (
                cost,
                "3 days" if "3 days" in completed else "0",
                "3 days" if "3 days" in created else "0",
                job_id,
            ),
        )
    spent = db.execute("SELECT worker_spent_usd_since(date_trunc('day', now(), 'UTC')) AS s")
    assert spent.fetchone() == {"s": Decimal("2.5")}  # by completion time, not creation
    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = 2")
    assert await resilience.budget_exhausted(aconn, await load_settings(aconn))


async def test_exhausted_budget_stops_submit_from_claiming(
    pipeline: Any, db_url: str, db: psycopg.Connection[Any]
) -> None:
    from worker.commentary.submit import run_submit

    insert_questions(db, 4)
    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = 0")
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
    ) as pool:
        assert await run_submit(pool) == {"budget_exhausted": True}
        rows = db.execute("SELECT ai_commentary_status AS s FROM questions").fetchall()
        assert {r["s"] for r in rows} == {"pending"}
        db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = 100")
        report = await run_submit(pool)
    assert report["claimed"] == 4 and report["batches"] >= 1


# ------------------------------------------------------------------- batch alerts


def job(request_count: int = 10, provider: str = "gemini") -> BatchJob:
    return BatchJob(
        id=uuid.UUID("00000000-0000-0000-0000-000000000001"),
        provider=provider,
        model_key="gemini",
        model_name="gemini-2.5-flash",
        batch_id="batches/1",
        state="in_flight",
        status="RUNNING",
        poll_count=0,
        created_at=None,
        stage="comment",
        request_count=request_count,
    )


def status(state: BatchState) -> BatchStatus:
    return BatchStatus(batch_id="batches/1", state=state, raw_state=f"RAW_{state.value}")


@pytest.mark.parametrize(
    ("state", "failed", "missing", "error", "keys"),
    [
        (BatchState.COMPLETED, 0, 0, None, []),
        (BatchState.COMPLETED, 1, 1, None, []),  # 20% exactly: not more than 20%
        (BatchState.COMPLETED, 2, 1, None, ["batch-failed-lines:gemini"]),
        (
            BatchState.COMPLETED,
            0,
            10,
            "completed batch has no output file",
            ["batch-failed-lines:gemini", "batch-error:gemini"],
        ),
        (BatchState.FAILED, 0, 10, None, ["batch-failed:gemini"]),
        (BatchState.EXPIRED, 0, 4, None, ["batch-expired:gemini"]),
        (BatchState.CANCELLED, 0, 10, None, ["batch-cancelled:gemini"]),
        (BatchState.COMPLETED, 0, 0, "reading results failed: boom", ["batch-error:gemini"]),
    ],
)
async def test_batch_finished_alerts(
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
    state: BatchState,
    failed: int,
    missing: int,
    error: str | None,
    keys: list[str],
) -> None:
    counts = IngestCounts(succeeded=10 - failed - missing, failed=failed, missing=missing)
    await resilience.on_batch_finished(aconn, job(), status(state), counts, error)
    assert alert_keys(db) == keys


async def test_an_outage_of_failed_batches_is_a_handful_of_messages(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    for i in range(40):
        for provider in ("openai", "gemini", "mistral"):
            await resilience.on_batch_finished(
                aconn,
                job(provider=provider),
                status(BatchState.FAILED),
                IngestCounts(missing=10),
                "reading results failed" if i % 2 else None,
            )
    assert len(pushover.messages) <= 5
    row = db.execute("SELECT sum(suppressed) + count(*) AS n FROM worker_alerts").fetchone()
    assert row == {"n": 120 + 60}  # every occurrence accounted for


# ------------------------------------------------------------------ never raises


async def test_bookkeeping_failures_never_reach_the_pipeline(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute("DROP TABLE provider_health")
    db.execute("DROP TABLE worker_alert_keys")
    async with aconn.transaction():  # as in poll: inside the caller's transaction
        await resilience.on_provider_error(aconn, "openai", perr(K.RETRYABLE))
        await resilience.on_provider_success(aconn, "openai")
        await resilience.on_batch_finished(
            aconn, job(), status(BatchState.FAILED), IngestCounts(missing=10), None
        )
        assert await resilience.blocked_providers(aconn) == set()  # fails open
        cur = await aconn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
    kinds = db.execute("SELECT fingerprint FROM worker_errors ORDER BY fingerprint").fetchall()
    assert [r["fingerprint"] for r in kinds] == [
        "alert:bookkeeping",
        "resilience:blocked",
        "resilience:error:openai",
        "resilience:success:openai",
    ]
