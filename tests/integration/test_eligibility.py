"""Issue 16: who gets commentary, how much, and who pays (schema/0021).

One test per rule of the issue's "Must show": university before private; a private
question of a non-entitled owner blocked with the reason, then picked up by the tick when
the owner becomes entitled; allowance exhausted -> partial model set (drained by the real
worker; the wide view follows the set); a unit consumed once under concurrent claims and
refunded on failure; a user sees only their own balance and ledger (Supabase-shaped roles);
an ai_jobs insert without credit refused (and a failed job refunded, by the real drain); a
whitespace-only edit does not re-queue, a content edit does; the production-shaped install
with the app's tables present and absent.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.fixtures.pipeline import drain, point_env_at_emulator
from worker.commentary import claim
from worker.config import get_settings
from worker.emulator import Emulator
from worker.migrate import migrate
from worker.ops import maintenance
from worker.providers.routing import reset_providers
from worker.queries import q
from worker.realtime.drain import reset_clients

pytestmark = pytest.mark.timeout(240)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "production_shape.sql"
README = Path(__file__).resolve().parents[2] / "README.md"

# The first user's tables that carry entitlement, Supabase-shaped (profiles keyed by the
# auth user id; a Stripe-style subscribers table).
APP_TABLES = """
CREATE TABLE profiles (id uuid PRIMARY KEY, is_premium boolean NOT NULL DEFAULT false);
CREATE TABLE subscribers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id uuid NOT NULL,
    subscribed boolean NOT NULL DEFAULT true, subscription_end timestamptz);
"""


def _user(db: psycopg.Connection[Any], premium: bool | None = True) -> uuid.UUID:
    """A user with a profile (premium or not); None: no profile at all."""
    uid = uuid.uuid4()
    if premium is not None:
        db.execute("INSERT INTO profiles (id, is_premium) VALUES (%s, %s)", (uid, premium))
    return uid


def _question(
    db: psycopg.Connection[Any],
    visibility: str,
    owner: uuid.UUID | None,
    minutes_ago: int = 60,
    status: str | None = "pending",
    option_a: str = "Leber",
) -> uuid.UUID:
    row = db.execute(
        "INSERT INTO questions (question, option_a, option_b, option_c, option_d, correct_answer,"
        " subject, visibility, user_id, ai_commentary_status, ai_commentary_queued_at)"
        " VALUES ('Welches Organ produziert Insulin?', %s, 'Pankreas', 'Milz', 'Niere', 'B',"
        " 'Physiologie', %s, %s, %s, now() - make_interval(mins => %s)) RETURNING id",
        (option_a, visibility, owner, status, minutes_ago),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def _readme_block(marker: str) -> str:
    """The first ```sql block after ``marker`` in the README, run word for word."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"```sql\n(.*?)```", text[text.index(marker) :], re.S)
    assert match is not None
    return match.group(1)


async def _claim(url: str) -> list[uuid.UUID]:
    """One real claim (worker.commentary.claim.claim): the questions it set processing, in order."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        settings = await claim.load_settings(conn)
        before = await (await conn.execute("SELECT now()")).fetchone()
        await claim.claim(conn, settings)
        cur = await conn.execute(
            "SELECT id FROM questions WHERE ai_commentary_claimed_at >= %s"
            " AND ai_commentary_status = 'processing' ORDER BY id",
            (before[0] if before else None,),
        )
        return [uuid.UUID(str(r[0])) for r in await cur.fetchall()]


def _row(db: psycopg.Connection[Any], qid: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT ai_commentary_status AS status, ai_commentary_depth AS depth,"
        " ai_commentary_models AS models, ai_commentary_blocked_reason AS reason"
        " FROM questions WHERE id = %s",
        (qid,),
    ).fetchone()
    assert row is not None
    return dict(row)


def _submit_jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'submit'"
        " AND status = 'todo'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def _ledger(db: psycopg.Connection[Any], user: uuid.UUID) -> list[tuple[int, str, str]]:
    return [
        (r["delta"], r["pool"], r["source"])
        for r in db.execute(
            "SELECT delta, pool, source FROM ai_credit_ledger WHERE user_id = %s ORDER BY id",
            (user,),
        ).fetchall()
    ]


@pytest.fixture
def app_db(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The test database with the app's entitlement tables and no claim delay."""
    db.execute(APP_TABLES)
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0, batch_size = 500")
    return db


async def test_university_and_public_questions_are_claimed_before_private_ones(
    app_db: psycopg.Connection[Any], db_url: str
) -> None:
    db = app_db
    owner = _user(db, premium=True)
    private = _question(db, "private", owner, minutes_ago=300)  # queued first
    university = _question(db, "university", None, minutes_ago=60)
    public = _question(db, "public", owner, minutes_ago=30)
    db.execute("UPDATE ai_commentary_settings SET batch_size = 2")

    assert set(await _claim(db_url)) == {university, public}
    assert _row(db, private)["status"] == "pending"
    assert await _claim(db_url) == [private]
    # Shared questions are free; the private one took a unit of its owner's allowance.
    assert _ledger(db, owner) == [(-1, "allowance", "consume_full_question")]
    assert {_row(db, i)["depth"] for i in (private, university, public)} == {"full"}


async def test_without_the_app_tables_everything_is_full_and_oldest_first(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0, batch_size = 1")
    owner = uuid.uuid4()
    private = _question(db, "private", owner, minutes_ago=300)
    university = _question(db, "university", None, minutes_ago=60)
    assert await _claim(db_url) == [private]
    assert await _claim(db_url) == [university]
    assert _row(db, private)["depth"] == "full"
    assert db.execute("SELECT count(*) AS n FROM ai_credit_ledger").fetchone() == {"n": 0}


async def test_private_question_of_a_non_entitled_owner_is_blocked_then_picked_up_when_entitled(
    app_db: psycopg.Connection[Any], db_url: str, opened_app: Any
) -> None:
    db = app_db
    owner = _user(db, premium=False)
    qid = _question(db, "private", owner)
    orphan = _question(db, "private", None)

    assert await _claim(db_url) == []
    row = _row(db, qid)
    assert row["status"] == "blocked"
    assert row["reason"] == (
        f"private question: owner {owner} has no premium profile or active subscription"
    )
    assert _row(db, orphan)["reason"] == "private question without an owner (questions.user_id)"
    assert db.execute("SELECT count(*) AS n FROM ai_commentary_requests").fetchone() == {"n": 0}

    pool = opened_app.connector.pool
    # An expired subscription, or one switched off, does not entitle.
    db.execute(
        "INSERT INTO subscribers (user_id, subscription_end) VALUES (%s, now() - interval '1 day')",
        (owner,),
    )
    db.execute(
        "INSERT INTO subscribers (user_id, subscribed, subscription_end) VALUES (%s, false, NULL)",
        (owner,),
    )
    await maintenance.run_tick(pool)
    assert _row(db, qid)["status"] == "blocked"

    # An active subscription without an end does: the tick puts the question back in the
    # queue (no manual step), the trigger wakes submit, the next claim takes it at full depth.
    db.execute("DELETE FROM procrastinate_jobs")
    db.execute(
        "INSERT INTO subscribers (user_id, subscription_end) VALUES (%s, NULL)",
        (owner,),
    )
    await maintenance.run_tick(pool)
    assert _row(db, qid) == {"status": "pending", "depth": None, "models": None, "reason": None}
    assert _submit_jobs(db) == 1
    assert await _claim(db_url) == [qid]
    assert _row(db, qid)["depth"] == "full"
    assert _row(db, orphan)["status"] == "blocked"


@pytest.fixture
def drained_app_db(
    app_db: psycopg.Connection[Any], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[psycopg.Connection[Any]]:
    """app_db with the worker pointed at the emulator: ChatGPT, Gemini, Mistral enabled."""
    point_env_at_emulator(monkeypatch, emulator)
    emulator.configure(state_seconds=0)
    get_settings.cache_clear()
    reset_providers()
    reset_clients()
    app_db.execute(
        "UPDATE ai_commentary_settings SET models_enabled ="
        ' \'{"chatgpt": true, "gemini": true, "mistral": true, "perplexity": false,'
        ' "deepseek": false}\''
    )
    app_db.execute("UPDATE ai_realtime_settings SET linger_seconds = 0.2")
    yield app_db
    get_settings.cache_clear()
    reset_providers()
    reset_clients()


def test_allowance_exhausted_gives_the_partial_model_set_and_a_failed_question_is_refunded(
    drained_app_db: psycopg.Connection[Any],
) -> None:
    db = drained_app_db
    db.execute("UPDATE ai_commentary_settings SET full_allowance = 1")
    owner = _user(db, premium=True)
    # Oldest first within a priority: the bad question takes the one unit, then fails.
    bad = _question(db, "private", owner, minutes_ago=30, option_a=" ")
    first = _question(db, "private", owner, minutes_ago=20)
    second = _question(db, "private", owner, minutes_ago=10)

    assert drain(120) == 0

    assert _row(db, bad)["status"] == "failed" and _row(db, bad)["depth"] == "full"
    for qid in (first, second):
        # Partial set: partial_models (Mistral, DeepSeek) among the enabled models.
        assert _row(db, qid) == {
            "status": "completed",
            "depth": "partial",
            "models": ["mistral"],
            "reason": None,
        }
    comments = db.execute(
        "SELECT question_id, array_agg(model_key ORDER BY model_key) AS models"
        " FROM ai_answer_comments GROUP BY 1"
    ).fetchall()
    assert {r["question_id"]: r["models"] for r in comments} == {
        first: ["mistral"],
        second: ["mistral"],
    }
    wide = db.execute(
        "SELECT question_id, depth, mistral_general_comment <> '' AS mistral,"
        " chatgpt_general_comment, gemini_new_general_comment FROM ai_answer_comments_wide"
    ).fetchall()
    assert {r["question_id"] for r in wide} == {first, second}
    assert all(
        r["depth"] == "partial"
        and r["mistral"]
        and r["chatgpt_general_comment"] is None
        and r["gemini_new_general_comment"] is None
        for r in wide
    )
    # The failed question's unit came back: one consumption, one refund.
    assert _ledger(db, owner) == [
        (-1, "allowance", "consume_full_question"),
        (1, "allowance", "refund_full_question"),
    ]
    balance = db.execute(
        "SELECT allowance, allowance_used, allowance_left, paid_credits FROM ai_credit_balances"
    ).fetchone()
    assert balance == {"allowance": 1, "allowance_used": 0, "allowance_left": 1, "paid_credits": 0}


def test_a_unit_is_consumed_once_under_concurrent_claims_and_refunded_on_failure(
    app_db: psycopg.Connection[Any], db_url: str
) -> None:
    db = app_db
    db.execute("UPDATE ai_commentary_settings SET full_allowance = 3, batch_size = 4")
    owner = _user(db, premium=True)
    db.execute("SELECT ai_credit_grant(%s, 2, 'stripe:pi_1')", (owner,))
    ids = [_question(db, "private", owner, minutes_ago=100 - i) for i in range(8)]
    params = {
        "delay_minutes": 0,
        "limit": 4,
        "models": ["chatgpt", "gemini", "mistral"],
        "partial_models": ["mistral"],
    }

    # Two workers claim at the same moment on their own connections.
    barrier = threading.Barrier(2)
    claimed: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(db_url, row_factory=dict_row) as conn:
                barrier.wait(10)
                rows = conn.execute(q("claim_pending"), params).fetchall()
                conn.commit()
                claimed.append(rows)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    got = [r for rows in claimed for r in rows]
    assert sorted(r["id"] for r in got) == sorted(ids)  # each question claimed once
    depth = {r["id"]: r["depth"] for r in got}
    # 3 allowance units + 2 paid credits: five full, three partial; never more.
    assert sorted(depth.values()) == ["full"] * 5 + ["partial"] * 3
    charges = db.execute(
        "SELECT question_id, pool FROM ai_commentary_charges WHERE user_id = %s", (owner,)
    ).fetchall()
    assert {r["question_id"] for r in charges} == {i for i, d in depth.items() if d == "full"}
    assert sorted(r["pool"] for r in charges) == ["allowance"] * 3 + ["paid"] * 2
    assert sorted(_ledger(db, owner)) == sorted(
        [(2, "paid", "grant")]
        + [(-1, "allowance", "consume_full_question")] * 3
        + [(-1, "paid", "consume_full_question")] * 2
    )
    assert db.execute(
        "SELECT allowance_used, paid_credits FROM ai_credit_accounts WHERE user_id = %s", (owner,)
    ).fetchone() == {"allowance_used": 3, "paid_credits": 0}

    # The same question charged from two connections at once: the second waits for the
    # first and finds the unit taken; one ledger row.
    extra = _question(db, "private", owner, status=None)  # charged by hand, not queued
    db.execute("SELECT ai_credit_grant(%s, 5)", (owner,))
    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        first.execute("SELECT worker_charge_full(%s, %s, 'h1')", (owner, extra))
        result: list[Any] = []
        t = threading.Thread(
            target=lambda: result.append(
                second.execute("SELECT worker_charge_full(%s, %s, 'h1')", (owner, extra)).fetchone()
            )
        )
        t.start()
        t.join(1.0)
        assert t.is_alive(), "the second charge must wait for the first transaction"
        first.commit()
        t.join(30)
        second.commit()
    assert result == [(True,)]
    n = db.execute(
        "SELECT count(*) AS n FROM ai_credit_ledger WHERE question_id = %s", (extra,)
    ).fetchone()
    assert n == {"n": 1}

    # Refunded when the question ends failed (as settle_questions ends it), exactly once.
    paid = next(r["question_id"] for r in charges if r["pool"] == "paid")
    db.execute("UPDATE questions SET ai_commentary_status = 'failed' WHERE id = %s", (paid,))
    db.execute("UPDATE questions SET ai_commentary_error = 'again' WHERE id = %s", (paid,))
    refunds = db.execute(
        "SELECT delta, pool FROM ai_credit_ledger WHERE question_id = %s"
        " AND source = 'refund_full_question'",
        (paid,),
    ).fetchall()
    assert refunds == [{"delta": 1, "pool": "paid"}]
    assert db.execute(
        "SELECT paid_credits FROM ai_credit_accounts WHERE user_id = %s", (owner,)
    ).fetchone() == {"paid_credits": 4 + 1}
    # Re-queued and claimed again, it is charged again (the refunded charge is taken anew).
    db.execute("UPDATE questions SET ai_commentary_status = 'pending' WHERE id = %s", (paid,))
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        again = conn.execute(q("claim_pending"), {**params, "limit": 10}).fetchall()
    assert [(r["id"], r["depth"]) for r in again] == [(paid, "full")]
    assert db.execute(
        "SELECT state FROM ai_commentary_charges WHERE question_id = %s", (paid,)
    ).fetchone() == {"state": "consumed"}


SUPABASE_ROLES = """
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another session created it at the same moment
            END;
        END IF;
    END LOOP;
END $$;
"""

# Supabase's auth.uid(): the JWT's subject, as PostgREST sets it per request.
AUTH_UID = """
CREATE SCHEMA auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
"""


def test_a_user_sees_only_their_own_balance_and_ledger(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(SUPABASE_ROLES)
        conn.execute(AUTH_UID)
    migrate(empty_db_url)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as db:
        db.execute("SELECT ai_credit_grant(%s, 3), ai_credit_grant(%s, 7)", (alice, bob))
        db.execute("SELECT worker_charge_full(%s, gen_random_uuid(), 'h')", (bob,))

        def as_user(role: str, user: uuid.UUID | None, query: str) -> list[dict[str, Any]]:
            with db.transaction(force_rollback=True):
                db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                db.execute(
                    "SELECT set_config('request.jwt.claim.sub', %s, true)",
                    (str(user) if user else "",),
                )
                return db.execute(query).fetchall()  # type: ignore[arg-type]

        ledger = "SELECT user_id, delta FROM ai_credit_ledger"
        # Closed like everything the worker creates, until the operator opens the read.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_user("authenticated", alice, ledger)
        db.execute(_readme_block("<!-- open-credits-sql -->"))  # type: ignore[arg-type]

        assert as_user("authenticated", alice, ledger) == [{"user_id": alice, "delta": 3}]
        rows = as_user("authenticated", bob, ledger)
        assert sorted(r["delta"] for r in rows) == [-1, 7]
        assert {r["user_id"] for r in rows} == {bob}
        balance = "SELECT user_id, allowance, allowance_left, paid_credits FROM ai_credit_balances"
        assert as_user("authenticated", alice, balance) == [
            {"user_id": alice, "allowance": 100, "allowance_left": 100, "paid_credits": 3}
        ]
        assert as_user("authenticated", None, ledger) == []  # no JWT subject: nothing

        # Nothing else is open to them: not the charges, not writes, nothing for anon.
        for role, query in [
            ("authenticated", "SELECT * FROM ai_commentary_charges"),
            ("authenticated", "UPDATE ai_credit_accounts SET paid_credits = 1000"),
            (
                "authenticated",
                "INSERT INTO ai_credit_ledger (user_id, delta, pool, source)"
                " VALUES (gen_random_uuid(), 5, 'paid', 'grant')",
            ),
            ("authenticated", "SELECT ai_credit_grant(gen_random_uuid(), 5)"),
            ("anon", "SELECT * FROM ai_credit_ledger"),
            ("anon", "SELECT * FROM ai_credit_balances"),
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_user(role, alice, query)

        # Without auth.uid() (plain PostgreSQL) the policies match nobody.
        db.execute("DROP FUNCTION auth.uid()")
        assert as_user("authenticated", alice, ledger) == []


@pytest.fixture
def rt(
    db: psycopg.Connection[Any], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[psycopg.Connection[Any]]:
    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    reset_providers()
    reset_clients()
    db.execute("UPDATE ai_realtime_settings SET backoff_base_seconds = 0.1, linger_seconds = 0.2")
    yield db
    get_settings.cache_clear()
    reset_providers()
    reset_clients()


def test_ai_jobs_insert_without_credit_is_refused_and_a_failed_job_refunded(
    rt: psycopg.Connection[Any],
) -> None:
    db = rt
    user = uuid.uuid4()
    db.execute("INSERT INTO ai_job_credit_costs (kind, credits) VALUES ('embedding', 2)")
    job = (
        "INSERT INTO ai_jobs (kind, provider, model, input_text, owner_id) VALUES"
        " ('embedding', 'deepseek', 'deepseek-chat', 'kein Embedding-API', %s) RETURNING id"
    )
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(job, (str(user),))
    assert f"ai_jobs: user {user} has 0 credit(s); kind 'embedding' costs 2" in str(err.value)
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(job, (None,))
    assert (
        "ai_jobs: kind 'embedding' costs 2 credit(s): owner_id (the paying user) is required"
        in str(err.value)
    )

    db.execute("SELECT ai_credit_grant(%s, 3)", (user,))
    row = db.execute(job, (str(user),)).fetchone()
    assert row is not None
    job_id = row["id"]
    with pytest.raises(psycopg.errors.CheckViolation):  # 1 left, 2 needed
        db.execute(job, (str(user),))
    # A kind without a cost needs no credit.
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES ('chat', 'mock', 'mock', 'hi')"
    )
    assert db.execute("SELECT count(*) AS n FROM ai_jobs").fetchone() == {"n": 2}
    assert _ledger(db, user) == [(3, "paid", "grant"), (-2, "paid", "consume_job")]

    # DeepSeek has no embeddings API: the job fails permanently, its credits come back.
    assert drain(30) == 0
    assert db.execute(
        "SELECT status, credits_charged FROM ai_jobs WHERE id = %s", (job_id,)
    ).fetchone() == {
        "status": "failed",
        "credits_charged": 2,
    }
    assert _ledger(db, user)[-1] == (2, "paid", "refund_job")
    assert db.execute(
        "SELECT paid_credits FROM ai_credit_accounts WHERE user_id = %s", (user,)
    ).fetchone() == {"paid_credits": 3}


async def test_a_whitespace_only_edit_does_not_requeue_but_a_content_edit_does(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0")
    qid = _question(db, "university", None)
    assert await _claim(db_url) == [qid]
    # The worker settles it (every request succeeded): completed, its hash recorded.
    db.execute(
        "UPDATE ai_commentary_requests SET status = 'succeeded' WHERE question_id = %s", (qid,)
    )
    db.execute(q("settle_questions"), {"ids": [qid]})
    assert _row(db, qid)["status"] == "completed"
    recorded = db.execute(
        "SELECT depth, content_hash FROM ai_commentary_content_versions WHERE question_id = %s",
        (qid,),
    ).fetchall()
    assert [r["depth"] for r in recorded] == ["full"]
    db.execute("DELETE FROM procrastinate_jobs")

    # Trailing and doubled blanks, a newline, a lower-case answer with a blank: nothing new.
    db.execute(
        "UPDATE questions SET question = E'Welches  Organ\\nproduziert Insulin? ',"
        " option_b = ' Pankreas', correct_answer = 'b ' WHERE id = %s",
        (qid,),
    )
    assert _row(db, qid)["status"] == "completed"
    assert _submit_jobs(db) == 0

    # A real edit of an option re-queues it and wakes submit.
    db.execute("UPDATE questions SET option_c = 'Milz und Leber' WHERE id = %s", (qid,))
    assert _row(db, qid)["status"] == "pending"
    assert _submit_jobs(db) == 1

    # Processed again; editing back to the text of an earlier run is still a change
    # against the last run.
    assert await _claim(db_url) == [qid]
    db.execute(
        "UPDATE ai_commentary_requests SET status = 'succeeded' WHERE question_id = %s", (qid,)
    )
    db.execute(q("settle_questions"), {"ids": [qid]})
    db.execute("UPDATE questions SET option_c = 'Milz ' WHERE id = %s", (qid,))
    assert _row(db, qid)["status"] == "pending"

    # A question completed before the install (no recorded hash) compares with its text
    # before the edit; the operator's explicit re-run is a plain status update.
    old = _question(db, "university", None, status="completed")
    db.execute("UPDATE questions SET question = question || '  ' WHERE id = %s", (old,))
    assert _row(db, old)["status"] == "completed"
    db.execute("UPDATE questions SET ai_commentary_status = 'pending' WHERE id = %s", (old,))
    assert _row(db, old)["status"] == "pending"


@pytest.mark.parametrize("app_tables", [False, True], ids=["absent", "present"])
async def test_production_shaped_install_with_the_app_tables(
    empty_db_url: str, app_tables: bool
) -> None:
    """The production shape (tests/fixtures/production_shape.sql) installs and claims with
    the app's entitlement tables absent (everything full) and present (the first user's
    rules: university first, private only for entitled owners, blocked with reasons)."""
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(FIXTURE.read_text())
        pending = [
            r["id"]
            for r in conn.execute(
                "SELECT id FROM questions WHERE ai_commentary_status = 'pending' ORDER BY id"
            ).fetchall()
        ]
        assert len(pending) == 20
        premium, free = uuid.uuid4(), uuid.uuid4()
        university, owned, unentitled, orphans = (
            pending[0:5],
            pending[5:10],
            pending[10:15],
            pending[15:20],
        )
        conn.execute(
            "UPDATE questions SET visibility = 'university' WHERE id = ANY(%s)", (university,)
        )
        conn.execute("UPDATE questions SET user_id = %s WHERE id = ANY(%s)", (premium, owned))
        conn.execute("UPDATE questions SET user_id = %s WHERE id = ANY(%s)", (free, unentitled))
        if app_tables:
            conn.execute(APP_TABLES)
            conn.execute("INSERT INTO profiles VALUES (%s, false), (%s, false)", (premium, free))
            conn.execute(
                "INSERT INTO subscribers (user_id, subscription_end) VALUES"
                " (%s, now() + interval '20 days'), (%s, now() - interval '1 day')",
                (premium, free),
            )
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("UPDATE ai_commentary_settings SET batch_size = 5")
        first = await _claim(empty_db_url)
        while await _claim(empty_db_url):
            pass
        rows = {
            r["id"]: r
            for r in conn.execute(
                "SELECT id, ai_commentary_status AS status, ai_commentary_depth AS depth,"
                " ai_commentary_blocked_reason AS reason FROM questions WHERE id = ANY(%s)",
                (pending,),
            ).fetchall()
        }
        charged = {
            r["question_id"]
            for r in conn.execute("SELECT question_id FROM ai_commentary_charges").fetchall()
        }
    if not app_tables:
        assert {(r["status"], r["depth"]) for r in rows.values()} == {("processing", "full")}
        assert charged == set()
        return
    assert sorted(first) == sorted(university)
    for i in university + owned:
        assert (rows[i]["status"], rows[i]["depth"]) == ("processing", "full")
    for i in unentitled:
        assert rows[i]["status"] == "blocked"
        assert rows[i]["reason"] == (
            f"private question: owner {free} has no premium profile or active subscription"
        )
    for i in orphans:
        assert rows[i]["status"] == "blocked"
        assert rows[i]["reason"] == "private question without an owner (questions.user_id)"
    assert charged == set(owned)


async def test_a_replaced_policy_decides_the_claim(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    """The README's example replacement: Anatomy first; then a policy that blocks all."""
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0, batch_size = 1")
    older = _question(db, "university", None, minutes_ago=300)
    anatomy = _question(db, "university", None, minutes_ago=10)
    db.execute("UPDATE questions SET subject = 'Anatomie' WHERE id = %s", (anatomy,))
    db.execute(
        "CREATE OR REPLACE FUNCTION ai_commentary_eligibility(p_ids uuid[] DEFAULT NULL)"
        " RETURNS TABLE (question_id uuid, depth text, reason text, priority integer, payer uuid)"
        " LANGUAGE sql STABLE ROWS 1000000 SET search_path = public AS $$"
        " SELECT q.id, 'full', NULL, CASE WHEN q.subject = 'Anatomie' THEN 1 ELSE 0 END,"
        " NULL::uuid FROM questions q"
        " WHERE (p_ids IS NULL AND q.ai_commentary_status = 'pending') OR q.id = ANY (p_ids) $$"
    )
    assert await _claim(db_url) == [anatomy]
    db.execute(
        "CREATE OR REPLACE FUNCTION ai_commentary_eligibility(p_ids uuid[] DEFAULT NULL)"
        " RETURNS TABLE (question_id uuid, depth text, reason text, priority integer, payer uuid)"
        " LANGUAGE sql STABLE SET search_path = public AS $$"
        " SELECT q.id, 'blocked', 'maintenance', 0, NULL::uuid FROM questions q"
        " WHERE (p_ids IS NULL AND q.ai_commentary_status = 'pending') OR q.id = ANY (p_ids) $$"
    )
    assert await _claim(db_url) == []
    assert _row(db, older)["reason"] == "maintenance"
