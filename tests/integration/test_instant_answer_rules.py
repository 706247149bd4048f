"""The commentary lane's instant models (Perplexity, DeepSeek) under the faults of issue 13,
end to end: the real runner, the real SDKs, the emulator.

* out of credit / bad key stops that provider with one alert and charges no attempt, exactly
  like the batch providers (tests/integration/test_resilience_pipeline.py);
* a moderation rejection, a refusal or a truncated answer fails that request only, at once
  (one counted attempt, whatever max_attempts says: the same request would fail again) and
  never stops the provider - what the realtime lane does with the same answer;
* DeepSeek (JSON-object mode: the schema travels in the prompt) answers valid comments.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain, insert_questions, set_models, status_counts
from tests.integration.test_resilience_pipeline import run_until
from worker.emulator import Emulator
from worker.providers.routing import reset_providers

N = 4


def only(db: psycopg.Connection[Any], **models: bool) -> None:
    set_models(db, **{m: False for m in ("chatgpt", "gemini", "mistral", "perplexity", "deepseek")})
    set_models(db, **models)


def requests_of(db: psycopg.Connection[Any], model_key: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT status, attempts, last_error FROM ai_commentary_requests"
        " WHERE model_key = %s ORDER BY question_id",
        (model_key,),
    ).fetchall()


def stops(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT provider, kind FROM provider_stops WHERE cleared_at IS NULL ORDER BY provider"
    ).fetchall()


def stop_alerts(db: psycopg.Connection[Any], provider: str) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM worker_alerts WHERE dedup_key LIKE %s",
        (f"stop:{provider}:%",),
    ).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    ("provider", "model_key", "fault", "kind", "reason"),
    [
        ("deepseek", "deepseek", "payment", "quota", "Insufficient Balance"),
        ("perplexity", "perplexity", "quota", "quota", "insufficient_quota"),
        ("deepseek", "deepseek", "auth", "auth", "invalid_api_key"),
        ("perplexity", "perplexity", "auth", "auth", "invalid_api_key"),
    ],
)
def test_instant_out_of_credit_or_bad_key_stops_the_provider_and_charges_nothing(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    provider: str,
    model_key: str,
    fault: str,
    kind: str,
    reason: str,
) -> None:
    other = "perplexity" if model_key == "deepseek" else "deepseek"
    only(db, **{model_key: True, other: True})
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 1")
    insert_questions(db, N)
    pipeline.configure(http_faults=[{"kind": fault, "provider": provider, "count": None}])

    def stopped_and_other_done() -> bool:
        done = [r["status"] for r in requests_of(db, other)] == ["succeeded"] * N
        return done and stops(db) == [{"provider": provider, "kind": kind}]

    ok = run_until(stopped_and_other_done, timeout=40)
    assert ok, (
        requests_of(db, other),
        requests_of(db, model_key),
        stops(db),
        db.execute("SELECT kind, message FROM worker_errors ORDER BY id DESC LIMIT 5").fetchall(),
    )
    [stop] = db.execute("SELECT reason FROM provider_stops").fetchall()
    assert reason in stop["reason"]
    # nothing charged, nothing failed: the requests wait for the provider to come back
    assert requests_of(db, model_key) == [
        {"status": "waiting", "attempts": 0, "last_error": r["last_error"]}
        for r in requests_of(db, model_key)
    ]
    assert "failed" not in status_counts(db)
    assert stop_alerts(db, provider) == 1
    # a stopped provider is left alone: more runs make no calls and no second alert
    faults = pipeline.stats()[provider]["faults_injected"]
    assert faults >= 1
    assert run_until(lambda: False, timeout=2) is False
    assert pipeline.stats()[provider]["faults_injected"] == faults
    assert stop_alerts(db, provider) == 1

    pipeline.configure(http_faults=[])
    assert db.execute("SELECT worker_resume_provider(%s) AS n", (provider,)).fetchone() == {"n": 1}
    reset_providers()  # the SDK clients belong to run_until's event loop, which is closed
    assert drain(60) == 0
    assert status_counts(db) == {"completed": N}, db.execute(
        "SELECT model_key, status, attempts, last_error FROM ai_commentary_requests"
    ).fetchall()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("moderation", "content_refused"),  # OpenAI-style 400 content_policy_violation
        ("refusal", "content_refused"),  # finish_reason content_filter
        ("truncated", "truncated"),  # finish_reason length
        ("context_length", "context_too_long"),
    ],
)
def test_instant_rejections_fail_the_request_never_the_provider(
    pipeline: Emulator, db: psycopg.Connection[Any], fault: str, error: str
) -> None:
    only(db, deepseek=True)
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 3")
    insert_questions(db, N)
    pipeline.configure(http_faults=[{"kind": fault, "provider": "deepseek", "count": None}])
    assert drain(60) == 0
    rows = requests_of(db, "deepseek")
    assert [(r["status"], r["attempts"]) for r in rows] == [("failed", 1)] * N
    assert all(error in r["last_error"] for r in rows), rows
    assert stops(db) == []
    assert stop_alerts(db, "deepseek") == 0
    assert status_counts(db) == {"failed": N}


def test_deepseek_json_object_answers_follow_the_schema_in_the_prompt(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only(db, deepseek=True)
    insert_questions(db, N)
    assert drain(60) == 0
    assert status_counts(db) == {"completed": N}
    rows = db.execute(
        "SELECT chosen_answer, general_comment FROM ai_answer_comments WHERE model_key = 'deepseek'"
    ).fetchall()
    assert len(rows) == N
    assert all(r["chosen_answer"] in "ABCDE" and r["general_comment"] for r in rows)
    assert pipeline.stats()["deepseek"]["chat_calls"] == N
