"""Batch-level failures classified by cause, partial and late results (issue 12, builds 4-6):
the real pipeline, through the official SDKs, against the emulator's real limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import adrain, batch_ids, insert_questions, one_round, status_counts
from tests.fixtures.settings import configure
from tests.integration.test_failure_modes import comment_counts, only
from worker.commentary import poll, submit
from worker.config import get_settings
from worker.emulator import Emulator
from worker.ops import metrics

pytestmark = pytest.mark.timeout(180)


def requests(db: psycopg.Connection[Any], model_key: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT status, attempts, free_retries, last_error FROM ai_commentary_requests"
        " WHERE model_key = %s",
        (model_key,),
    ).fetchall()


def alerts(db: psycopg.Connection[Any], like: str) -> list[str]:
    rows = db.execute(
        "SELECT message FROM worker_alerts WHERE dedup_key LIKE %s", (like,)
    ).fetchall()
    return [r["message"] for r in rows]


async def test_cancelled_batch_ingests_its_partial_results(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 30)
    # An operator cancels the batch while it runs: cancelling, then cancelled with the
    # lines done so far in the output file.
    pipeline.configure(batch_outcome="cancelled", cancel_done_share=0.5)
    await one_round(opened_app.connector.pool, db)
    job = db.execute(
        "SELECT state, status, succeeded_count, missing_count, failure_cause, failure_reason"
        " FROM ai_commentary_batch_jobs"
    ).fetchone()
    assert job is not None and job["state"] == "cancelled" and job["status"] == "cancelled"
    assert 0 < job["succeeded_count"] < 30
    assert job["succeeded_count"] + job["missing_count"] == 30
    assert job["failure_cause"] == "cancelled"
    assert comment_counts(db) == {"chatgpt": job["succeeded_count"]}
    rows = requests(db, "chatgpt")
    waiting = [r for r in rows if r["status"] == "waiting"]
    assert len(waiting) == job["missing_count"]
    # an operator's cancel is not the requests' fault
    assert {(r["attempts"], r["free_retries"]) for r in waiting} == {(0, 1)}
    assert all("cancelled" in r["last_error"] for r in waiting)
    pipeline.configure(batch_outcome=None)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 30}
    stats = pipeline.stats()["openai"]
    assert stats["paid_twice"] == []  # the partial lines were not sent again


async def test_late_gemini_results_are_ingested_once(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, gemini=True)
    insert_questions(db, 12)
    # SUCCEEDED, but no responses file for the next 3 reads
    pipeline.configure(gemini_output_delay_polls=3, strict_api_versions=True)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    for _ in range(3):
        report = await poll.run_poll(pool, job_id)
        assert report["results"] == "not readable yet"
        assert comment_counts(db) == {}
        row = db.execute(
            "SELECT state, results_pending_since FROM ai_commentary_batch_jobs"
        ).fetchone()
        assert row is not None and row["state"] == "in_flight" and row["results_pending_since"]
    report = await poll.run_poll(pool, job_id)
    assert report["succeeded"] == 12
    assert comment_counts(db) == {"gemini": 12}
    assert {r["status"] for r in requests(db, "gemini")} == {"succeeded"}
    stats = pipeline.stats()["gemini"]
    assert stats["batches_created"] == 1 and stats["paid_twice"] == []
    assert {(r["attempts"], r["free_retries"]) for r in requests(db, "gemini")} == {(0, 0)}


async def test_results_that_never_become_readable_are_missing_without_an_attempt(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTS_GRACE_SECONDS", "0")
    get_settings.cache_clear()
    only(db, gemini=True)
    insert_questions(db, 5)
    pipeline.configure(gemini_output_delay_polls=100)
    await one_round(opened_app.connector.pool, db)
    job = db.execute(
        "SELECT state, missing_count, error, failure_cause, failure_reason"
        " FROM ai_commentary_batch_jobs"
    ).fetchone()
    assert job is not None and job["state"] == "ingested" and job["missing_count"] == 5
    assert job["failure_cause"] == "provider"
    assert "named no results file" in job["failure_reason"]
    assert {(r["attempts"], r["free_retries"]) for r in requests(db, "gemini")} == {(0, 1)}


async def test_gemini_generic_429_on_create_backs_off_and_never_stops_the_provider(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(
        monkeypatch,
        BREAKER_FAILURE_THRESHOLD="2",
        BREAKER_COOLDOWN_SECONDS="3",
        BREAKER_PROBE_TIMEOUT_SECONDS="3",
    )
    only(db, gemini=True)
    db.execute("UPDATE ai_commentary_settings SET quota_disables_feature = true")
    insert_questions(db, 6)
    # The project is at its concurrent-batch cap: every create (and listing) answers the
    # generic 429 RESOURCE_EXHAUSTED "check your plan and billing details", no details.
    pipeline.configure(gemini_max_concurrent_batches=0)
    pool = opened_app.connector.pool
    for _ in range(3):
        await submit.run_submit(pool)
    assert db.execute("SELECT count(*) AS n FROM provider_stops").fetchone() == {"n": 0}
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": True
    }
    health = db.execute(
        "SELECT state, consecutive_failures FROM provider_health WHERE provider = 'gemini'"
    ).fetchone()
    # rate limiting: the breaker counts it and opens, and submit backs off
    assert health is not None and health["state"] == "open"
    calls = pipeline.stats()["gemini"]["requests"]
    await submit.run_submit(pool)
    assert pipeline.stats()["gemini"]["requests"] == calls  # not called while open
    errors = db.execute(
        "SELECT kind, message FROM worker_errors WHERE provider = 'gemini'"
    ).fetchall()
    assert errors and all(e["kind"] == "retryable" for e in errors), errors
    assert "RESOURCE_EXHAUSTED" in errors[0]["message"]
    assert {r["attempts"] for r in requests(db, "gemini")} == {0}
    assert pipeline.stats()["gemini"]["batches_created"] == 0
    pipeline.configure(gemini_max_concurrent_batches=None)
    # after the cooldown one probe call finds the provider healthy again
    assert await adrain(90) == 0
    assert status_counts(db) == {"completed": 6}
    assert db.execute("SELECT count(*) AS n FROM provider_stops").fetchone() == {"n": 0}


async def test_the_failure_reason_reaches_the_batch_row_errors_and_alert(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 10)
    # The queue is full: the create succeeds, then the batch fails validation.
    pipeline.configure(openai_enqueued_tokens_per_model=50)
    await one_round(opened_app.connector.pool, db)
    job = db.execute(
        "SELECT id, state, failure_cause, failure_reason FROM ai_commentary_batch_jobs"
    ).fetchone()
    assert job is not None and job["state"] == "failed"
    assert job["failure_cause"] == "limit"
    expected = (
        "token_limit_exceeded: Enqueued token limit reached for gpt-4.1-mini in organization "
        "org-emulator. Limit: 50 enqueued tokens. Please try again once some in_progress "
        "batches have been completed."
    )
    assert job["failure_reason"] == expected
    errors = db.execute(
        "SELECT message FROM worker_errors WHERE kind = 'batch_limit' AND batch_job_id = %s",
        (job["id"],),
    ).fetchall()
    assert len(errors) == 1 and expected.rstrip(".") + "; 10 requests" in errors[0]["message"]
    (alert,) = alerts(db, "batch-failed:openai")
    assert alert.startswith(f"State failed: {expected} batch ")
    assert "without spending an attempt" in alert
    # a limit is not the requests' fault
    assert {(r["status"], r["attempts"]) for r in requests(db, "chatgpt")} == {("waiting", 0)}
    assert all(expected in r["last_error"] for r in requests(db, "chatgpt"))
    async with opened_app.connector.pool.connection() as conn:
        scrape = metrics.Scrape(now=datetime.now(UTC), db=(None, 0))
        families = {f.name: f for f in await metrics._batches(conn, scrape)}
    (sample,) = families["ai_worker_batch_failures"].samples  # exported with _total
    assert sample.labels == {"provider": "openai", "stage": "comment", "cause": "limit"}
    assert sample.value == 1


async def test_a_request_level_failure_reason_reaches_the_question(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, gemini=True)
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 1")
    insert_questions(db, 3)
    pipeline.configure(batch_outcome="failed", batch_failure_code="invalid_request")
    await one_round(opened_app.connector.pool, db)
    job = db.execute(
        "SELECT failure_cause, failure_reason FROM ai_commentary_batch_jobs"
    ).fetchone()
    assert job == {
        "failure_cause": "request",
        "failure_reason": "INVALID_ARGUMENT: The batch job failed: invalid_request.",
    }
    assert status_counts(db) == {"failed": 3}
    errors = {r["e"] for r in db.execute("SELECT ai_commentary_error AS e FROM questions")}
    assert errors == {
        "gemini: the batch failed (INVALID_ARGUMENT: The batch job failed: invalid_request.)"
    }


async def test_an_expired_output_file_is_an_error_with_its_reason(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTS_GRACE_SECONDS", "0")
    get_settings.cache_clear()
    only(db, chatgpt=True)
    insert_questions(db, 6)
    pipeline.configure(file_ttl_seconds=1.0)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    batch_id = db.execute("SELECT batch_id FROM ai_commentary_batch_jobs").fetchone()
    assert batch_id is not None
    # The batch completes (its output file is written now), and nobody reads it in time.
    b = pipeline.store.get_batch("openai", batch_id["batch_id"])
    assert b is not None
    from worker.emulator.lifecycle import advance

    advance(pipeline.store, b)
    assert b.output_file_id
    await asyncio.sleep(1.1)
    await poll.run_poll(pool, job_id)
    job = db.execute(
        "SELECT state, missing_count, error, failure_cause FROM ai_commentary_batch_jobs"
    ).fetchone()
    assert job is not None and job["state"] == "ingested" and job["missing_count"] == 6
    assert job["error"].startswith("results file gone at the provider (expired or deleted)")
    assert "status=404" in job["error"]
    assert job["failure_cause"] == "provider"
    # paid for and gone: not the requests' fault, and said loudly
    assert {(r["attempts"], r["free_retries"]) for r in requests(db, "chatgpt")} == {(0, 1)}
    assert any("results file gone" in m for m in alerts(db, "batch-error:openai"))
