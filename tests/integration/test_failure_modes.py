"""One test per way the old system lost work (seed-system.md), each showing it cannot
happen here. Stages are driven directly (run_submit / run_poll / run_tick) where timing
matters, and by the real runner (drain) where only the outcome does."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import (
    adrain,
    batch_ids,
    drain,
    insert_questions,
    one_round,
    set_models,
    status_counts,
    submitted_twice,
)
from worker.commentary import custom_ids, ingest, poll, submit
from worker.emulator import Emulator
from worker.ops import maintenance
from worker.providers.base import BatchState, BatchStatus, ResultLine
from worker.providers.routing import providers

pytestmark = pytest.mark.timeout(180)


class SimulatedCrash(BaseException):
    """Stands in for the process dying at that point (nothing after it runs). Not an
    Exception: the worker's error handling (a crashing model is recorded and skipped, issue
    #11) must not see it, as it would never see a killed process."""


def comment_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute(
        "SELECT model_key, count(*) AS n FROM ai_answer_comments GROUP BY 1"
    ).fetchall()
    return {r["model_key"]: r["n"] for r in rows}


def only(db: psycopg.Connection[Any], **models: bool) -> None:
    set_models(db, **{m: False for m in ("chatgpt", "gemini", "mistral", "perplexity", "deepseek")})
    set_models(db, **models)


# 1 — overlapping consume runs processed the same batch twice
async def test_1_concurrent_polls_ingest_a_batch_once(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 30)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    results = await asyncio.gather(*(poll.run_poll(pool, job_id) for _ in range(4)))
    ingested = [r for r in results if r.get("succeeded")]
    assert len(ingested) == 1, results
    assert all("skipped" in r for r in results if r not in ingested)
    assert comment_counts(db) == {"chatgpt": 30}
    assert db.execute("SELECT state, succeeded_count FROM ai_commentary_batch_jobs").fetchone() == {
        "state": "ingested",
        "succeeded_count": 30,
    }


# 2 — the claim was not atomic: two runs claimed the same questions
async def test_2_concurrent_submits_claim_each_question_once(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True, mistral=True)
    db.execute("UPDATE ai_commentary_settings SET batch_size = 40")
    insert_questions(db, 200)
    pool = opened_app.connector.pool
    await asyncio.gather(*(submit.run_submit(pool) for _ in range(5)))
    stats = pipeline.stats()
    assert submitted_twice(stats) == {}
    rows = db.execute(
        "SELECT count(*) AS n, count(DISTINCT question_id) AS q FROM ai_commentary_requests"
        " WHERE model_key = 'chatgpt' AND status = 'submitted'"
    ).fetchone()
    assert rows is not None and rows["n"] == rows["q"]
    # every submitted question is claimed exactly once across the concurrent runs
    sent = sum(len(v["custom_ids"]) for k, v in stats.items() if k in ("openai", "mistral"))
    assert sent == 2 * rows["n"]


# 3 — read-then-write comments: duplicate rows, arbitrary reads
async def test_3_reingesting_the_same_results_keeps_one_row_per_question_and_model(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 20)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    await poll.run_poll(pool, job_id)
    # Replay: the same batch polled again as if the first ingest had never been recorded.
    db.execute("UPDATE ai_commentary_batch_jobs SET state = 'in_flight'")
    db.execute(
        "UPDATE ai_commentary_requests SET status = 'submitted', claimed_by = %s"
        " WHERE model_key = 'chatgpt'",
        (job_id,),
    )
    await poll.run_poll(pool, job_id)
    assert comment_counts(db) == {"chatgpt": 20}
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO ai_answer_comments (question_id, model_key)"
            " SELECT question_id, model_key FROM ai_answer_comments LIMIT 1"
        )


# 4 — the provider batch was created before its row: a crash left a paid batch unconsumed
async def test_4_crash_after_provider_created_batch_is_adopted_not_paid_twice(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 25)
    pool = opened_app.connector.pool
    real = submit.create_provider_batch

    async def crash_after_create(
        conn: Any, provider_name: str, model: str, job_id: uuid.UUID, requests: Any
    ) -> bool:
        await providers().batch(provider_name).submit(model, requests, intent_id=str(job_id))
        raise SimulatedCrash("worker killed between provider create and our commit")

    monkeypatch.setattr(submit, "create_provider_batch", crash_after_create)
    with pytest.raises(SimulatedCrash):
        await submit.run_submit(pool)
    monkeypatch.setattr(submit, "create_provider_batch", real)
    assert batch_ids(db, "submitting") != []
    db.execute("UPDATE ai_commentary_batch_jobs SET created_at = now() - interval '5 minutes'")
    report = await maintenance.run_tick(pool)
    assert report["intents"] == {"adopted": 1, "abandoned": 0}
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 25}
    stats = pipeline.stats()
    assert stats["openai"]["batches_created"] == 2  # the adopted comment batch + the summary batch
    assert submitted_twice(stats) == {}


async def test_4b_intent_never_created_at_provider_is_abandoned_and_resent(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 10)
    pool = opened_app.connector.pool

    async def crash_before_create(*args: Any, **kwargs: Any) -> bool:
        raise SimulatedCrash("worker killed before the provider call")

    real_create = submit.create_provider_batch
    monkeypatch.setattr(submit, "create_provider_batch", crash_before_create)
    with pytest.raises(SimulatedCrash):
        await submit.run_submit(pool)
    # Put back only what this test patched: monkeypatch.undo() would also undo the
    # fixtures' DATABASE_URL and emulator settings (restoring the shell's DATABASE_URL,
    # so the worker would poll another database when the user has one exported).
    monkeypatch.setattr(submit, "create_provider_batch", real_create)
    db.execute("UPDATE ai_commentary_batch_jobs SET created_at = now() - interval '5 minutes'")
    report = await maintenance.run_tick(pool)
    assert report["intents"] == {"adopted": 0, "abandoned": 1}
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 10}


# 5 — a failed, expired or cancelled batch (or a submit exception) stranded questions


@pytest.mark.parametrize("outcome", ["failed", "expired", "cancelled"])
async def test_5_unsuccessful_batches_send_questions_back_and_they_complete(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any, outcome: str
) -> None:
    only(db, mistral=True)
    insert_questions(db, 8)
    pipeline.configure(batch_outcome=outcome)
    await one_round(opened_app.connector.pool, db)
    job = db.execute("SELECT state FROM ai_commentary_batch_jobs").fetchone()
    assert job == {"state": outcome}
    # Not the requests' fault (a provider-side failure, expiry, an operator's cancel): they
    # wait for a retry without spending an attempt (issue 12, build 4).
    waiting = db.execute(
        "SELECT count(*) AS n FROM ai_commentary_requests"
        " WHERE model_key = 'mistral' AND status = 'waiting' AND attempts = 0"
        " AND free_retries = 1"
    ).fetchone()
    # expired/cancelled batches keep their finished lines; everything else waits for a retry
    assert waiting is not None and (
        waiting["n"] == 8 if outcome == "failed" else 0 < waiting["n"] <= 8
    )
    cause = db.execute("SELECT failure_cause FROM ai_commentary_batch_jobs").fetchone()
    assert cause == {"failure_cause": "provider" if outcome == "failed" else outcome}
    assert status_counts(db) == {"processing": 8}
    pipeline.configure(batch_outcome=None)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 8}
    assert comment_counts(db) == {"mistral": 8}


def test_5b_poison_questions_end_failed_with_reason_after_max_attempts(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only(db, chatgpt=True)
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 2")
    insert_questions(db, 5)
    # a request-level cause: our input was rejected (a provider-side failure would be retried
    # without spending attempts)
    pipeline.configure(batch_outcome="failed", batch_failure_code="invalid_json_line")
    assert drain(60) == 0
    assert status_counts(db) == {"failed": 5}
    reasons = {
        r["ai_commentary_error"]
        for r in db.execute("SELECT ai_commentary_error FROM questions").fetchall()
    }
    assert reasons == {
        "chatgpt: the batch failed (invalid_json_line: The batch failed validation "
        "(invalid_json_line). (line 1))"
    }
    assert pipeline.stats()["openai"]["batches_created"] == 2


# 6 — requests missing from the output file stayed in processing forever
async def test_6_missing_output_lines_are_retried(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 10)
    pipeline.configure(no_output_file=True)
    await one_round(opened_app.connector.pool, db)
    row = db.execute("SELECT missing_count, error FROM ai_commentary_batch_jobs").fetchone()
    assert row is not None and row["missing_count"] == 10 and "no output file" in row["error"]
    pipeline.configure(no_output_file=False)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 10}


# 7 — incomplete lists of in-flight states made live batches look finished
async def test_7_unknown_provider_state_is_never_taken_for_finished(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only(db, gemini=True)
    insert_questions(db, 6)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    adapter = providers().batch("gemini")

    async def odd_status(batch_id: str) -> BatchStatus:
        return BatchStatus(
            batch_id=batch_id, state=BatchState.UNKNOWN, raw_state="BATCH_STATE_PAUSED_FOR_AUDIT"
        )

    monkeypatch.setattr(adapter, "status", odd_status)
    result = await poll.run_poll(pool, job_id)
    assert result["state"] == "BATCH_STATE_PAUSED_FOR_AUDIT"
    job = db.execute("SELECT state, status FROM ai_commentary_batch_jobs").fetchone()
    assert job == {"state": "in_flight", "status": "BATCH_STATE_PAUSED_FOR_AUDIT"}
    assert status_counts(db) == {"processing": 6}
    err = db.execute("SELECT kind FROM worker_errors WHERE kind = 'unknown_batch_state'").fetchone()
    assert err is not None
    # a poll is scheduled again
    assert db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'poll' AND status = 'todo'"
    ).fetchone() == {"n": 1}


async def test_7b_in_flight_states_of_every_provider_keep_polling(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True, gemini=True, mistral=True)
    pipeline.configure(state_seconds=30)
    insert_questions(db, 4)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    for job_id in batch_ids(db):
        r = await poll.run_poll(pool, job_id)
        assert "next_poll_in" in r, r
    raw = {
        r["provider"]: r["status"]
        for r in db.execute("SELECT provider, status FROM ai_commentary_batch_jobs").fetchall()
    }
    assert raw["openai"] in ("validating", "in_progress")
    assert raw["gemini"] in ("BATCH_STATE_PENDING", "JOB_STATE_PENDING", "BATCH_STATE_RUNNING")
    assert raw["mistral"] in ("QUEUED", "RUNNING")
    assert status_counts(db) == {"processing": 4}


# 8 — a 30-minute "stuck" timeout against 24-hour batches resubmitted live work
async def test_8_a_day_old_live_batch_is_not_resubmitted(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    pipeline.configure(state_seconds=3600)
    insert_questions(db, 5)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    db.execute(
        "UPDATE questions SET ai_commentary_claimed_at = now() - interval '25 hours',"
        " ai_commentary_queued_at = now() - interval '25 hours'"
    )
    db.execute(
        "UPDATE ai_commentary_batch_jobs SET created_at = now() - interval '25 hours',"
        " submitted_at = now() - interval '25 hours'"
    )
    db.execute("UPDATE ai_commentary_requests SET claimed_at = now() - interval '25 hours'")
    await maintenance.run_tick(pool)
    await submit.run_submit(pool)
    assert pipeline.stats()["openai"]["batches_created"] == 1
    assert status_counts(db) == {"processing": 5}


# 9 — a model enabled between submit and consume made questions impossible to complete
async def test_9_model_enabled_after_submit_does_not_block_completion(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True)
    insert_questions(db, 7)
    pool = opened_app.connector.pool
    await submit.run_submit(pool)
    set_models(db, gemini=True, mistral=True)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 7}
    assert comment_counts(db) == {"chatgpt": 7}


def test_9b_model_disabled_while_questions_wait_no_longer_holds_them(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only(db, chatgpt=True, mistral=True)
    insert_questions(db, 5)
    db.execute(
        "UPDATE questions SET ai_commentary_status = 'processing', ai_commentary_models = '{chatgpt,mistral}'"
    )
    db.execute(
        "INSERT INTO ai_commentary_requests (question_id, model_key, stage)"
        " SELECT id, m, CASE WHEN m = 'summary' THEN 'summary' ELSE 'comment' END"
        " FROM questions, unnest(ARRAY['chatgpt','mistral','summary']) m"
    )
    set_models(db, mistral=False)
    db.execute("SELECT worker_defer_job('submit', 'submit', 'submit')")
    assert drain(60) == 0
    assert status_counts(db) == {"completed": 5}
    assert comment_counts(db) == {"chatgpt": 5}


# 10 — one transient error set a sticky failed flag; raw errors shown in comment columns
async def test_10_transient_line_failures_retry_and_never_leak_into_comments(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, chatgpt=True, gemini=True)
    insert_questions(db, 40)
    pipeline.configure(line_failure_rate=0.3)
    await one_round(opened_app.connector.pool, db)
    retried = db.execute(
        "SELECT count(*) AS n FROM ai_commentary_requests WHERE attempts = 1"
        " AND status = 'waiting' AND last_error IS NOT NULL"
    ).fetchone()
    assert retried is not None and retried["n"] > 0
    pipeline.configure(line_failure_rate=0.0)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 40}
    leaked = db.execute(
        "SELECT count(*) AS n FROM ai_answer_comments WHERE general_comment ~* '(error|status|500|server_error)'"
    ).fetchone()
    assert leaked == {"n": 0}


# 11 — the quota detector matched any "429" and switched everything off
def test_11_transient_rate_limit_does_not_switch_the_feature_off(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only(db, chatgpt=True, mistral=True)
    insert_questions(db, 6)
    pipeline.configure(
        http_faults=[{"kind": "rate_limit", "provider": "mistral", "count": 2, "retry_after": 0.1}]
    )
    assert drain(90) == 0
    assert status_counts(db) == {"completed": 6}
    row = db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone()
    assert row == {"feature_enabled": True}


# 12 — one failed download aborted the whole run
def test_12_a_failed_download_loses_nothing_and_other_batches_go_on(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only(db, chatgpt=True, mistral=True)
    insert_questions(db, 12)
    pipeline.configure(
        http_faults=[{"kind": "server", "provider": "openai", "path": "/content", "count": 6}]
    )
    assert drain(90) == 0
    assert status_counts(db) == {"completed": 12}
    assert comment_counts(db) == {"chatgpt": 12, "mistral": 12}
    # a failed download is retried, not treated as missing lines paid for again
    assert submitted_twice(pipeline.stats(), succeeded_only=True) == {}


# 13 — unbounded reads, temp files never deleted
def test_13_no_temp_files_are_left_behind(
    pipeline: Emulator, db: psycopg.Connection[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    only(db, chatgpt=True, gemini=True, mistral=True)
    insert_questions(db, 15)
    assert drain(60) == 0
    assert status_counts(db) == {"completed": 15}
    assert list(tmp_path.iterdir()) == []


# 14 — Gemini results mapped by position; Mistral parsed by "largest {...}"
async def test_14_results_are_matched_by_id_whatever_their_order(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    from worker.commentary.claim import load_settings

    ids = insert_questions(db, 20)
    owner = "test-owner"
    db.execute(
        "INSERT INTO ai_commentary_requests (question_id, model_key, status, claimed_by)"
        " SELECT id, 'gemini', 'submitted', %s FROM questions",
        (owner,),
    )
    db.execute("UPDATE questions SET ai_commentary_status = 'processing'")
    lines = [
        ResultLine(
            custom_id=custom_ids.make(qid, "gemini"),
            ok=True,
            text=json.dumps(
                {
                    "chosen_answer": "ABCDE"[i % 5],
                    "general_comment": f"Kommentar zu {qid}",
                    **{f"comment_{x}": f"{x} {qid}" for x in "abcde"},
                }
            ),
        )
        for i, qid in enumerate(ids)
    ]
    lines.reverse()

    async def gen() -> Any:
        for line in lines:
            yield line

    pool = opened_app.connector.pool
    async with pool.connection() as conn:
        settings = await load_settings(conn)
        counts = await ingest.ingest_lines(
            conn,
            settings,
            owner=owner,
            model_key="gemini",
            provider="gemini",
            model_name="m",
            batch_job_id=None,
            batch_priced=True,
            lines=gen(),
            missing_reason="x",
        )
    assert counts.succeeded == 20
    rows = db.execute(
        "SELECT question_id, general_comment, comment_c FROM ai_answer_comments"
    ).fetchall()
    assert len(rows) == 20
    for r in rows:
        assert r["general_comment"] == f"Kommentar zu {r['question_id']}"
        assert r["comment_c"] == f"c {r['question_id']}"


# 15 — settings quirks: batch_size 0 became 5; the delay setting was ignored
async def test_15_processing_delay_is_honoured(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 5")
    insert_questions(db, 3)
    db.execute("DELETE FROM procrastinate_jobs")
    pool = opened_app.connector.pool
    report = await submit.run_submit(pool)
    assert report.get("claimed") is None
    assert status_counts(db) == {"pending": 3}
    job = db.execute(
        "SELECT scheduled_at - (SELECT max(ai_commentary_queued_at) FROM questions) AS wait"
        " FROM procrastinate_jobs WHERE task_name = 'submit' AND status = 'todo'"
    ).fetchone()
    assert job is not None and 299 <= job["wait"].total_seconds() <= 301
    db.execute("UPDATE questions SET ai_commentary_queued_at = now() - interval '6 minutes'")
    report = await submit.run_submit(pool)
    assert report["claimed"] == 3


def test_15b_invalid_settings_row_is_reported_not_replaced(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute("ALTER TABLE ai_commentary_settings DISABLE TRIGGER worker_check_settings")
    db.execute("UPDATE ai_commentary_settings SET batch_size = 0")
    insert_questions(db, 2)
    assert drain(4) == 1  # not idle: nothing is processed with an invalid row
    assert status_counts(db) == {"pending": 2}
    err = db.execute("SELECT message FROM worker_errors WHERE kind = 'settings'").fetchone()
    assert err is not None and "batch_size" in err["message"]


async def test_4c_an_intent_abandoned_by_the_reconciler_is_never_created_late(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submitter that looked dead (and whose intent was abandoned) must not create the
    provider batch when it wakes up: the requests already wait for another batch."""
    only(db, chatgpt=True)
    insert_questions(db, 6)
    pool = opened_app.connector.pool
    real = submit.create_provider_batch

    async def abandoned_meanwhile(
        conn: Any, provider_name: str, model: str, job_id: uuid.UUID, requests: Any
    ) -> bool:
        db.execute(
            "UPDATE ai_commentary_batch_jobs SET state = 'abandoned' WHERE id = %s", (job_id,)
        )
        db.execute(
            "UPDATE ai_commentary_requests SET status = 'waiting', claimed_by = NULL,"
            " batch_job_id = NULL WHERE claimed_by = %s",
            (str(job_id),),
        )
        created = await real(conn, provider_name, model, job_id, requests)
        assert created is False
        return created

    monkeypatch.setattr(submit, "create_provider_batch", abandoned_meanwhile)
    await submit.run_submit(pool)
    assert pipeline.stats()["openai"]["batches_created"] == 0
    monkeypatch.setattr(submit, "create_provider_batch", real)
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 6}
    assert submitted_twice(pipeline.stats()) == {}


def test_11b_transient_instant_failures_spend_no_attempts(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    """An outage of an instant provider must not fail good questions: with max_attempts 1,
    one counted attempt would fail them all."""
    only(db, perplexity=True)
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 1")
    insert_questions(db, 5)
    # 10 = two rounds of 5 calls (the SDKs retry nothing, SDK_MAX_RETRIES): the first two
    # rounds fail whole, fewer than the breaker's threshold of failed rounds
    pipeline.configure(http_faults=[{"kind": "unavailable", "provider": "perplexity", "count": 10}])
    assert drain(90) == 0
    assert pipeline.stats()["perplexity"]["faults_injected"] == 10
    assert status_counts(db) == {"completed": 5}
    row = db.execute(
        "SELECT max(attempts) AS a FROM ai_commentary_requests WHERE model_key = 'perplexity'"
    ).fetchone()
    assert row == {"a": 0}
