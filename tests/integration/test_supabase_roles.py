"""Supabase-shaped roles (issue 11, parts 2 and 3): what `anon` and `authenticated` can
reach after `db migrate`, the end-user chat path, and the worker under its two roles.

Each test gets its own database owned by a run-unique owner role (the role that runs
`db migrate`, as `postgres` does on Supabase), with Supabase's default privileges for that
role applied BEFORE migrate and `auth.uid()` simulated as Supabase defines it (the JWT's
`sub` from the `request.jwt.claim.sub` setting). `anon`, `authenticated` and `service_role`
are cluster-wide: created idempotently, never dropped. Every other role is dropped here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.fixtures.database import PREFIX
from tests.fixtures.pipeline import DEFAULT_MODELS, drain, point_env_at_emulator
from worker.config import get_settings
from worker.database import with_database
from worker.emulator import Emulator
from worker.migrate import migrate
from worker.providers.routing import reset_providers

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_SHAPE = ROOT / "tests" / "fixtures" / "production_shape.sql"
SUPABASE_ROLES = ("anon", "authenticated", "service_role")

AUTH_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
"""


def _readme_block(marker: str) -> str:
    """The first ```sql block after ``marker`` in the README (the test runs the documented
    statements word for word)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(marker) :]
    match = re.search(r"```sql\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


def _ensure_supabase_roles(admin: psycopg.Connection[Any]) -> None:
    for role in SUPABASE_ROLES:
        try:
            admin.execute(
                sql.SQL(
                    "DO $$ BEGIN CREATE ROLE {} NOLOGIN; "
                    "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                ).format(sql.Identifier(role))
            )
        except psycopg.errors.UniqueViolation:  # a parallel session created it meanwhile
            pass


@dataclass
class SupaDB:
    server: str
    name: str
    owner: str
    runtime: str
    tag: str
    extra_roles: list[str] = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return with_database(self.server, self.name)

    def url_as(self, role: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, user=role)

    @property
    def owner_url(self) -> str:
        return self.url_as(self.owner)

    @property
    def runtime_url(self) -> str:
        return self.url_as(self.runtime)

    def connect(self, role: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.url_as(role) if role else self.admin_url, autocommit=True, row_factory=dict_row
        )

    @contextmanager
    def as_user(self, role: str, sub: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A connection acting as ``role`` (SET ROLE, as PostgREST does) with the JWT sub."""
        with self.connect() as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (sub or "",))
            yield conn


def _make_supabase_db(server: str, *, migrate_now: bool, setup_sql: str = "") -> SupaDB:
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    db = SupaDB(
        server=server,
        name=f"{PREFIX}_sb_{uuid.uuid4().hex[:8]}",
        owner=f"aiw_owner_{tag}",
        runtime=f"aiw_rt_{tag}",
        tag=tag,
    )
    try:
        _set_up_supabase_db(db, migrate_now=migrate_now, setup_sql=setup_sql)
    except BaseException:
        _drop_supabase_db(db)
        raise
    return db


def _set_up_supabase_db(db: SupaDB, *, migrate_now: bool, setup_sql: str) -> None:
    with psycopg.connect(with_database(db.server, "postgres"), autocommit=True) as admin:
        _ensure_supabase_roles(admin)
        for role in (db.owner, db.runtime):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(db.name), sql.Identifier(db.owner)
            )
        )
    with db.connect() as conn:
        conn.execute(AUTH_SCHEMA)
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, {}").format(
                sql.Identifier(db.owner)
            )
        )
        # Supabase's default privileges for the role that creates tables (there: postgres).
        for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public"
                    " GRANT ALL ON {} TO anon, authenticated, service_role"
                ).format(sql.Identifier(db.owner), sql.SQL(kind))
            )
        conn.execute("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
    if setup_sql:
        with db.connect(db.owner) as conn:
            conn.execute(setup_sql)  # type: ignore[arg-type]
    if migrate_now:
        migrate(db.owner_url)


def _drop_supabase_db(db: SupaDB) -> None:
    with psycopg.connect(with_database(db.server, "postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name))
        )
        for role in (db.runtime, db.owner, *db.extra_roles):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def supa(pg_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SupaDB]:
    db = _make_supabase_db(pg_server_url, migrate_now=True)
    monkeypatch.setenv("DATABASE_URL", db.owner_url)
    try:
        yield db
    finally:
        _drop_supabase_db(db)


# ---------------------------------------------------------------- the catalog's objects


def _relations(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT c.oid, c.relname AS name, c.relkind AS kind, c.relrowsecurity AS rls,"
        " c.reloptions AS options"
        " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
        " ORDER BY c.relname"
    ).fetchall()


def _functions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT p.oid, p.proname AS name, p.oid::regprocedure::text AS signature,"
        " p.proconfig AS config, p.prosecdef AS definer,"
        " p.prorettype = 'trigger'::regtype AS is_trigger,"
        " ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t) AS argtypes"
        " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
        " ORDER BY 2"
    ).fetchall()


TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _reachable(conn: psycopg.Connection[Any], role: str) -> list[str]:
    """Every privilege ``role`` holds on a worker object, from the catalog."""
    found: list[str] = []
    for r in _relations(conn):
        privs = ("USAGE", "SELECT", "UPDATE") if r["kind"] == "S" else TABLE_PRIVILEGES
        fn = "has_sequence_privilege" if r["kind"] == "S" else "has_table_privilege"
        held = []
        for priv in privs:
            row = conn.execute(
                sql.SQL("SELECT {}(%s, %s::oid, %s) AS ok").format(sql.Identifier(fn)),
                (role, r["oid"], priv),
            ).fetchone()
            if row and row["ok"]:
                held.append(f"{priv} on {r['name']}")
        found += held
        if held or r["kind"] == "S":
            continue
        cols = conn.execute(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0"
            " AND NOT a.attisdropped"
            " AND has_column_privilege(%s, a.attrelid, a.attnum, 'SELECT,INSERT,UPDATE')",
            (r["oid"], role),
        ).fetchall()
        found += [f"column {r['name']}.{c['attname']}" for c in cols]
    for f in _functions(conn):
        row = conn.execute(
            "SELECT has_function_privilege(%s, %s::oid, 'EXECUTE') AS ok", (role, f["oid"])
        ).fetchone()
        if row and row["ok"]:
            found.append(f"EXECUTE on {f['signature']}")
    return found


def _try(conn: psycopg.Connection[Any], query: str | sql.Composable) -> list[dict[str, Any]] | str:
    """Rows, or the name of the error (autocommit: each statement on its own)."""
    try:
        cur = conn.execute(query)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        return type(exc).__name__


def _probe_everything(db: SupaDB, role: str, sub: str | None, opened: set[str]) -> list[str]:
    """Act as ``role``: read every relation, take every sequence's next value, call every
    function with NULL arguments, write and truncate every table. Returns what got through
    (rows read, a value taken, a call made, a row written); ``opened`` objects may answer
    with rows, which the caller checks."""
    leaks: list[str] = []
    with db.connect() as admin:
        relations = _relations(admin)
        functions = _functions(admin)
    with db.as_user(role, sub) as conn:
        for r in relations:
            ident = sql.Identifier(r["name"])
            if r["kind"] == "S":
                got = _try(
                    conn, sql.SQL("SELECT nextval({}::regclass)").format(sql.Literal(r["name"]))
                )
                if not isinstance(got, str):
                    leaks.append(f"nextval {r['name']}")
                continue
            got = _try(conn, sql.SQL("SELECT * FROM {} LIMIT 5").format(ident))
            if isinstance(got, list) and got and r["name"] not in opened:
                leaks.append(f"read {len(got)} rows of {r['name']}")
            if r["kind"] in ("r", "p"):
                got = _try(conn, sql.SQL("DELETE FROM {}").format(ident))
                if not isinstance(got, str):
                    leaks.append(f"DELETE on {r['name']}")
                got = _try(conn, sql.SQL("TRUNCATE {}").format(ident))
                if not isinstance(got, str):
                    leaks.append(f"TRUNCATE on {r['name']}")
                got = _try(conn, sql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident))
                if not isinstance(got, str):
                    leaks.append(f"INSERT on {r['name']}")
        for f in functions:
            args = sql.SQL(", ").join(sql.SQL("NULL::{}").format(sql.SQL(t)) for t in f["argtypes"])
            got = _try(conn, sql.SQL("SELECT {}({})").format(sql.Identifier(f["name"]), args))
            if got != "InsufficientPrivilege" and f["name"] not in opened:
                leaks.append(f"call {f['signature']}: {got}")
    return leaks


# ---------------------------------------------------------------- tests


def test_anon_and_authenticated_reach_nothing_after_migrate(supa: SupaDB) -> None:
    with supa.connect() as admin:
        relations = _relations(admin)
        functions = _functions(admin)
        names = {r["name"] for r in relations} | {f["name"] for f in functions}
        # enumerated from the catalog: the objects the issue names are among them
        for name in (
            "ai_chat_messages",
            "ai_session_stats",
            "ai_model_prices",
            "worker_resume_provider",
            "procrastinate_jobs",
            "questions",
            "ai_answer_comments_wide",
        ):
            assert name in names
        assert len(relations) > 50 and len(functions) > 35
        # Supabase's defaults did grant them on creation; the lock-down took it back
        assert _reachable(admin, "anon") == []
        assert _reachable(admin, "authenticated") == []
        assert [r["name"] for r in relations if r["kind"] == "r" and not r["rls"]] == []
        assert [
            r["name"]
            for r in relations
            if r["kind"] == "v" and "security_invoker=on" not in (r["options"] or [])
        ] == []
        assert [
            f["signature"]
            for f in functions
            if "search_path=pg_catalog, public, pg_temp" not in (f["config"] or [])
        ] == []
        definers = {f["name"] for f in functions if f["definer"]}
        assert {
            "worker_defer_job",
            "worker_questions_after_insert",
            "worker_questions_after_update",
            "ai_jobs_before_insert",
            "ai_jobs_wake",
        } <= definers
        # only trigger functions and the helpers run with the owner's rights (schema/0021's
        # worker_allowance_defaults: two numbers of the settings row for ai_credit_balances)
        assert {f["name"] for f in functions if f["definer"] and not f["is_trigger"]} == {
            "worker_defer_job",
            "worker_caller_id",
            "worker_allowance_defaults",
        }
        admin.execute(
            "INSERT INTO ai_jobs (kind, provider, input_text) VALUES ('chat', 'mock', 'x')"
        )
    for role, sub in (("anon", None), ("authenticated", str(uuid.uuid4()))):
        assert _probe_everything(supa, role, sub, opened=set()) == []
    with supa.as_user("anon") as conn:
        assert _try(conn, "SELECT worker_resume_provider('openai')") == "InsufficientPrivilege"
        assert _try(conn, "SELECT * FROM ai_chat_messages") == "InsufficientPrivilege"
    with supa.connect() as admin:  # nothing was written or truncated by the probes
        assert admin.execute("SELECT count(*) AS n FROM ai_jobs").fetchone() == {"n": 1}
        assert admin.execute("SELECT count(*) AS n FROM ai_model_prices").fetchone()["n"] > 5


def test_later_migration_files_are_locked_down_too(
    supa: SupaDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file after 0016 (a teammate's 0017, a future one) is covered without change, and a
    worker object it drops and re-creates keeps the grants the operator gave it."""
    from worker import migrate as migrate_module

    with supa.connect(supa.owner) as conn:
        conn.execute("GRANT SELECT ON ai_answer_comments_wide TO authenticated")
        conn.execute("SELECT worker_grant_runtime(%s)", (supa.runtime,))
    for f in migrate_module.project_migrations():
        (tmp_path / f.filename).write_text(f.text, encoding="utf-8")
    (tmp_path / "0099_later.sql").write_text(
        "CREATE EXTENSION IF NOT EXISTS citext;\n"
        "CREATE TABLE later_things (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);\n"
        "CREATE VIEW later_view AS SELECT * FROM later_things;\n"
        "CREATE FUNCTION later_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n"
        "CREATE OR REPLACE FUNCTION worker_defer_job(\n"
        "    p_queue text, p_task text, p_lock text,\n"
        "    p_args jsonb DEFAULT '{}', p_scheduled_at timestamptz DEFAULT NULL)\n"
        "RETURNS void LANGUAGE plpgsql AS $$ BEGIN\n"
        "    PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(p_queue, p_task, 0, NULL, p_lock,\n"
        "        coalesce(p_args, '{}'), p_scheduled_at)::procrastinate_job_to_defer_v1]);\n"
        "EXCEPTION WHEN unique_violation THEN NULL; END $$;\n"
        "DROP VIEW ai_answer_comments_wide;\n"
        "CREATE VIEW ai_answer_comments_wide AS SELECT question_id FROM ai_answer_comments;\n",
        encoding="utf-8",
    )
    assert migrate_module.migrate(supa.owner_url, tmp_path) == ["0099_later.sql"]
    with supa.connect() as admin:
        assert _reachable(admin, "anon") == []
        assert _reachable(admin, "authenticated") == ["SELECT on ai_answer_comments_wide"]
        row = admin.execute(
            "SELECT c.relrowsecurity AS rls FROM pg_class c WHERE c.oid = 'later_things'::regclass"
        ).fetchone()
        assert row == {"rls": True}
        opts = admin.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'later_view'::regclass"
        ).fetchone()
        assert opts == {"reloptions": ["security_invoker=on"]}
        fns = admin.execute(
            "SELECT proname, prosecdef, proconfig FROM pg_proc"
            " WHERE proname IN ('later_fn', 'worker_defer_job') ORDER BY 1"
        ).fetchall()
        path = ["search_path=pg_catalog, public, pg_temp"]
        assert fns == [
            {"proname": "later_fn", "prosecdef": True, "proconfig": path},
            {"proname": "worker_defer_job", "prosecdef": True, "proconfig": path},
        ]
        # an extension the file created stays the application's to use
        ext = admin.execute(
            "SELECT has_function_privilege('anon', 'citext_eq(citext, citext)', 'EXECUTE') AS ok"
        ).fetchone()
        assert ext == {"ok": True}
    # the runtime role given its rights before the file gets them on what the file created
    with supa.connect(supa.runtime) as conn:
        conn.execute("INSERT INTO later_things (v) VALUES ('x')")
        assert conn.execute("SELECT v FROM later_view").fetchall() == [{"v": "x"}]


def test_install_from_before_the_registry_is_locked_down_too(
    pg_server_url: str, tmp_path: Path
) -> None:
    """A database migrated to 0014 before migrate recorded what it created: 0016 registers
    the worker's objects by name and closes them; the four application-shaped tables, whose
    origin it cannot know, keep their grants (the migration says so)."""
    from worker import migrate as migrate_module

    db = _make_supabase_db(pg_server_url, migrate_now=False)
    try:
        for f in migrate_module.project_migrations():
            if f.filename < "0015":
                (tmp_path / f.filename).write_text(f.text, encoding="utf-8")
        migrate_module.migrate(db.owner_url, tmp_path)
        with db.connect(db.owner) as conn:  # as the old migrate left it: no registry, all open
            conn.execute("DROP TABLE worker_schema_objects")
            conn.execute(
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated;"
                " GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO anon, authenticated;"
                " GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO anon, authenticated, PUBLIC"
            )
        migrate_module.migrate(db.owner_url)
        with db.connect() as admin:
            left_open = {x.split(" on ")[-1] for x in _reachable(admin, "anon")}
        assert left_open == {
            "questions",
            "ai_commentary_settings",
            "ai_commentary_summaries",
            "ai_commentary_batch_jobs",
        }
    finally:
        _drop_supabase_db(db)


def test_temporary_table_cannot_stand_in_for_the_settings(supa: SupaDB) -> None:
    """The attack of the issue: a DML-only role's temporary ai_realtime_settings switched
    off input validation. With the path pinned the trigger reads the real table."""
    with supa.connect(supa.owner) as conn:
        conn.execute("SELECT worker_grant_runtime(%s)", (supa.runtime,))
    with supa.connect(supa.runtime) as conn:
        conn.execute(
            "CREATE TEMP TABLE ai_realtime_settings (LIKE public.ai_realtime_settings INCLUDING DEFAULTS)"
        )
        conn.execute(
            "INSERT INTO ai_realtime_settings (id, max_input_chars) VALUES (true, 1000000)"
        )
        with pytest.raises(psycopg.errors.CheckViolation, match="too long"):
            conn.execute(
                "INSERT INTO ai_jobs (kind, provider, input_text) VALUES ('chat', 'mock', %s)",
                ("x" * 40000,),
            )
        # and it has no DDL: not on the worker's tables, not in the schema
        assert _try(conn, "ALTER TABLE ai_jobs ADD COLUMN x int") == "InsufficientPrivilege"
        assert _try(conn, "CREATE TABLE public.mine (x int)") == "InsufficientPrivilege"
        assert _try(conn, "DROP VIEW ai_session_stats") == "InsufficientPrivilege"


@pytest.fixture
def supa_pipeline(
    supa: SupaDB, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SupaDB]:
    """``supa`` with the worker pointed at the emulator, as the ``pipeline`` fixture does."""
    point_env_at_emulator(monkeypatch, emulator)
    emulator.configure(state_seconds=0)
    get_settings.cache_clear()
    reset_providers()
    with supa.connect(supa.owner) as conn:
        conn.execute(
            "UPDATE ai_commentary_settings SET processing_delay_minutes = 0, batch_size = 500,"
            " models = %s, models_enabled = %s",
            (
                json.dumps(DEFAULT_MODELS),
                json.dumps({"chatgpt": True, "gemini": True, "mistral": True, "perplexity": True}),
            ),
        )
    yield supa
    get_settings.cache_clear()
    reset_providers()


def _submit_work(conn: psycopg.Connection[Any], label: str) -> None:
    conn.execute(
        "INSERT INTO questions (question, option_a, option_b, option_c, option_d, correct_answer,"
        " subject, ai_commentary_status)"
        " SELECT %s || g || ': Welches Organ produziert Insulin?', 'Leber', 'Pankreas', 'Milz',"
        " 'Niere', 'B', 'Physiologie', 'pending' FROM generate_series(1, 3) g",
        (label,),
    )
    conn.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
        " SELECT 'chat', 'openai', 'gpt-4.1-mini', %s || g, %s FROM generate_series(1, 3) g",
        (label, f"server:{label}"),
    )


def _open_work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM questions WHERE ai_commentary_status <> 'completed') AS q,"
        " (SELECT count(*) FROM ai_jobs WHERE status <> 'completed') AS j,"
        " (SELECT count(*) FROM questions) AS q_total, (SELECT count(*) FROM ai_jobs) AS j_total"
    ).fetchone()
    assert row is not None
    return dict(row)


def test_worker_completes_questions_and_jobs_as_owner_and_as_runtime_role(
    supa_pipeline: SupaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = supa_pipeline
    with db.connect(db.owner) as conn:
        _submit_work(conn, "owner")
    monkeypatch.setenv("DATABASE_URL", db.owner_url)
    assert drain(90) == 0
    with db.connect() as admin:
        assert _open_work(admin) == {"q": 0, "j": 0, "q_total": 3, "j_total": 3}

    with db.connect(db.owner) as conn:
        conn.execute("SELECT worker_grant_runtime(%s)", (db.runtime,))
    with db.connect(db.runtime) as conn:  # the application's inserts, with DML rights only
        _submit_work(conn, "runtime")
    monkeypatch.setenv("DATABASE_URL", db.runtime_url)
    assert drain(90) == 0
    with db.connect() as admin:
        assert _open_work(admin) == {"q": 0, "j": 0, "q_total": 6, "j_total": 6}
        summaries = admin.execute("SELECT count(*) AS n FROM ai_commentary_summaries").fetchone()
        assert summaries == {"n": 6}
        errors = admin.execute("SELECT kind, message FROM worker_errors").fetchall()
        assert not [e for e in errors if "permission denied" in e["message"]], errors


def test_signed_in_user_submits_a_chat_and_reads_only_their_own(
    supa_pipeline: SupaDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = supa_pipeline
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    with db.connect(db.owner) as conn:
        conn.execute(_readme_block("<!-- open-chat-sql -->"))  # type: ignore[arg-type]
        conn.execute(
            "INSERT INTO ai_routes (name, provider, model) VALUES ('internal', 'openai', 'gpt-4.1')"
        )
        # a server-side chat of someone else, and a question: neither is for the users' eyes
        _submit_work(conn, "server")
        conn.execute("UPDATE ai_realtime_settings SET session_max_jobs = 2")

    insert = (
        "INSERT INTO ai_jobs (kind, route, input_text, session_id)"
        " VALUES ('chat', %s, %s, %s) RETURNING id"
    )
    with db.as_user("authenticated", alice) as conn:
        a1 = conn.execute(insert, ("app-chat", "Hallo, ich bin Alice", "alice-1")).fetchone()
        a2 = conn.execute(insert, ("app-chat", "Und noch eine Frage", "alice-1")).fetchone()
        assert a1 and a2
        with pytest.raises(psycopg.errors.CheckViolation, match="reached its limit of 2"):
            conn.execute(insert, ("app-chat", "eine dritte", "alice-1"))
        with pytest.raises(psycopg.errors.CheckViolation, match="control characters"):
            conn.execute(insert, ("app-chat", "bell\x07", "alice-2"))
        with pytest.raises(psycopg.errors.CheckViolation, match="not open to signed-in users"):
            conn.execute(insert, ("internal", "teuer bitte", "alice-2"))
        with pytest.raises(psycopg.errors.CheckViolation, match="chat jobs only"):
            conn.execute(
                "INSERT INTO ai_jobs (kind, route, input_text) VALUES ('sentiment', 'app-chat', 'x')"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
                " VALUES ('chat', 'openai', 'gpt-4.1', 'x', 'alice-3')"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE ai_chat_sessions SET max_jobs = 1000 WHERE id = 'alice-1'")
    with db.as_user("authenticated", bob) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another user"):
            conn.execute(insert, ("app-chat", "Ich bin Bob", "alice-1"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to another user"):
            conn.execute(insert, ("app-chat", "Ich bin Bob", "server:server"))
        b1 = conn.execute(insert, ("app-chat", "Hallo, ich bin Bob", "bob-1")).fetchone()
        assert b1
    for role in ("anon", "authenticated"):  # anon; signed in without a sub: nobody
        with db.as_user(role) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(insert, ("app-chat", "Hallo", "nobody-1"))

    monkeypatch.setenv("DATABASE_URL", db.owner_url)
    assert drain(90) == 0

    mine = "SELECT id, session_id, status, result_text FROM ai_jobs ORDER BY id"
    with db.as_user("authenticated", alice) as conn:
        jobs = conn.execute(mine).fetchall()
        assert [(j["id"], j["session_id"], j["status"]) for j in jobs] == [
            (a1["id"], "alice-1", "completed"),
            (a2["id"], "alice-1", "completed"),
        ]
        assert all(j["result_text"] for j in jobs)
        msgs = conn.execute(
            "SELECT session_id, role FROM ai_chat_messages ORDER BY role"
        ).fetchall()
        assert msgs == [
            {"session_id": "alice-1", "role": r} for r in ("assistant",) * 2 + ("user",) * 2
        ]
        sessions = conn.execute("SELECT id, owner_id FROM ai_chat_sessions").fetchall()
        assert sessions == [{"id": "alice-1", "owner_id": alice}]
        # costs, errors and the operator's columns stay hidden even on her own rows
        assert _try(conn, "SELECT cost_usd FROM ai_jobs") == "InsufficientPrivilege"
        assert _try(conn, "SELECT * FROM ai_jobs") == "InsufficientPrivilege"
    with db.as_user("authenticated", bob) as conn:
        jobs = conn.execute(mine).fetchall()
        assert [(j["id"], j["status"]) for j in jobs] == [(b1["id"], "completed")]
        msgs = conn.execute("SELECT DISTINCT session_id FROM ai_chat_messages").fetchall()
        assert msgs == [{"session_id": "bob-1"}]
    with db.connect() as admin:  # the server-side rows exist, the users just cannot see them
        assert admin.execute("SELECT count(*) AS n FROM ai_jobs").fetchone() == {"n": 6}

    # everything else stays closed to a signed-in user, and all of it to anon
    opened = {"ai_jobs", "ai_chat_sessions", "ai_chat_messages", "worker_caller_id"}
    assert _probe_everything(db, "authenticated", alice, opened) == []
    assert _probe_everything(db, "anon", None, set()) == []
    with db.connect() as admin:
        assert _reachable(admin, "anon") == []
        assert admin.execute("SELECT count(*) AS n FROM ai_jobs").fetchone() == {"n": 6}


def test_front_end_reads_carry_over_to_the_wide_view(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production: the front end read the old wide ai_answer_comments under a policy. After
    migrate it reads the same comments through ai_answer_comments_wide, and no more."""
    setup = PRODUCTION_SHAPE.read_text(encoding="utf-8") + (
        "\nUPDATE questions SET visibility = 'public' WHERE ai_commentary_status = 'completed'"
        " AND question LIKE 'Frage 1%';\n"
        "ALTER TABLE questions ENABLE ROW LEVEL SECURITY;\n"
        "CREATE POLICY read_public ON questions FOR SELECT TO authenticated"
        " USING (visibility = 'public');\n"
        "ALTER TABLE ai_answer_comments ENABLE ROW LEVEL SECURITY;\n"
        "CREATE POLICY read_public_comments ON ai_answer_comments FOR SELECT TO authenticated"
        " USING (EXISTS (SELECT 1 FROM questions q WHERE q.id = ai_answer_comments.question_id"
        " AND q.visibility = 'public'));\n"
    )
    db = _make_supabase_db(pg_server_url, migrate_now=False, setup_sql=setup)
    try:
        with db.connect() as admin:  # the application's own objects, before the install
            app_objects = {r["name"] for r in _relations(admin)}
        user = str(uuid.uuid4())
        before_q = (
            "SELECT DISTINCT question_id FROM ai_answer_comments"
            " WHERE coalesce(chatgpt_general_comment, '') <> '' ORDER BY 1"
        )
        with db.as_user("authenticated", user) as conn:
            before = [r["question_id"] for r in conn.execute(before_q).fetchall()]
        with db.as_user("anon") as conn:
            assert conn.execute(before_q).fetchall() == []
        with db.connect() as admin:
            total = admin.execute(
                "SELECT count(DISTINCT question_id) AS n FROM ai_answer_comments"
                " WHERE coalesce(chatgpt_general_comment, '') <> ''"
            ).fetchone()
        assert before and total and total["n"] > len(before)

        migrate(db.owner_url)
        after_q = (
            "SELECT question_id, chatgpt_general_comment FROM ai_answer_comments_wide"
            " WHERE chatgpt_general_comment IS NOT NULL ORDER BY 1"
        )
        with db.as_user("authenticated", user) as conn:
            after = conn.execute(after_q).fetchall()
            assert [r["question_id"] for r in after] == before
            assert all(r["chatgpt_general_comment"].startswith("neu chatgpt") for r in after)
            # the new narrow table: its comment columns only, never costs or tokens
            assert _try(conn, "SELECT cost_usd FROM ai_answer_comments") == "InsufficientPrivilege"
            assert _try(conn, "SELECT * FROM ai_commentary_requests") == "InsufficientPrivilege"
        with db.as_user("anon") as conn:
            assert _try(conn, after_q) in ([], "InsufficientPrivilege")
        # the application's own tables (the old comments now ai_answer_comments_legacy)
        # keep the grants and policies it gave them; everything the worker made is closed
        app_objects = (app_objects - {"ai_answer_comments"}) | {"ai_answer_comments_legacy"}
        assert "questions" in app_objects and "ai_commentary_settings" in app_objects
        opened = {"ai_answer_comments_wide", "ai_answer_comments", *app_objects}
        leaks = _probe_everything(db, "authenticated", user, opened)
        assert [x for x in leaks if x.split()[-1] not in app_objects] == []
    finally:
        _drop_supabase_db(db)


def _cli(db: SupaDB, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db.url_as(role), "LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_role_without_rights_gets_one_readable_line(supa: SupaDB) -> None:
    stranger = f"aiw_none_{supa.tag}"
    supa.extra_roles.append(stranger)
    with supa.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(stranger)))
    for args in (("run", "--until-idle", "--timeout", "20"), ("status",)):
        out = _cli(supa, stranger, *args)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert "Traceback" not in out.stderr
        assert f"SELECT worker_grant_runtime('{stranger}')" in lines[0]
    # the fix the line names makes the same role work
    with supa.connect(supa.owner) as conn:
        conn.execute("SELECT worker_grant_runtime(%s)", (stranger,))
    out = _cli(supa, stranger, "status", "--json")
    assert out.returncode == 0, out.stderr


def test_a_signed_in_user_cannot_spend_past_the_daily_limit_by_opening_sessions(
    supa: SupaDB,
) -> None:
    with supa.connect(supa.owner) as conn:
        conn.execute(_readme_block("<!-- open-chat-sql -->"))  # type: ignore[arg-type]
        conn.execute("UPDATE ai_realtime_settings SET end_user_max_jobs_per_day = 3")
    insert = "INSERT INTO ai_jobs (kind, route, input_text, session_id) VALUES ('chat', 'app-chat', 'Hi', %s)"
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    with supa.as_user("authenticated", alice) as conn:
        for i in range(3):
            conn.execute(insert, (f"alice-{i}",))
        with pytest.raises(psycopg.errors.CheckViolation, match="limit of 3 chats in 24 hours"):
            conn.execute(insert, ("alice-new",))
    with supa.as_user("authenticated", bob) as conn:  # per user, not for everyone
        conn.execute(insert, ("bob-1",))
        # the README's client statements, word for word
        conn.execute(_readme_block("<!-- user-chat-sql -->"))  # type: ignore[arg-type]
    with supa.connect() as admin:
        row = admin.execute(
            "SELECT owner_id, status FROM ai_jobs WHERE session_id = 'my-session-1'"
        ).fetchone()
        assert row == {"owner_id": bob, "status": "pending"}


def test_on_a_new_database_the_documented_statements_open_the_front_end_read(
    supa: SupaDB,
) -> None:
    with supa.connect() as admin:
        qid = admin.execute(
            "INSERT INTO questions (question, option_a, option_b, correct_answer)"
            " VALUES ('Welches Organ?', 'Leber', 'Pankreas', 'B') RETURNING id"
        ).fetchone()
        assert qid
        admin.execute(
            "INSERT INTO ai_answer_comments (question_id, model_key, general_comment, cost_usd)"
            " VALUES (%s, 'chatgpt', 'Das Pankreas.', 0.5)",
            (qid["id"],),
        )
    read = "SELECT question_id, chatgpt_general_comment FROM ai_answer_comments_wide"
    with supa.as_user("authenticated", str(uuid.uuid4())) as conn:
        assert _try(conn, read) == "InsufficientPrivilege"  # closed until opened
    with supa.connect(supa.owner) as conn:
        conn.execute(_readme_block("<!-- open-comments-sql -->"))  # type: ignore[arg-type]
    with supa.as_user("authenticated", str(uuid.uuid4())) as conn:
        assert conn.execute(read).fetchall() == [
            {"question_id": qid["id"], "chatgpt_general_comment": "Das Pankreas."}
        ]
        assert _try(conn, "SELECT cost_usd FROM ai_answer_comments") == "InsufficientPrivilege"
        assert _try(conn, "SELECT question FROM questions") == "InsufficientPrivilege"
    with supa.as_user("anon") as conn:
        assert _try(conn, read) == "InsufficientPrivilege"
