"""The realtime lane under the answer rules of issue 13, end to end (real runner, real
Postgres, the emulator): a truncated answer, a refusal, a moderation rejection or a safety
block fails that one job with its own error kind and stores no result; the provider is never
stopped and the other jobs complete."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain
from tests.integration.test_ai_jobs import rt
from worker.emulator import Emulator

rt = rt  # the fixture

MODELS = {
    "openrouter": "openai/gpt-4.1-mini",
    "gemini": "gemini-2.5-flash",
    "deepseek": "deepseek-chat",
    "openai": "gpt-4.1-mini",
}


@pytest.mark.parametrize(
    ("provider", "fault", "kind"),
    [
        ("openrouter", "moderation", "content_refused"),  # 403 with moderation metadata
        ("openai", "moderation", "content_refused"),  # 400 invalid_prompt
        ("gemini", "moderation", "content_refused"),  # promptFeedback.blockReason SAFETY
        ("openrouter", "refusal", "content_refused"),  # message.refusal
        ("gemini", "refusal", "content_refused"),  # finishReason SAFETY
        ("deepseek", "truncated", "truncated"),  # finish_reason length (was stored as done)
        ("gemini", "truncated", "truncated"),  # finishReason MAX_TOKENS
    ],
)
def test_a_rejected_answer_fails_one_job_never_the_provider(
    rt: Emulator, db: psycopg.Connection[Any], provider: str, fault: str, kind: str
) -> None:
    model = MODELS[provider]
    rt.configure(http_faults=[{"kind": fault, "provider": provider, "count": 1}])
    bad = db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('completion', %s, %s, 'die erste Frage') RETURNING id",
        (provider, model),
    ).fetchone()
    assert bad is not None
    assert drain(30) == 0
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', %s, %s, 'Frage ' || g FROM generate_series(1, 5) g",
        (provider, model),
    )
    assert drain(30) == 0
    job = db.execute(
        "SELECT status, attempts, error_kind, result_text FROM ai_jobs WHERE id = %s",
        (bad["id"],),
    ).fetchone()
    assert job == {"status": "failed", "attempts": 1, "error_kind": kind, "result_text": None}
    rest = db.execute(
        "SELECT status, count(*) AS n FROM ai_jobs WHERE id <> %s GROUP BY 1", (bad["id"],)
    ).fetchall()
    assert rest == [{"status": "completed", "n": 5}]
    assert db.execute("SELECT count(*) AS n FROM provider_stops").fetchone() == {"n": 0}
    assert rt.stats()[provider]["faults_injected"] == 1
