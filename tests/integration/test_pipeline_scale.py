"""1,000 questions × 3 batch models + 1 instant model, end to end with the real runner."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain, insert_questions, status_counts, submitted_twice
from worker.emulator import Emulator


@pytest.mark.timeout(300)
def test_thousand_questions_complete_exactly_once(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute("UPDATE ai_commentary_settings SET batch_size = 400")
    insert_questions(db, 1000)
    assert drain(240) == 0
    assert status_counts(db) == {"completed": 1000}
    per_model = db.execute(
        "SELECT model_key, count(*) AS n, count(DISTINCT question_id) AS q"
        " FROM ai_answer_comments GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert per_model == [
        {"model_key": m, "n": 1000, "q": 1000}
        for m in ("chatgpt", "deepseek", "gemini", "mistral", "perplexity")
    ]
    assert db.execute(
        "SELECT count(*) AS n, count(DISTINCT question_id) AS q FROM ai_commentary_summaries"
    ).fetchone() == {"n": 1000, "q": 1000}
    states = {
        r["state"]
        for r in db.execute("SELECT DISTINCT state FROM ai_commentary_batch_jobs").fetchall()
    }
    assert states == {"ingested"}
    stats = pipeline.stats()
    assert submitted_twice(stats) == {}
    for provider in ("openai", "gemini", "mistral"):
        # openai carries the summary batches too
        expected = 2000 if provider == "openai" else 1000
        assert len(stats[provider]["custom_ids"]) == expected
    assert stats["perplexity"]["chat_calls"] == 1000
    assert stats["deepseek"]["chat_calls"] == 1000
