"""`python -m worker db migrate`: idempotent, refuses changed files, installs onto production."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from worker.errors import MigrationError
from worker.migrate import SQL_DIR, migrate, status

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "production_shape.sql"


def _count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(next(iter(row.values())) if isinstance(row, dict) else row[0])


def test_migrate_twice_is_a_noop(empty_db_url: str) -> None:
    first = migrate(empty_db_url)
    assert first[0] == "procrastinate/schema.sql"
    assert len(first) == 1 + len(list(SQL_DIR.glob("*.sql")))
    with psycopg.connect(empty_db_url) as conn:
        before = conn.execute(
            "SELECT md5(string_agg(table_name || column_name || data_type, ',' ORDER BY 1))"
            " FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchone()
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        after = conn.execute(
            "SELECT md5(string_agg(table_name || column_name || data_type, ',' ORDER BY 1))"
            " FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchone()
    assert before == after
    assert all(state.startswith("applied") for _, state in status(empty_db_url))


def test_changed_applied_file_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(empty_db_url, sql_dir)
    target = sorted(sql_dir.glob("*.sql"))[0]
    target.write_text(target.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=f"{target.name} changed after it was applied"):
        migrate(empty_db_url, sql_dir)
    assert dict(status(empty_db_url, sql_dir))[target.name] == "CHANGED since applied"


def test_new_file_is_applied_on_next_run(empty_db_url: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(empty_db_url, sql_dir)
    (sql_dir / "9999_extra.sql").write_text("CREATE TABLE extra_thing (id int);")
    assert migrate(empty_db_url, sql_dir) == ["9999_extra.sql"]


def test_installs_onto_production_shaped_database(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(FIXTURE.read_text())
        questions = conn.execute(
            "SELECT id, question, ai_commentary_status FROM questions ORDER BY id"
        ).fetchall()
        wide_rows = _count(conn, "SELECT count(*) FROM ai_answer_comments")
        summaries = _count(conn, "SELECT count(*) FROM ai_commentary_summaries")
        batches = _count(conn, "SELECT count(*) FROM ai_commentary_batch_jobs")
        completed = _count(
            conn, "SELECT count(*) FROM questions WHERE ai_commentary_status = 'completed'"
        )
        summarised = _count(conn, "SELECT count(DISTINCT question_id) FROM ai_commentary_summaries")

    migrate(empty_db_url)
    assert migrate(empty_db_url) == []

    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        # Every question survives unchanged.
        assert (
            conn.execute(
                "SELECT id, question, ai_commentary_status FROM questions ORDER BY id"
            ).fetchall()
            == questions
        )
        # The old wide table is kept whole under a new name.
        assert _count(conn, "SELECT count(*) FROM ai_answer_comments_legacy") == wide_rows
        # Summaries: the newest per question stays, older duplicates moved aside, none lost.
        assert _count(conn, "SELECT count(*) FROM ai_commentary_summaries") == summarised
        assert (
            _count(conn, "SELECT count(*) FROM ai_commentary_summaries_legacy_duplicates")
            == summaries - summarised
        )
        assert (
            _count(
                conn,
                "SELECT count(*) FROM ai_commentary_summaries WHERE summary_general_comment <> 'neu'",
            )
            == 0
        )
        assert _count(conn, "SELECT count(*) FROM ai_commentary_batch_jobs") == batches
        # The settings row is kept with its front-end column, plus worker defaults.
        row = conn.execute(
            "SELECT ui_theme, batch_size, models FROM ai_commentary_settings"
        ).fetchone()
        assert row is not None and row["ui_theme"] == "dark" and row["batch_size"] == 40
        assert row["models"]["chatgpt"]["mode"] == "batch"
        # Old comments are readable through the wide view, newest row per question.
        wide = conn.execute(
            "SELECT w.chatgpt_general_comment, w.chatgpt_chosen_answer, w.gemini_new_general_comment,"
            " w.mistral_chosen_answer, q.question FROM ai_answer_comments_wide w"
            " JOIN questions q ON q.id = w.question_id"
        ).fetchall()
        assert len(wide) == completed
        for r in wide:
            assert r["chatgpt_general_comment"] == "neu chatgpt " + r["question"]
            assert r["chatgpt_chosen_answer"] == "B"
            assert r["gemini_new_general_comment"] == "neu gemini " + r["question"]
            assert r["mistral_chosen_answer"] is None  # 'x?' was not a valid letter
        # The trigger works on the migrated table.
        conn.execute("DELETE FROM procrastinate_jobs")
        conn.execute(
            "UPDATE questions SET ai_commentary_status = 'pending'"
            " WHERE ai_commentary_status = 'failed'"
        )
        assert (
            _count(conn, "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'submit'") == 1
        )
