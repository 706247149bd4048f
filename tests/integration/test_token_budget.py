"""Issue 12, builds 2, 3 and 7 against the emulator's real limits, through the official SDKs:
a backlog several times the enqueued-token limit drains with nothing failed and no attempt
charged; lost create/upload answers never pay twice; the daily budget follows reservations
and the ledger equals what the emulator billed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain, insert_questions, set_models, status_counts
from tests.fixtures.settings import configure
from worker.commentary import budget
from worker.emulator import Emulator
from worker.emulator.limits import estimate_openai_line_tokens
from worker.providers.base import ChatRequest
from worker.providers.jsonl import request_line_encoder

MODEL = "gpt-4.1-mini"


def _only_chatgpt(db: psycopg.Connection[Any]) -> None:
    set_models(db, chatgpt=True, gemini=False, mistral=False, perplexity=False, deepseek=False)


def _set_limit(db: psycopg.Connection[Any], provider: str, model: str, tokens: int | None) -> None:
    db.execute(
        "INSERT INTO worker_batch_limits (provider, model, enqueued_tokens) VALUES (%s, %s, %s)"
        " ON CONFLICT (provider, model) DO UPDATE SET enqueued_tokens = EXCLUDED.enqueued_tokens",
        (provider, model, tokens),
    )


def test_backlog_several_times_the_token_limit_completes_without_failures(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    limit = 12_000
    pipeline.configure(state_seconds=0.15, openai_enqueued_tokens_per_model=limit)
    _only_chatgpt(db)
    _set_limit(db, "openai", MODEL, limit)
    n = 160
    insert_questions(db, n)
    assert drain(180) == 0
    assert status_counts(db) == {"completed": n}
    # The backlog really was several times the queue (comment + summary requests).
    reserved = db.execute(
        "SELECT sum(estimated_tokens) AS t, count(*) AS b,"
        " count(*) FILTER (WHERE state <> 'ingested') AS bad"
        " FROM ai_commentary_batch_jobs WHERE model_name = %s",
        (MODEL,),
    ).fetchone()
    assert reserved is not None
    assert reserved["t"] >= 3 * limit, reserved
    # Never over the provider's queue: no batch failed for token_limit_exceeded.
    assert reserved["bad"] == 0
    attempts = db.execute(
        "SELECT max(attempts) AS hi, count(*) FILTER (WHERE status <> 'succeeded') AS open"
        " FROM ai_commentary_requests"
    ).fetchone()
    assert attempts == {"hi": 0, "open": 0}  # attempts count failures: none charged
    # The correction factor was learned from the usage the emulator reported.
    learned = db.execute(
        "SELECT correction_factor, calibration_samples FROM worker_token_budget"
        " WHERE provider = 'openai' AND model = %s",
        (MODEL,),
    ).fetchone()
    assert learned is not None and learned["calibration_samples"] > 0
    assert 0.5 < learned["correction_factor"] < 2.0


def test_a_too_generous_limit_is_learned_from_token_limit_failures(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table says 10x what the account may queue: batches fail token_limit_exceeded,
    the learned limit shrinks below the real one, and nothing is failed or charged."""
    limit = 10_000
    configure(monkeypatch, TOKEN_LIMIT_HOLD_SECONDS="1")
    pipeline.configure(
        state_seconds=0.15,
        openai_enqueued_tokens_per_model=limit,
        openai_failed_tokens_hold_seconds=1.0,
    )
    _only_chatgpt(db)
    _set_limit(db, "openai", MODEL, 10 * limit)
    n = 150
    insert_questions(db, n)
    assert drain(180) == 0
    assert status_counts(db) == {"completed": n}
    failed = db.execute(
        "SELECT count(*) AS n FROM ai_commentary_batch_jobs WHERE failure_cause = 'limit'"
    ).fetchone()
    assert failed is not None and failed["n"] >= 1
    learned = db.execute(
        "SELECT learned_enqueued_tokens AS t, limit_failures AS f FROM worker_token_budget"
        " WHERE provider = 'openai' AND model = %s",
        (MODEL,),
    ).fetchone()
    assert learned is not None and learned["f"] >= 1
    assert learned["t"] is not None and learned["t"] <= limit
    attempts = db.execute("SELECT max(attempts) AS hi FROM ai_commentary_requests").fetchone()
    assert attempts == {"hi": 0}


async def test_no_questions_claimed_while_the_budget_is_full(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str
) -> None:
    """A full budget claims nothing: questions stay pending, not processing."""
    _only_chatgpt(db)
    _set_limit(db, "openai", MODEL, 5_000)
    # A batch already holds the whole budget.
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, state, model_key, model_name,"
        " estimated_tokens, request_count) VALUES ('openai', 'in_flight', 'chatgpt', %s, 5000, 10)",
        (MODEL,),
    )
    insert_questions(db, 20)
    from psycopg_pool import AsyncConnectionPool

    from worker.commentary.submit import run_submit

    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
    ) as pool:
        report = await run_submit(pool)
    assert "claimed" not in report and "batches" not in report
    assert status_counts(db) == {"pending": 20}


def test_estimator_error_against_the_emulator_count() -> None:
    """The cheap estimate is within 10% of the emulator's queue count on real prompts."""
    from worker.commentary import prompts
    from worker.commentary.schemas import COMMENTARY_SCHEMA

    encode = request_line_encoder("openai", MODEL)
    errors = []
    for i in range(50):
        q = prompts.QuestionText(
            question=f"Frage {i}: Welches Organ produziert Insulin? " * (1 + i % 5),
            option_a="Leber",
            option_b="Pankreas",
            option_c="Milz",
            option_d="Niere",
            option_e="Herz",
            subject="Physiologie",
            correct_answer="B",
        )
        req = ChatRequest(
            custom_id=f"{i}",
            system_prompt=prompts.SYSTEM_DE_V1,
            user_prompt=prompts.user_prompt(q, None),
            schema_name="commentary",
            json_schema=COMMENTARY_SCHEMA,
        )
        truth = estimate_openai_line_tokens(json.loads(encode(req))["body"])
        errors.append(abs(budget.raw_estimate(req) - truth) / truth)
    assert max(errors) < 0.10, max(errors)


def test_pack_stops_at_the_free_budget() -> None:
    b = budget.ModelBudget(
        provider="openai",
        model=MODEL,
        limit_tokens=1000,
        learned_tokens=None,
        reserved_tokens=0,
        limit_requests=None,
        reserved_requests=0,
        limit_live_batches=None,
        live_batches=0,
        limit_batches_per_hour=None,
        created_last_hour=0,
        factor=1.0,
        avg_request_tokens=None,
        avg_output_tokens=None,
    )
    packed = budget.pack(b, [300] * 5, [300] * 5)
    assert (packed.count, packed.tokens, packed.reason) == (3, 900, "token budget")  # 950 free
    b.learned_tokens = 500  # a token_limit_exceeded taught us less
    assert budget.pack(b, [300] * 5, [300] * 5).count == 1
    b.reserved_tokens = 400
    assert budget.pack(b, [300] * 5, [300] * 5).count == 0
    # Money: the first request always fits, the rest only while money is left.
    b.learned_tokens, b.reserved_tokens = None, 0
    packed = budget.pack(
        b, [100] * 5, [100] * 5, money_free=Decimal("0.25"), cost_per_token=Decimal("0.001")
    )
    assert packed.count == 2 and packed.reason == "daily budget"


def _intent_of(provider: str, data: dict[str, Any]) -> str | None:
    if provider == "gemini":
        return str(data.get("display_name") or "") or None
    meta = data.get("metadata") or {}
    return meta.get("intent_id") if isinstance(meta, dict) else None


def test_lost_create_and_upload_answers_never_pay_twice(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    pipeline.configure(lost_response_rate=0.5, state_seconds=0.05)
    set_models(db, perplexity=False)
    n = 120
    insert_questions(db, n)
    assert drain(240) == 0
    assert status_counts(db) == {"completed": n}
    stats = pipeline.stats()
    assert sum(stats[p]["responses_lost"] for p in ("openai", "gemini", "mistral")) > 0
    for provider in ("openai", "gemini", "mistral"):
        assert stats[provider]["paid_twice"] == [], provider
        # One provider batch per intent, cancelled ones included: no SDK retry and no
        # second create after a lost answer (the lookup by intent found the first).
        created = Counter(
            _intent_of(provider, b.data) for b in pipeline.store.list_batches(provider)
        )
        assert created and max(created.values()) == 1, (provider, created.most_common(3))


@pytest.mark.parametrize("name", ["openai", "gemini", "mistral"])
async def test_crash_recovery_finds_an_intent_behind_600_batches(
    emulator: Emulator, name: str
) -> None:
    """find_by_intent pages back to the intent's creation time, not a count of batches."""
    from datetime import UTC, datetime, timedelta

    from tests.integration.test_adapters import MODELS, batch_provider, requests

    p = batch_provider(emulator, name)
    start = datetime.now(UTC) - timedelta(seconds=1)
    target = await p.submit(MODELS[name], requests(1), intent_id="intent-old")
    # 600 newer batches by someone else; the old adapter gave up after 500.
    for i in range(600):
        await p.submit(MODELS[name], requests(1), intent_id=f"noise-{i}")
    found = await p.find_by_intent("intent-old", start)
    assert found is not None and found.batch_id == target.batch_id
    assert await p.find_by_intent("intent-nobody", datetime.now(UTC)) is None


def _billed_usd(db: psycopg.Connection[Any], stats: dict[str, Any]) -> Decimal:
    """What the emulator billed (its usage counters) times the price table."""
    total = Decimal(0)
    for provider, st in stats.items():
        for model, modes in st["usage"].items():
            p = db.execute(
                "SELECT * FROM worker_price(%s, %s, true) w", (provider, model)
            ).fetchone()
            for mode, u in modes.items():
                if not (u["input_tokens"] or u["output_tokens"]):
                    continue
                assert p is not None and mode == "batch", (provider, model, mode)
                total += (
                    (
                        u["input_tokens"] * p["input_usd_per_mtok"]
                        + u["output_tokens"] * p["output_usd_per_mtok"]
                    )
                    / Decimal(1_000_000)
                    * p["factor"]
                )
    return total


async def _rounds_until_paused(pool: Any, db: psycopg.Connection[Any]) -> dict[str, Any]:
    """submit + poll every live batch, until submit pauses for the budget or has nothing."""
    from tests.fixtures.pipeline import batch_ids
    from worker.commentary import poll, submit

    report: dict[str, Any] = {}
    for _ in range(200):
        report = await submit.run_submit(pool)
        live = batch_ids(db)
        if not live and (report.get("budget_exhausted") or not report.get("batches")):
            return report
        for _ in range(100):
            live = batch_ids(db)
            if not live:
                break
            for job_id in live:
                await poll.run_poll(pool, job_id)
            await asyncio.sleep(0.02)
    raise AssertionError("submit never paused")


async def test_daily_budget_ends_within_one_batch_and_ledger_equals_billed_usage(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str
) -> None:
    from psycopg_pool import AsyncConnectionPool

    _only_chatgpt(db)
    # Far below the backlog's cost (200 questions ~ 0.06 USD at gpt-4.1-mini batch prices).
    budget_usd = Decimal("0.005")
    db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = %s", (budget_usd,))
    insert_questions(db, 200)
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    ) as pool:
        report = await _rounds_until_paused(pool, db)
        # Paused: the budget is reached, or what is left pays for no further question.
        assert report.get("budget_exhausted") or not report.get("claimed"), report
        spent = db.execute("SELECT sum(cost_usd) AS s FROM ai_cost_events").fetchone()["s"]
        biggest = db.execute(
            "SELECT max(e.c) AS c FROM (SELECT sum(cost_usd) AS c FROM ai_cost_events"
            " GROUP BY batch_job_id) e"
        ).fetchone()["c"]
        # Within one batch of the budget, on both sides (reservations, not ingest, decide).
        print(f"budget {budget_usd} USD: spent {spent}, largest batch {biggest}")
        assert abs(spent - budget_usd) <= biggest, (spent, budget_usd, biggest)
        assert status_counts(db).get("completed", 0) < 200  # the budget stopped real work
        assert _close(spent, _billed_usd(db, pipeline.stats()))

        # Re-processing adds to the ledger: requeue ten completed questions and pay again.
        again = [
            r["id"]
            for r in db.execute(
                "SELECT id FROM questions WHERE ai_commentary_status = 'completed' LIMIT 10"
            ).fetchall()
        ]
        db.execute(
            "UPDATE questions SET ai_commentary_status = 'pending',"
            " ai_commentary_queued_at = now() - interval '1 day' WHERE id = ANY(%s)",
            (again,),
        )
        db.execute("UPDATE ai_commentary_settings SET daily_budget_usd = NULL")
        await _rounds_until_paused(pool, db)
    stats = pipeline.stats()
    assert any(stats["openai"]["paid_twice"])  # the requeued ones, on purpose
    ledger = db.execute("SELECT sum(cost_usd) AS s FROM ai_cost_events").fetchone()["s"]
    assert _close(ledger, _billed_usd(db, stats))
    latest = db.execute(
        "SELECT (SELECT coalesce(sum(cost_usd), 0) FROM ai_answer_comments)"
        " + (SELECT coalesce(sum(cost_usd), 0) FROM ai_commentary_summaries) AS s"
    ).fetchone()["s"]
    assert latest < ledger  # the rows keep only the latest generation's cost


def _close(a: Decimal, b: Decimal) -> bool:
    # Each ledger row is rounded to 8 decimals.
    return abs(a - b) <= Decimal("0.00000001") * 2000


async def test_a_stopped_provider_still_collects_the_batches_it_was_paid_for(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    from tests.fixtures.pipeline import batch_ids
    from worker.commentary import poll, submit

    pool = opened_app.connector.pool
    _only_chatgpt(db)
    pipeline.configure(state_seconds=0.2)
    insert_questions(db, 5)
    report = await submit.run_submit(pool)
    assert report["batches"] == 1
    (job_id,) = batch_ids(db)
    # Out of credit (or a bad key) after the batch was paid for: new work stops ...
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason, stopped_at)"
        " VALUES ('openai', 'quota', 'test: out of credit', clock_timestamp())"
    )
    insert_questions(db, 3, prefix="Neu")
    assert "batches" not in await submit.run_submit(pool)
    # ... but the batch in flight is still polled and ingested.
    for _ in range(100):
        if not batch_ids(db):
            break
        await poll.run_poll(pool, job_id)
        await asyncio.sleep(0.05)
    state = db.execute(
        "SELECT state FROM ai_commentary_batch_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert state == {"state": "ingested"}
    n = db.execute("SELECT count(*) AS n FROM ai_answer_comments").fetchone()
    assert n == {"n": 5}


async def test_a_batch_the_provider_no_longer_knows_is_resolved_as_lost(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    from tests.fixtures.pipeline import batch_ids
    from worker.commentary import poll, submit

    pool = opened_app.connector.pool
    _only_chatgpt(db)
    pipeline.configure(state_seconds=30)
    insert_questions(db, 4)
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    row = db.execute(
        "SELECT batch_id FROM ai_commentary_batch_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    pipeline.store.batches[row["batch_id"]].deleted = True  # gone at the provider: 404
    result = await poll.run_poll(pool, job_id)
    assert "lost" in result
    job = db.execute(
        "SELECT state, error FROM ai_commentary_batch_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert job is not None and job["state"] == "lost" and "no longer knows" in job["error"]
    reqs = db.execute(
        "SELECT DISTINCT status, attempts FROM ai_commentary_requests WHERE model_key = 'chatgpt'"
    ).fetchall()
    assert reqs == [{"status": "waiting", "attempts": 0}]
    err = db.execute("SELECT count(*) AS n FROM worker_errors WHERE kind = 'batch_lost'").fetchone()
    assert err == {"n": 1}


async def test_an_ambiguous_create_whose_lookup_fails_is_left_for_the_reconciler(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Create answered nothing and listing batches fails too: the intent is not abandoned
    (the batch may exist and be billed); the tick's reconciler adopts it later, once."""
    from tests.fixtures.pipeline import batch_ids
    from worker.commentary import submit, tick

    pool = opened_app.connector.pool
    set_models(db, chatgpt=False, gemini=True, mistral=False, perplexity=False, deepseek=False)
    pipeline.configure(
        lost_response_rate=1.0,
        http_faults=[{"provider": "gemini", "kind": "server", "path": "/batches", "count": None}],
    )
    insert_questions(db, 3)
    await submit.run_submit(pool)
    intent = db.execute(
        "SELECT id, state FROM ai_commentary_batch_jobs WHERE model_key = 'gemini'"
    ).fetchone()
    st = pipeline.stats()["gemini"]
    assert intent is not None and intent["state"] == "submitting", (
        st["responses_lost"],
        st["faults_injected"],
    )
    unresolved = db.execute(
        "SELECT count(*) AS n FROM worker_errors WHERE kind = 'submit_unresolved'"
    ).fetchone()
    assert unresolved == {"n": 1}
    created = [b for b in pipeline.store.list_batches("gemini")]
    assert len(created) == 1  # created once, its answer lost
    pipeline.configure(lost_response_rate=0.0, http_faults=[])
    monkeypatch.setattr(tick, "INTENT_GRACE_SECONDS", 0)
    async with pool.connection() as conn:
        out = await tick.reconcile_intents(conn)
    assert out["adopted"] == 1
    assert batch_ids(db) == [str(intent["id"])]
    assert len(pipeline.store.list_batches("gemini")) == 1


async def test_a_404_for_everything_is_a_misconfiguration_not_a_lost_batch(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong base URL answers 404 for the batch and for the listing too: nothing is
    resolved as lost (resubmitting would pay twice for a batch that still runs)."""
    from tests.fixtures.pipeline import batch_ids
    from worker.commentary import poll, submit
    from worker.config import get_settings
    from worker.providers.routing import reset_providers

    pool = opened_app.connector.pool
    _only_chatgpt(db)
    pipeline.configure(state_seconds=30)
    insert_questions(db, 2)
    await submit.run_submit(pool)
    (job_id,) = batch_ids(db)
    monkeypatch.setenv("OPENAI_BASE_URL", pipeline.base_url + "/nowhere/v1")
    get_settings.cache_clear()
    reset_providers()
    result = await poll.run_poll(pool, job_id)
    assert "lost" not in result
    assert batch_ids(db) == [job_id]  # still in flight, polled again later
