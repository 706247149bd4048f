"""No poison pills (issue #11 part 4): each single bad value that used to halt a whole lane
silently now gets a readable error - at the statement that writes it (the triggers of
schema/0017), or, for a row the triggers never saw, in ``worker_errors`` naming the row -
and the other rows of the same lane complete, with the real runner, real Postgres and the
emulator over real HTTP.

"A row the triggers never saw" is a row written before 0017 was applied: the tests write it
with ``session_replication_role = replica`` (triggers off), as the old database held it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.database import create_db, drop_db
from tests.fixtures.pipeline import DEFAULT_MODELS, adrain, drain, set_models, status_counts
from worker.commentary import prompts, request_check, submit
from worker.config import get_settings
from worker.emulator import Emulator
from worker.migrate import migrate
from worker.queue.task_runs import recorded_run
from worker.realtime.drain import reset_clients

pytestmark = pytest.mark.timeout(120)

GOOD = {
    "question": "Welches Organ produziert Insulin?",
    "option_a": "Leber",
    "option_b": "Pankreas",
    "option_c": "Milz",
    "option_d": "Niere",
    "option_e": "Herz",
    "correct_answer": "B",
    "subject": "Physiologie",
}


# ------------------------------------------------------------------------------- helpers


def insert_question(db: psycopg.Connection[Any], **overrides: Any) -> uuid.UUID:
    values = {**GOOD, **overrides}
    cols = list(values)
    row = db.execute(
        f"INSERT INTO questions ({', '.join(cols)}, ai_commentary_status)"
        f" VALUES ({', '.join(['%s'] * len(cols))}, 'pending') RETURNING id",
        [values[c] for c in cols],
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def insert_good(db: psycopg.Connection[Any], n: int, prefix: str = "Frage") -> list[uuid.UUID]:
    return [insert_question(db, question=f"{prefix} {i}: {GOOD['question']}") for i in range(n)]


def only_chatgpt(db: psycopg.Connection[Any]) -> None:
    set_models(db, **{m: False for m in DEFAULT_MODELS})
    set_models(db, chatgpt=True)


def worker_errors(db: psycopg.Connection[Any], kind: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.execute(
            "SELECT kind, provider, question_id, message, detail, occurrences"
            " FROM worker_errors WHERE kind = %s ORDER BY id",
            (kind,),
        ).fetchall()
    ]


def assert_no_crash(db: psycopg.Connection[Any]) -> None:
    bad = db.execute(
        "SELECT task_name, outcome FROM worker_task_runs WHERE outcome <> 'ok'"
    ).fetchall()
    assert bad == []


def refused(db: psycopg.Connection[Any], sql: str, params: Any = None) -> str:
    """The readable message of the error the statement fails with."""
    with pytest.raises(psycopg.Error) as info:
        db.execute(sql, params)
    assert isinstance(info.value, errors.CheckViolation | errors.UniqueViolation), info.value
    return str(info.value.diag.message_primary)


def without_triggers(db: psycopg.Connection[Any], sql: str, params: Any = None) -> None:
    """Write as a database from before schema/0017 held it: no trigger runs."""
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(sql, params)


@pytest.fixture
def rt(db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    from tests.fixtures.pipeline import point_env_at_emulator

    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    reset_clients()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_realtime_settings SET backoff_base_seconds = 0.1, linger_seconds = 0.2"
        )
    yield emulator
    get_settings.cache_clear()
    reset_clients()


def insert_jobs(db: psycopg.Connection[Any], n: int, provider: str = "openai") -> list[int]:
    model = {"openai": "gpt-4.1-mini", "mock": "mock"}[provider]
    rows = db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', %s, %s, 'Text ' || g FROM generate_series(1, %s) g RETURNING id",
        (provider, model, n),
    ).fetchall()
    return [r["id"] for r in rows]


def job_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute("SELECT status, count(*) AS n FROM ai_jobs GROUP BY 1").fetchall()
    return {r["status"]: r["n"] for r in rows}


# ------------------------------------------------------------------- prompt templates


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("Frage: {question:>100000000000000}", "{question:>100000000000000}"),
        ("Frage: {question:>20000000}", "{question:>20000000}"),
        ("Frage: {question.__class__.__mro__}", "{question.__class__.__mro__}"),
    ],
)
def test_a_template_with_a_format_spec_or_attribute_access_is_refused(
    pipeline: Emulator, db: psycopg.Connection[Any], template: str, shown: str
) -> None:
    only_chatgpt(db)
    message = refused(
        db, "UPDATE ai_commentary_settings SET user_prompt_template = %s", (template,)
    )
    assert message.startswith(f"ai_commentary_settings.user_prompt_template: {shown} is not")
    assert "may use only the bare placeholders {question}" in message
    ids = insert_good(db, 3)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


async def test_a_template_row_from_before_the_trigger_is_reported_not_run(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    # The old row holds the memory bomb: the worker refuses it by the same rule, records
    # it, never renders it (no MemoryError), and takes the work once a person fixes it.
    only_chatgpt(db)
    without_triggers(
        db,
        "UPDATE ai_commentary_settings SET user_prompt_template = %s",
        ("{question:>100000000000000}",),
    )
    ids = insert_good(db, 3)
    report = await submit.run_submit(opened_app.connector.pool)
    assert "{question:>100000000000000} has a format spec" in report["error"]
    (err,) = worker_errors(db, "settings")
    assert "user_prompt_template" in err["message"] and "format spec" in err["message"]
    assert status_counts(db) == {"pending": len(ids)}
    db.execute(
        "UPDATE ai_commentary_settings SET user_prompt_template = %s",
        ("{{Fach}} {subject}: {question}\nA) {option_a}\nB) {option_b}",),
    )
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": len(ids)}


# ----------------------------------------------------------------------------- model keys


@pytest.mark.parametrize("key", ["Chat-GPT", "GPT-4o"])
def test_a_model_key_outside_the_rule_is_refused(
    pipeline: Emulator, db: psycopg.Connection[Any], key: str
) -> None:
    only_chatgpt(db)
    models = {**DEFAULT_MODELS, key: {"provider": "openai", "model": "gpt-4o", "mode": "batch"}}
    message = refused(db, "UPDATE ai_commentary_settings SET models = %s", (json.dumps(models),))
    assert message == (
        f'ai_commentary_settings.models: model key "{key}" must be 1-63 lowercase letters,'
        ' digits or underscores (e.g. "chatgpt", "gpt_4o")'
    )
    ids = insert_good(db, 3)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


# ------------------------------------------------------------------------------ providers


def test_an_unsupported_provider_in_models_is_refused(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only_chatgpt(db)
    models = {
        **DEFAULT_MODELS,
        "claude": {"provider": "anthropic", "model": "c", "mode": "instant"},
    }
    message = refused(db, "UPDATE ai_commentary_settings SET models = %s", (json.dumps(models),))
    assert message.startswith(
        'ai_commentary_settings.models.claude: unknown provider "anthropic" (supported: openai,'
    )
    ids = insert_good(db, 3)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


@pytest.mark.parametrize(
    ("key", "route", "problem"),
    [
        (
            "claude",
            {"provider": "anthropic", "model": "claude", "mode": "instant"},
            "unknown provider 'anthropic'",
        ),
        ("GPT-4o", {"provider": "openai", "model": "gpt-4o", "mode": "batch"}, "model key"),
    ],
)
def test_a_bad_model_entry_from_before_the_trigger_stops_only_that_model(
    pipeline: Emulator, db: psycopg.Connection[Any], key: str, route: Any, problem: str
) -> None:
    only_chatgpt(db)
    without_triggers(
        db,
        "UPDATE ai_commentary_settings SET models = models || %s,"
        " models_enabled = models_enabled || %s",
        (json.dumps({key: route}), json.dumps({key: True})),
    )
    ids = insert_good(db, 3)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}
    (err,) = worker_errors(db, "settings")
    assert err["message"].startswith(
        f"ai_commentary_settings.models.{key} is left out until it is fixed: "
    )
    assert problem in err["message"]
    assert not db.execute(
        "SELECT 1 FROM ai_commentary_requests WHERE model_key = %s", (key,)
    ).fetchall()


# ------------------------------------------------------------------- one settings row


def test_a_second_settings_row_is_refused(pipeline: Emulator, db: psycopg.Connection[Any]) -> None:
    only_chatgpt(db)
    message = refused(db, "INSERT INTO ai_commentary_settings (feature_enabled) VALUES (false)")
    assert message == (
        "ai_commentary_settings holds exactly one row: UPDATE it instead of inserting another"
    )
    # The constraint holds even where the trigger does not run.
    with pytest.raises(errors.UniqueViolation, match="ai_commentary_settings_one_row"):
        without_triggers(db, "INSERT INTO ai_commentary_settings (feature_enabled) VALUES (false)")
    ids = insert_good(db, 3)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


def test_migrate_keeps_the_newest_settings_row_and_reports_old_bad_values(
    pg_server_url: str, tmp_path: Path
) -> None:
    # An old database with two rows: the newest stays the settings, the other is kept whole
    # in ai_commentary_settings_replaced, and a third cannot be added.
    old = tmp_path / "schema"
    old.mkdir()
    schema = resources.files("worker.schema")
    for f in schema.iterdir():
        if f.name.endswith(".sql") and f.name < "0015":
            shutil.copyfile(str(f), old / f.name)
    name, url = create_db(pg_server_url, None)
    try:
        migrate(url, old)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE ai_commentary_settings SET updated_at = now() - interval '1 day'")
            conn.execute("INSERT INTO ai_commentary_settings (batch_size) VALUES (7)")
            # values the old triggers let through
            conn.execute(
                "UPDATE ai_commentary_settings SET models = models || %s WHERE batch_size = 7",
                (json.dumps({"claude": {"provider": "anthropic", "model": "c"}}),),
            )
            conn.execute(
                'UPDATE ai_realtime_settings SET provider_concurrency = \'{"openai": "abc"}\''
            )
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT batch_size FROM ai_commentary_settings").fetchall()
            assert rows == [(7,)]
            kept = conn.execute(
                "SELECT row_data ->> 'batch_size' FROM ai_commentary_settings_replaced"
            ).fetchall()
            assert kept == [("40",)]
            with pytest.raises(errors.UniqueViolation):
                conn.execute("INSERT INTO ai_commentary_settings (batch_size) VALUES (8)")
            # The rows that break the new rules are kept as they are, and reported at once.
            reported = conn.execute(
                "SELECT kind, message FROM worker_errors ORDER BY fingerprint"
            ).fetchall()
            assert reported == [
                (
                    "settings",
                    "the ai_commentary_settings row breaks a rule enforced since migration"
                    ' 0017: ai_commentary_settings.models.claude: unknown provider "anthropic"'
                    " (supported: openai, gemini, mistral, openrouter, perplexity, deepseek,"
                    " ollama, mock)",
                ),
                (
                    "settings",
                    "the ai_realtime_settings row breaks a rule enforced since migration 0017:"
                    " ai_realtime_settings.provider_concurrency.openai must be a whole number"
                    ' from 1 to 10000 (got "abc")',
                ),
            ]
    finally:
        drop_db(pg_server_url, name)


# --------------------------------------------------------------------- delayed submits


async def test_a_long_processing_delay_never_blocks_a_later_submit(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only_chatgpt(db)
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 600")
    insert_question(db, question="Vorher: " + GOOD["question"])
    # The wake-up that insert deferred is the submit that runs now (called directly here).
    db.execute("DELETE FROM procrastinate_jobs WHERE task_name = 'submit'")
    await submit.run_submit(opened_app.connector.pool)  # within the delay: schedules one
    delayed = db.execute(
        "SELECT queueing_lock, scheduled_at FROM procrastinate_jobs"
        " WHERE task_name = 'submit' AND status = 'todo' AND scheduled_at > now()"
    ).fetchall()
    assert len(delayed) == 1
    assert delayed[0]["scheduled_at"] > datetime.now(UTC) + timedelta(hours=9)

    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0")
    insert_question(db, question="Nachher: " + GOOD["question"])
    # The new question's wake-up is not swallowed by the delayed job's lock ...
    woken = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'submit'"
        " AND status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())"
    ).fetchone()
    assert woken is not None and woken["n"] == 1
    assert delayed[0]["queueing_lock"].startswith("submit-delayed@")
    # ... so both are answered now, and the stale delayed submit is cancelled.
    assert await adrain(60) == 0
    assert status_counts(db) == {"completed": 2}
    left = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE queueing_lock LIKE 'submit-delayed@%'"
        " AND status = 'todo'"
    ).fetchone()
    assert left is not None and left["n"] == 0


def test_a_processing_delay_over_a_day_is_refused(db: psycopg.Connection[Any]) -> None:
    message = refused(db, "UPDATE ai_commentary_settings SET processing_delay_minutes = 6000")
    assert message == (
        "ai_commentary_settings.processing_delay_minutes must be at most 1440 (one day; got 6000)"
    )


# ------------------------------------------------------------------------- request size


def test_a_5_mb_subject_fails_its_question_and_is_never_sent(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    only_chatgpt(db)
    ids = insert_good(db, 3)
    victim = insert_question(db, subject="Physiologie " * 420_000)  # 5 MB
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": 3, "failed": 1}
    row = db.execute(
        "SELECT ai_commentary_error FROM questions WHERE id = %s", (victim,)
    ).fetchone()
    assert row is not None
    assert row["ai_commentary_error"] == (
        "bad question: the subject is 5,040,000 characters, more than the limit of 1,000"
    )
    (err,) = worker_errors(db, "bad_question")
    assert err["question_id"] == victim and str(victim) in err["message"]
    sent = set(pipeline.stats()["openai"]["custom_ids"])
    assert not any(str(victim) in cid for cid in sent)
    assert all(any(str(q) in cid for cid in sent) for q in ids)


def test_a_request_over_the_size_limit_fails_before_it_is_sent(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last net: measured on the rendered request (system prompt, template, subject,
    # question, options). A limit just above a normal request lets only the long one fail.
    only_chatgpt(db)
    ids = insert_good(db, 3)
    victim = insert_question(db, question="Lang " * 2_000 + GOOD["question"])
    monkeypatch.setattr(request_check, "MAX_REQUEST_CHARS", 8_000)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": 3, "failed": 1}
    row = db.execute(
        "SELECT ai_commentary_error FROM questions WHERE id = %s", (victim,)
    ).fetchone()
    assert row is not None
    assert row["ai_commentary_error"].startswith(
        "bad question: its chatgpt comment request would be "
    )
    assert row["ai_commentary_error"].endswith(
        "characters (system and user prompt), more than the limit of 8,000"
    )
    sent = set(pipeline.stats()["openai"]["custom_ids"])
    assert not any(str(victim) in cid for cid in sent) and len(sent) == 2 * len(ids)


# ---------------------------------------------------------------- exceptions in a task


def test_a_row_whose_request_cannot_be_built_fails_with_its_reason(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A MemoryError while rendering one question (what the format spec did) fails that
    # question, named, and the others of the lane are sent.
    only_chatgpt(db)
    ids = insert_good(db, 3)
    victim = insert_question(db, question="GIFT " + GOOD["question"])
    real = prompts.user_prompt

    def user_prompt(q: prompts.QuestionText, template: str | None = None) -> str:
        if q.question.startswith("GIFT"):
            raise MemoryError
        return real(q, template)

    monkeypatch.setattr(prompts, "user_prompt", user_prompt)
    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids), "failed": 1}
    row = db.execute(
        "SELECT ai_commentary_error FROM questions WHERE id = %s", (victim,)
    ).fetchone()
    assert row == {
        "ai_commentary_error": "bad question: its chatgpt comment request could not be built"
        " (MemoryError: )"
    }
    (err,) = worker_errors(db, "bad_question")
    assert err["question_id"] == victim


async def test_any_exception_ending_a_task_is_recorded_with_the_task_name(
    db: psycopg.Connection[Any], opened_app: Any
) -> None:
    pool = opened_app.connector.pool
    for _ in range(2):
        with pytest.raises(MemoryError):
            async with recorded_run(pool, "submit", 41):
                raise MemoryError
    with pytest.raises(ZeroDivisionError):
        async with recorded_run(pool, "drain", 42):
            _ = 1 / 0
    rows = worker_errors(db, "task_error")
    assert [(r["message"], r["occurrences"], r["detail"]["task"]) for r in rows] == [
        ("task submit failed: MemoryError: ", 2, "submit"),
        ("task drain failed: ZeroDivisionError: division by zero", 1, "drain"),
    ]
    runs = db.execute("SELECT task_name, outcome FROM worker_task_runs ORDER BY id").fetchall()
    assert [r["outcome"] for r in runs] == ["error: MemoryError"] * 2 + ["error: ZeroDivisionError"]


async def test_a_model_whose_submit_crashes_does_not_stop_the_others(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_models(db, **{m: False for m in DEFAULT_MODELS})
    set_models(db, chatgpt=True, gemini=True)
    ids = insert_good(db, 2)
    real = submit.submit_batch_model

    async def crashing(pool: Any, settings: Any, model_key: str) -> tuple[int, int]:
        if model_key == "gemini":
            raise MemoryError("gemini build")
        return await real(pool, settings, model_key)

    monkeypatch.setattr(submit, "submit_batch_model", crashing)
    report = await submit.run_submit(opened_app.connector.pool)
    assert report["skipped_models"] == ["gemini"]
    assert report["requests_sent"] == len(ids)
    (err,) = worker_errors(db, "submit_error")
    assert err["message"] == "submit of model 'gemini' (gemini) failed: MemoryError: gemini build"


# ------------------------------------------------------------------------------ ai_jobs


def test_setting_a_job_provider_to_null_is_refused(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    ids = insert_jobs(db, 6)
    message = refused(db, "UPDATE ai_jobs SET provider = NULL WHERE id = %s", (ids[0],))
    assert message.startswith("ai_jobs: provider must be one of openai, gemini, mistral,")
    assert message.endswith("(got NULL)")
    message = refused(db, "UPDATE ai_jobs SET model = '' WHERE id = %s", (ids[1],))
    assert message == "ai_jobs: model must not be empty (got '')"
    # NOT NULL holds even where no trigger runs.
    with pytest.raises(errors.NotNullViolation):
        without_triggers(db, "UPDATE ai_jobs SET provider = NULL WHERE id = %s", (ids[0],))
    assert drain(60) == 0
    assert job_counts(db) == {"completed": 6}


def test_a_job_with_an_unsupported_provider_fails_and_the_lane_goes_on(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    ids = insert_jobs(db, 5)
    message = refused(db, "UPDATE ai_jobs SET provider = 'anthropic' WHERE id = %s", (ids[0],))
    assert "(got 'anthropic')" in message
    # A row from before the trigger: it fails with the reason, the five others complete.
    without_triggers(
        db,
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " VALUES ('completion', 'anthropic', 'claude', 'Hallo')",
    )
    assert drain(60) == 0
    rows = db.execute(
        "SELECT provider, status, error, error_kind FROM ai_jobs ORDER BY id"
    ).fetchall()
    assert [r["status"] for r in rows] == ["completed"] * 5 + ["failed"]
    assert rows[-1]["error_kind"] == "invalid_job"
    assert rows[-1]["error"].startswith("ai_jobs: unknown provider 'anthropic' (supported:")
    (err,) = worker_errors(db, "ai_job:invalid_job")
    assert err["detail"]["ai_job_id"] == max(ids) + 1 and "anthropic" in err["message"]


def test_a_non_integer_concurrency_is_refused(rt: Emulator, db: psycopg.Connection[Any]) -> None:
    insert_jobs(db, 5)
    message = refused(
        db, 'UPDATE ai_realtime_settings SET provider_concurrency = \'{"openai": "abc"}\''
    )
    assert message == (
        "ai_realtime_settings.provider_concurrency.openai must be a whole number from 1 to 10000"
        ' (got "abc")'
    )
    # A row from before the trigger: reported, the built-in concurrency used, jobs done.
    without_triggers(
        db, 'UPDATE ai_realtime_settings SET provider_concurrency = \'{"openai": "abc"}\''
    )
    assert drain(60) == 0
    assert job_counts(db) == {"completed": 5}
    (err,) = worker_errors(db, "settings")
    assert err["message"] == (
        "ai_realtime_settings.provider_concurrency.openai must be a whole number from 1 to"
        " 10000 (got 'abc'); ignored"
    )


def test_a_deleted_realtime_settings_row_keeps_the_builtin_limits(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute("DELETE FROM ai_realtime_settings")
    message = refused(
        db,
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " VALUES ('completion', 'openai', 'gpt-4.1-mini', repeat('x', 40000))",
    )
    assert message == "ai_jobs: input_text is too long (40000 characters, the limit is 32000)"
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
        " SELECT 'chat', 'openai', 'gpt-4.1-mini', 'Frage ' || g, 's1'"
        " FROM generate_series(1, 10) g"
    )
    message = refused(
        db,
        "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
        " VALUES ('chat', 'openai', 'gpt-4.1-mini', 'Frage 11', 's1')",
    )
    assert message == "ai_jobs: session 's1' has reached its limit of 10 questions"
    insert_jobs(db, 5)
    assert drain(60) == 0
    assert job_counts(db) == {"completed": 15}
    (err,) = worker_errors(db, "settings")
    assert err["message"] == "ai_realtime_settings has no row; the built-in limits apply"


# ------------------------------------------------------------- answers Postgres cannot hold


def poison_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real emulator answer, with NUL and a lone surrogate put in for the input that
    asks for it (a model may emit ``\\u0000`` in its JSON; the emulator does not)."""
    from worker.providers.base import Reply
    from worker.providers.routing import Providers

    real = Providers.converse

    async def chat(self: Any, provider: str, model: str, prompt: Any, keep: Any = None) -> Any:
        reply = await real(self, provider, model, prompt, keep)
        if "GIFT" in prompt.user:
            return Reply("Ant\x00wort \udcff", reply.input_tokens, reply.output_tokens)
        return reply

    monkeypatch.setattr(Providers, "converse", chat)


def test_an_answer_with_nul_is_cleaned_and_the_flush_goes_on(
    rt: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_answers(monkeypatch)
    insert_jobs(db, 5)
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
        " VALUES ('chat', 'openai', 'gpt-4.1-mini', 'GIFT bitte', 's1')"
    )
    assert drain(60) == 0
    assert job_counts(db) == {"completed": 6}
    row = db.execute("SELECT result_text FROM ai_jobs WHERE session_id = 's1'").fetchone()
    assert row == {"result_text": "Antwort \ufffd"}
    assert [
        r["content"]
        for r in db.execute(
            "SELECT content FROM ai_chat_messages WHERE session_id = 's1' ORDER BY id"
        ).fetchall()
    ] == ["GIFT bitte", "Antwort \ufffd"]


def test_an_outcome_that_cannot_be_stored_fails_alone_with_the_reason(
    rt: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's last resort, for whatever cleaning does not foresee: the flush fails,
    # the outcomes are written one by one, the bad one becomes a failed job with the reason.
    from worker.realtime import drain as drain_module

    poison_answers(monkeypatch)
    monkeypatch.setattr(drain_module, "storable", lambda o: o)
    ids = insert_jobs(db, 5)
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " VALUES ('completion', 'openai', 'gpt-4.1-mini', 'GIFT bitte')"
    )
    assert drain(60) == 0
    rows = db.execute("SELECT status, error, error_kind FROM ai_jobs ORDER BY id").fetchall()
    assert [r["status"] for r in rows] == ["completed"] * 5 + ["failed"]
    assert rows[-1]["error_kind"] == "unstorable"
    assert rows[-1]["error"].startswith("the result could not be stored (UnicodeEncodeError: ")
    (err,) = worker_errors(db, "ai_job:unstorable")
    assert err["detail"]["ai_job_id"] == max(ids) + 1


# ------------------------------------------------------------------------ what 0017 adds


def test_what_0017_creates_is_closed_to_supabase_roles(empty_db_url: str) -> None:
    # Supabase's default privileges grant anon and authenticated all on new tables and
    # functions; 0017's table and functions take that back (roles are cluster-wide: created
    # if missing, never dropped).
    fns = [
        "worker_supported_providers()",
        "worker_batch_providers()",
        "worker_template_problem(text)",
        "worker_check_settings_rules()",
        "worker_check_realtime_settings()",
        "worker_ai_jobs_checks()",
    ]
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for role in ("anon", "authenticated"):
            conn.execute(
                "DO $$ BEGIN CREATE ROLE " + role + " NOLOGIN;"
                " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            )
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated"
        )
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
            " GRANT ALL ON FUNCTIONS TO anon, authenticated"
        )
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for role in ("anon", "authenticated"):
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'ai_commentary_settings_replaced',"
                " 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')",
                (role,),
            ).fetchone()
            assert row == (False,)
            for fn in fns:
                row = conn.execute(
                    "SELECT has_function_privilege(%s, %s, 'EXECUTE'),"
                    " (SELECT proconfig FROM pg_proc WHERE oid = %s::regprocedure)",
                    (role, fn, fn),
                ).fetchone()
                assert row == (False, ["search_path=pg_catalog, public, pg_temp"]), fn
