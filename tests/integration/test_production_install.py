"""Issue 11 part 1: installing onto the production shape, then draining it.

The production-shaped fixture (tests/fixtures/production_shape.sql: the batch table exactly
as ../shared/reference/production-ddl.sql gives it, extra NOT NULL columns without defaults
on the old tables, rows in every status) → `python -m worker db migrate` → every old row is
kept and old comments read through ai_answer_comments_wide → a real worker process
(`python -m worker run --until-idle`) against the emulator drains every pending question,
those without ai_commentary_queued_at included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.worker_proc import FAST_HEALING
from worker.config import get_settings
from worker.emulator import Emulator
from worker.errors import MigrationError
from worker.migrate import migrate
from worker.providers.routing import reset_providers
from worker.queries import q

pytestmark = pytest.mark.timeout(240)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "production_shape.sql"
PRODUCTION_DDL = Path("/work/shared/reference/production-ddl.sql")
OLD_TABLES = (
    "questions",
    "ai_commentary_settings",
    "ai_answer_comments",
    "ai_commentary_summaries",
    "ai_commentary_batch_jobs",
)
MODELS = ["chatgpt", "gemini", "mistral", "perplexity", "deepseek"]  # the fixture's settings
DRAIN_MODELS = MODELS[:4]  # DeepSeek off for the drain (see below)


def _cli(url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    run_env = dict(env or os.environ)
    run_env["DATABASE_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"worker {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done.stdout


def _rows(conn: psycopg.Connection[Any], table: str) -> dict[str, dict[str, Any]]:
    """Every row of ``table`` as JSON, by id."""
    return {
        str(r["id"]): r["j"]
        for r in conn.execute(
            psycopg.sql.SQL("SELECT t.id, to_jsonb(t) AS j FROM {} t").format(
                psycopg.sql.Identifier(table)
            )
        ).fetchall()
    }


def _columns(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (r["table_name"], r["column_name"]): r
        for r in conn.execute(
            "SELECT table_name, column_name, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
        ).fetchall()
    }


def _same_old_columns(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return {k: after.get(k) for k in before} == before


@pytest.fixture
def production_db(empty_db_url: str) -> Iterator[str]:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
    yield empty_db_url


def test_fixture_batch_table_is_the_production_ddl(production_db: str) -> None:
    """The fixture's batch table is the reference DDL: same columns, types, NOT NULLs and
    defaults (compared on a database built from the reference text alone)."""
    shape = (
        "SELECT column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns"
        " WHERE table_name = 'ai_commentary_batch_jobs' ORDER BY ordinal_position"
    )
    with psycopg.connect(production_db, autocommit=True) as conn:
        fixture = conn.execute(shape).fetchall()
        conn.execute("CREATE SCHEMA reference_ddl")
        conn.execute("SET search_path = reference_ddl, public")
        if PRODUCTION_DDL.exists():
            conn.execute(PRODUCTION_DDL.read_text())
        else:  # outside this machine: the fixture's own copy of the DDL
            text = FIXTURE.read_text()
            conn.execute(text[text.index("create table if not exists ai_commentary_batch_jobs") :])
        reference = conn.execute(
            shape.replace("WHERE", "WHERE table_schema = 'reference_ddl' AND")
        ).fetchall()
    assert fixture == reference
    assert ("batch_id", "text", "NO", None) in fixture
    assert ("question_ids", "ARRAY", "NO", None) in fixture


def test_production_database_keeps_every_row_and_drains(
    production_db: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = production_db
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        before = {t: _rows(conn, t) for t in OLD_TABLES}
        columns_before = _columns(conn)
        by_status = {
            r["id"]: r["ai_commentary_status"]
            for r in conn.execute("SELECT id, ai_commentary_status FROM questions").fetchall()
        }
    pending = {i for i, s in by_status.items() if s == "pending"}
    processing = {i for i, s in by_status.items() if s == "processing"}
    no_queue_time = {
        i for i in pending if before["questions"][str(i)]["ai_commentary_queued_at"] is None
    }
    assert len(pending) == 20 and len(no_queue_time) == 10 and len(processing) == 20
    assert set(by_status.values()) == {"pending", "processing", "completed", "failed", None}

    out = _cli(url, "db", "migrate")
    assert "applied 0015_production_compat.sql" in out

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        # Every old row is kept with its values: questions, settings and batch rows in place;
        # the wide comment table whole under its legacy name; summaries in place or, the
        # older duplicates, moved whole to the legacy duplicates table.
        for table, target in [
            ("questions", ["questions"]),
            ("ai_commentary_settings", ["ai_commentary_settings"]),
            ("ai_commentary_batch_jobs", ["ai_commentary_batch_jobs"]),
            ("ai_answer_comments", ["ai_answer_comments_legacy"]),
            (
                "ai_commentary_summaries",
                ["ai_commentary_summaries", "ai_commentary_summaries_legacy_duplicates"],
            ),
        ]:
            now: dict[str, dict[str, Any]] = {}
            for t in target:
                now.update(_rows(conn, t))
            assert set(now) == set(before[table]), table
            changed = [i for i, row in before[table].items() if not _same_old_columns(row, now[i])]
            assert changed == [], (table, changed[:3])

        # Old comments read through the wide view: the newest row per question and model.
        wide = conn.execute(
            "SELECT w.*, q.question FROM ai_answer_comments_wide w"
            " JOIN questions q ON q.id = w.question_id"
        ).fetchall()
        assert len(wide) == 20
        for r in wide:
            assert r["chatgpt_general_comment"] == "neu chatgpt " + r["question"]
            assert r["gemini_new_general_comment"] == "neu gemini " + r["question"]
            assert r["mistral_general_comment"] == "neu mistral"
            assert r["processing_status"] == "completed"

        # Every column the worker added to an old table has a default or is nullable (the
        # old wide comment table is ai_answer_comments_legacy now, without additions).
        renamed = {"ai_answer_comments_legacy": "ai_answer_comments"}
        old_now = {
            (renamed.get(t, t), c): v
            for (t, c), v in _columns(conn).items()
            if renamed.get(t, t) in OLD_TABLES and t != "ai_answer_comments"
        }
        assert {k for k in columns_before if k[0] in OLD_TABLES} <= set(old_now)
        added = {k: v for k, v in old_now.items() if k not in columns_before}
        assert added, "the worker adds its bookkeeping columns"
        strict = [
            k for k, v in added.items() if v["is_nullable"] == "NO" and not v["column_default"]
        ]
        assert strict == []

        # On the old tables the worker inserts into, every NOT NULL column without a default
        # is one its INSERT fills; what was changed is recorded.
        rigid = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_name IN ('ai_commentary_batch_jobs', 'ai_commentary_summaries')"
            " AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'"
            " ORDER BY 1, 2"
        ).fetchall()
        assert [(r["table_name"], r["column_name"]) for r in rigid] == [
            ("ai_commentary_batch_jobs", "provider")
        ]
        changes = {
            (r["table_name"], r["column_name"]): r["change"]
            for r in conn.execute("SELECT * FROM worker_install_changes").fetchall()
        }
        assert changes == {
            ("ai_commentary_batch_jobs", "batch_id"): "DROP NOT NULL",
            ("ai_commentary_batch_jobs", "question_ids"): "SET DEFAULT '{}'",
            ("ai_commentary_summaries", "language"): "SET DEFAULT ''",
            ("ai_commentary_summaries", "is_published"): "SET DEFAULT false",
            ("ai_commentary_summaries", "revision"): "DROP NOT NULL",  # in a CHECK
            ("ai_commentary_summaries", "source_kind"): "DROP NOT NULL",  # an enum
            ("ai_commentary_summaries", "editor_id"): "DROP NOT NULL",  # a foreign key
        }

        # NULL queued_at means "queued long ago": with the production delay of 3 minutes
        # the claim takes every pending row, those without a queue time first.
        assert conn.execute(
            "SELECT processing_delay_minutes AS d FROM ai_commentary_settings"
        ).fetchone() == {"d": 3}
        for limit, expected in [(10, no_queue_time), (100, pending)]:
            with conn.transaction(force_rollback=True):
                got = conn.execute(
                    q("claim_pending"),
                    {"delay_minutes": 3, "limit": limit, "models": MODELS, "partial_models": []},
                ).fetchall()
            assert {r["id"] for r in got} == expected

    # `status` does not call rows of unknown age 0 s old.
    text = _cli(url, "status")
    assert "oldest pending 0s" not in text and "oldest claim 0s" not in text
    assert "oldest pending >= " in text and "10 from before the install" in text, text
    snap = json.loads(_cli(url, "status", "--json"))["questions"]
    assert snap["pending_without_queued_at"] == 10
    assert snap["processing_without_claimed_at"] == 20
    assert snap["oldest_pending_age_seconds"] > 0 and snap["oldest_processing_age_seconds"] > 0

    # A real worker process drains the database against the emulator. The delay goes to 0
    # only so the old stuck `processing` rows, re-queued now by the tick, need not wait.
    # DeepSeek is switched off: it offers only json_object mode (schema in the prompt), and
    # the emulator answers that mode with JSON of no particular shape, so its comments would
    # fail validation whatever the install does (tests/fixtures/pipeline.py does the same).
    point_env_at_emulator(monkeypatch, emulator)
    emulator.configure(state_seconds=0)
    get_settings.cache_clear()
    reset_providers()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_commentary_settings SET processing_delay_minutes = 0,"
            " models_enabled = models_enabled || '{\"deepseek\": false}'"
        )
    env = {**os.environ, **FAST_HEALING}
    _cli(url, "run", "--until-idle", "--timeout", "150", env=env, timeout=200)

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        after = {
            r["id"]: r
            for r in conn.execute(
                "SELECT id, ai_commentary_status AS status, ai_commentary_attempts AS attempts,"
                " ai_commentary_error AS error FROM questions"
            ).fetchall()
        }
        assert set(after) == set(by_status)
        for i, old in by_status.items():
            now_status = after[i]["status"]
            if old in ("pending", "processing"):
                assert now_status == "completed", after[i]
            else:  # failed stays failed (not retried by itself), NULL stays not enrolled
                assert now_status == old, (old, after[i])
        # Each drained question was claimed once: one attempt.
        assert {after[i]["attempts"] for i in pending} == {1}
        assert {after[i]["attempts"] for i in processing} == {1}

        drained = list(pending | processing)
        per_model = conn.execute(
            "SELECT model_key, count(DISTINCT question_id) AS n FROM ai_answer_comments"
            " WHERE question_id = ANY(%s) AND source = 'worker' GROUP BY 1 ORDER BY 1",
            (drained,),
        ).fetchall()
        assert {r["model_key"]: r["n"] for r in per_model} == {m: 40 for m in DRAIN_MODELS}
        wide_new = conn.execute(
            "SELECT count(*) AS n FROM ai_answer_comments_wide WHERE question_id = ANY(%s)"
            " AND chatgpt_general_comment <> '' AND gemini_new_general_comment <> ''"
            " AND mistral_general_comment <> '' AND perplexity_general_comment <> ''",
            (drained,),
        ).fetchone()
        assert wide_new == {"n": 40}

        # Summaries went into the old table (its unknown NOT NULL columns took their
        # defaults): one per drained question and one per old completed question that had
        # comments but no summary; the old summaries are untouched.
        summaries = _rows(conn, "ai_commentary_summaries")
        new_summaries = {
            i: s for i, s in summaries.items() if i not in before["ai_commentary_summaries"]
        }
        summarised = {s["question_id"] for s in summaries.values()}
        completed = {str(i) for i, r in after.items() if r["status"] == "completed"}
        assert summarised == completed
        assert len(new_summaries) == 44
        assert {
            (s["language"], s["is_published"], s["revision"]) for s in new_summaries.values()
        } == {("", False, None)}

        # Batch rows: the old ones unchanged; the worker's own have a provider batch id and
        # the provider's raw final state in `status`, their lifecycle in `state`.
        batches = _rows(conn, "ai_commentary_batch_jobs")
        mine = [b for i, b in batches.items() if i not in before["ai_commentary_batch_jobs"]]
        assert len(mine) >= 4
        assert all(b["batch_id"] and b["state"] == "ingested" for b in mine), mine
        assert {b["status"] for b in mine} <= {"completed", "JOB_STATE_SUCCEEDED", "SUCCESS"}, mine
        for i, old_row in before["ai_commentary_batch_jobs"].items():
            assert _same_old_columns(old_row, batches[i])


def test_unknown_not_null_columns_of_the_batch_table_take_defaults(empty_db_url: str) -> None:
    """The generic rule on the batch table: zero-value defaults where the type has one and no
    constraint could object, DROP NOT NULL otherwise; the worker's intent insert succeeds."""
    ddl = PRODUCTION_DDL.read_text() if PRODUCTION_DDL.exists() else None
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        if ddl is None:
            text = FIXTURE.read_text()
            ddl = text[text.index("create table if not exists ai_commentary_batch_jobs") :]
            ddl = ddl[: ddl.index(";") + 1]
        conn.execute(ddl)
        conn.execute(
            "CREATE TABLE teams (id uuid PRIMARY KEY DEFAULT gen_random_uuid());"
            "ALTER TABLE ai_commentary_batch_jobs"
            " ADD COLUMN note varchar(40) NOT NULL, ADD COLUMN retries int NOT NULL,"
            " ADD COLUMN meta jsonb NOT NULL, ADD COLUMN tags text[] NOT NULL,"
            " ADD COLUMN due date NOT NULL, ADD COLUMN cost numeric(10, 2) NOT NULL,"
            " ADD COLUMN done boolean NOT NULL, ADD COLUMN span interval NOT NULL,"
            " ADD COLUMN team_id uuid NOT NULL REFERENCES teams (id),"
            " ADD COLUMN owner uuid NOT NULL, ADD COLUMN code text NOT NULL UNIQUE,"
            " ADD COLUMN rank int NOT NULL CHECK (rank > 0),"
            " ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY"
        )
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        changes = {
            r["column_name"]: r["change"]
            for r in conn.execute(
                "SELECT column_name, change FROM worker_install_changes"
                " WHERE table_name = 'ai_commentary_batch_jobs'"
            ).fetchall()
        }
        assert changes == {
            "batch_id": "DROP NOT NULL",
            "question_ids": "SET DEFAULT '{}'",
            "note": "SET DEFAULT ''",
            "retries": "SET DEFAULT 0",
            "meta": "SET DEFAULT '{}'",
            "tags": "SET DEFAULT '{}'",
            "due": "SET DEFAULT now()::date",
            "cost": "SET DEFAULT 0",
            "done": "SET DEFAULT false",
            "span": "SET DEFAULT '0'",
            "team_id": "DROP NOT NULL",
            "owner": "DROP NOT NULL",
            "code": "DROP NOT NULL",
            "rank": "DROP NOT NULL",
        }
        ids = [
            r["id"]
            for r in conn.execute(
                "INSERT INTO questions (question) SELECT 'q' || g FROM generate_series(1, 2) g"
                " RETURNING id"
            ).fetchall()
        ]
        for _ in range(2):  # twice: nothing unique was given a shared made-up value
            job_id = conn.execute("SELECT gen_random_uuid() AS id").fetchone()
            assert job_id is not None
            conn.execute(
                q("insert_batch_intent"),
                {
                    "id": job_id["id"],
                    "provider": "openai",
                    "stage": "comment",
                    "model_key": "chatgpt",
                    "model_name": "gpt-4.1-mini",
                    "question_ids": ids,
                    "request_count": 2,
                },
            )
        row = conn.execute(
            "SELECT batch_id, status, state, note, retries, meta, tags, due = current_date AS today,"
            " done, team_id, code, rank FROM ai_commentary_batch_jobs WHERE id = %s",
            (job_id["id"],),
        ).fetchone()
        assert row == {
            "batch_id": None,
            "status": "pending",  # the old UI's word until the provider answers
            "state": "submitting",
            "note": "",
            "retries": 0,
            "meta": {},
            "tags": [],
            "today": True,
            "done": False,
            "team_id": None,
            "code": None,
            "rank": None,
        }
        # An intent the provider never created ends 'failed' in the old column.
        conn.execute(q("batch_abandoned"), {"id": job_id["id"], "error": "refused"})
        row = conn.execute(
            "SELECT status, state FROM ai_commentary_batch_jobs WHERE id = %s", (job_id["id"],)
        ).fetchone()
        assert row == {"status": "failed", "state": "abandoned"}


def test_primary_key_without_default_stops_the_install_with_a_readable_error(
    empty_db_url: str,
) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ai_commentary_summaries (summary_key text PRIMARY KEY,"
            " question_id uuid, summary_general_comment text)"
        )
    with pytest.raises(MigrationError) as err:
        migrate(empty_db_url)
    message = str(err.value)
    assert "0015_production_compat.sql failed" in message
    assert "ai_commentary_summaries.summary_key is a primary key column of type text" in message
    assert "ALTER TABLE ai_commentary_summaries ALTER COLUMN summary_key SET DEFAULT" in message
