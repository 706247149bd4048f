"""The commentary pipeline end to end against the emulator, with the real runner."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.fixtures.pipeline import drain, insert_questions, status_counts
from worker.emulator import Emulator


def test_small_set_completes_with_one_comment_per_model_and_a_summary(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    ids = insert_questions(db, 12)
    assert drain(60) == 0
    assert status_counts(db) == {"completed": 12}
    rows = db.execute(
        "SELECT model_key, count(*) AS n, count(DISTINCT question_id) AS q"
        " FROM ai_answer_comments GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [
        {"model_key": m, "n": 12, "q": 12}
        for m in ("chatgpt", "deepseek", "gemini", "mistral", "perplexity")
    ]
    assert db.execute("SELECT count(*) AS n FROM ai_commentary_summaries").fetchone() == {"n": 12}
    wide = db.execute(
        "SELECT count(*) AS n FROM ai_answer_comments_wide"
        " WHERE chatgpt_general_comment IS NOT NULL"
        " AND gemini_new_general_comment IS NOT NULL"
        " AND mistral_general_comment IS NOT NULL"
    ).fetchone()
    assert wide == {"n": len(ids)}
    states = db.execute(
        "SELECT state, count(*) AS n FROM ai_commentary_batch_jobs GROUP BY 1"
    ).fetchall()
    assert states == [{"state": "ingested", "n": 4}]  # 3 models + 1 summary batch
