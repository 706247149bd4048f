"""Triggers defer `submit` from SQL: once per statement, never failing the application."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

QUESTION = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, correct_answer,"
    " ai_commentary_status) VALUES (%s, 'a', 'b', 'c', 'd', 'A', %s) RETURNING id"
)


def submit_jobs(db: psycopg.Connection[Any], status: str = "todo") -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'submit' AND status = %s",
        (status,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_pending_insert_defers_one_submit(db: psycopg.Connection[Any]) -> None:
    db.execute(QUESTION, ("Q1", "pending"))
    assert submit_jobs(db) == 1
    job = db.execute("SELECT queue_name, queueing_lock, args FROM procrastinate_jobs").fetchone()
    assert job == {"queue_name": "submit", "queueing_lock": "submit", "args": {}}


def test_bulk_insert_then_bulk_update_keep_at_most_one_waiting_job(
    db: psycopg.Connection[Any],
) -> None:
    db.execute(QUESTION, ("Q1", "pending"))
    db.execute(
        "INSERT INTO questions (question, option_a, option_b, option_c, option_d,"
        " ai_commentary_status) SELECT 'Q' || g, 'a', 'b', 'c', 'd', 'pending'"
        " FROM generate_series(1, 10000) g"
    )
    assert submit_jobs(db) == 1
    db.execute(
        "INSERT INTO questions (question, option_a, option_b, option_c, option_d,"
        " ai_commentary_status) SELECT 'R' || g, 'a', 'b', 'c', 'd', 'completed'"
        " FROM generate_series(1, 500) g"
    )
    db.execute("UPDATE questions SET ai_commentary_status = 'pending' WHERE question LIKE 'R%'")
    assert submit_jobs(db) == 1
    # Once the waiting job starts running, the next change may queue exactly one more.
    db.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE task_name = 'submit'")
    db.execute("UPDATE questions SET ai_commentary_status = 'completed' WHERE question LIKE 'R%'")
    db.execute("UPDATE questions SET ai_commentary_status = 'pending' WHERE question LIKE 'R%'")
    db.execute("UPDATE questions SET ai_commentary_status = 'completed' WHERE question LIKE 'R%'")
    db.execute("UPDATE questions SET ai_commentary_status = 'pending' WHERE question LIKE 'R%'")
    assert submit_jobs(db) == 1
    assert submit_jobs(db, "doing") == 1


def test_statement_trigger_defers_once_per_statement(db: psycopg.Connection[Any]) -> None:
    """10,000 rows in one INSERT call the defer function once, not 10,000 times."""
    db.execute("SELECT pg_stat_reset()")
    db.execute("SET track_functions = 'all'")
    db.execute(
        "INSERT INTO questions (question, ai_commentary_status)"
        " SELECT 'Q' || g, 'pending' FROM generate_series(1, 10000) g"
    )
    db.execute("SELECT pg_stat_force_next_flush()")
    row = db.execute(
        "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'worker_defer_job'"
    ).fetchone()
    assert row is not None and row["calls"] == 1


def test_non_pending_insert_defers_nothing(db: psycopg.Connection[Any]) -> None:
    db.execute(QUESTION, ("Q1", "completed"))
    db.execute(QUESTION, ("Q2", None))
    assert submit_jobs(db) == 0


def test_edit_outside_the_prompt_does_not_requeue_but_text_edit_does(
    db: psycopg.Connection[Any],
) -> None:
    # The human explanation and the difficulty are not in any prompt (the subject is: the
    # summary prompt names it, so it is part of the content hash, schema/0021).
    qid = db.execute(QUESTION, ("Q1", "completed")).fetchone()["id"]  # type: ignore[index]
    db.execute("UPDATE questions SET comment = 'Erklärung', difficulty = 3 WHERE id = %s", (qid,))
    assert submit_jobs(db) == 0
    row = db.execute("SELECT ai_commentary_status FROM questions WHERE id = %s", (qid,)).fetchone()
    assert row == {"ai_commentary_status": "completed"}

    db.execute("UPDATE questions SET option_c = 'neu' WHERE id = %s", (qid,))
    row = db.execute(
        "SELECT ai_commentary_status, ai_commentary_queued_at IS NOT NULL AS queued"
        " FROM questions WHERE id = %s",
        (qid,),
    ).fetchone()
    assert row == {"ai_commentary_status": "pending", "queued": True}
    assert submit_jobs(db) == 1


def test_unenrolled_question_edit_is_not_queued(db: psycopg.Connection[Any]) -> None:
    qid = db.execute(QUESTION, ("Q1", None)).fetchone()["id"]  # type: ignore[index]
    db.execute("UPDATE questions SET question = 'changed' WHERE id = %s", (qid,))
    assert submit_jobs(db) == 0


def test_rolled_back_insert_leaves_no_job(db_url: str, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(QUESTION, ("Q1", "pending"))
        conn.rollback()
    assert submit_jobs(db) == 0


def test_trigger_never_fails_the_application_statement(db: psycopg.Connection[Any]) -> None:
    """Even with Procrastinate's defer function broken, the application's insert succeeds."""
    db.execute(
        "ALTER FUNCTION procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])"
        " RENAME TO procrastinate_defer_jobs_v1_away"
    )
    try:
        db.execute(QUESTION, ("Q1", "pending"))
        row = db.execute("SELECT count(*) AS n FROM questions").fetchone()
        assert row == {"n": 1}
    finally:
        db.execute(
            "ALTER FUNCTION procrastinate_defer_jobs_v1_away(procrastinate_job_to_defer_v1[])"
            " RENAME TO procrastinate_defer_jobs_v1"
        )


def test_concurrent_writers_never_fail_and_leave_one_job(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                for i in range(25):
                    conn.execute(QUESTION, (f"W{n}-{i}", "pending"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert submit_jobs(db) == 1
    row = db.execute("SELECT count(*) AS n FROM questions").fetchone()
    assert row == {"n": 200}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("batch_size = 0", "batch_size must be a positive integer"),
        ("batch_size = -3", "batch_size must be a positive integer"),
        ("processing_delay_minutes = -1", "processing_delay_minutes must be >= 0"),
        ("models_enabled = '[true]'", "models_enabled must be a JSON object"),
        ("models_enabled = '{\"chatgpt\": 1}'", "models_enabled.chatgpt must be true or false"),
        ("models_enabled = '{\"claude\": true}'", 'unknown model key "claude"'),
        ('models = \'{"x": {"provider": "openai"}}\'', "models.x must be"),
    ],
)
def test_invalid_settings_are_rejected_readably(
    db: psycopg.Connection[Any], update: str, message: str
) -> None:
    before = db.execute("SELECT * FROM ai_commentary_settings").fetchone()
    with pytest.raises(psycopg.errors.CheckViolation, match=message):
        db.execute(f"UPDATE ai_commentary_settings SET {update}")
    assert db.execute("SELECT * FROM ai_commentary_settings").fetchone() == before
