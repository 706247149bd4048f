"""Set-up problems as one readable line that names the fix.

A new user's mistakes (no server, a malformed ``DATABASE_URL``, a role without privileges, a
database that was never migrated or was changed by hand) surface here as :class:`SetupError`
with one line of text, never as a traceback; ``python -m worker --debug ...`` shows the
traceback as well. :func:`explain` turns the psycopg exception of such a mistake into that
line; :func:`worker.migrate.check_schema` finds an unmigrated or drifted schema before a command uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerr

from worker.errors import SetupError

MIGRATE_HINT = "run `python -m worker db migrate`"
URL_HINT = (
    "set DATABASE_URL (in .env or the environment) to postgresql://user:password@host:5432/dbname"
)

_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "failed to resolve host",
    "name or service not known",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "the database system is starting up",
    "the database system is shutting down",
    "connection timed out",
    "no such file or directory",  # a unix socket that is not there
    "server closed the connection unexpectedly",
)


def where(url: str) -> str:
    """``user@host:port/dbname`` of a connection string, without the password."""
    try:
        d = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<malformed DATABASE_URL>"
    host = str(d.get("host") or "localhost")
    if host.startswith("/"):
        host = f"socket {host}"
    user = f"{d['user']}@" if d.get("user") else ""
    return f"{user}{host}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = re.sub(r"^connection failed:\s*", "", line)
    line = re.sub(r'^connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed:\s*', "", line)
    line = re.sub(r"^FATAL:\s*", "", line)
    return line.strip()


def validate_url(url: str) -> None:
    """Raise :class:`SetupError` when ``url`` is not a connection string psycopg accepts."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        shown = url if len(url) <= 40 and "@" not in url else url[:12] + "…"
        raise SetupError(
            f"DATABASE_URL {shown!r} is not a valid connection string ({first_line(exc)}): "
            + URL_HINT
        ) from exc


def unreachable(exc: BaseException) -> bool:
    """Whether a connection error means 'the server is not (yet) there': worth waiting for."""
    text = str(exc).lower()
    return isinstance(exc, (psycopg.OperationalError, OSError)) and any(
        s in text for s in _UNREACHABLE
    )


def explain(exc: BaseException, url: str | None) -> str | None:
    """One line naming the fix for a set-up error, or None when ``exc`` is not one."""
    at = where(url) if url else "the database"
    reason = first_line(exc)
    if isinstance(exc, SetupError):
        return str(exc)
    if isinstance(exc, psycopg.ProgrammingError) and "connection info string" in str(exc):
        return f"DATABASE_URL is not a valid connection string ({reason}): {URL_HINT}"
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return (
            f"the database role lacks a privilege at {at} ({reason}): connect as the role that "
            "owns the worker's schema (`db migrate` needs CREATE on the database and schema "
            "public), or GRANT the privilege to this role"
        )
    if isinstance(exc, (pgerr.UndefinedTable, pgerr.UndefinedFunction, pgerr.UndefinedObject)):
        return f"the database {at} is not migrated ({reason}): {MIGRATE_HINT}"
    if isinstance(exc, psycopg.OperationalError):
        low = reason.lower()
        if "does not exist" in low and "database" in low:
            dbname = where(url).rsplit("/", 1)[-1] if url else "it"
            return (
                f"cannot connect to {at}: {reason}: create it (`createdb {dbname}`) "
                "or point DATABASE_URL at an existing database"
            )
        if "password authentication failed" in low or ("role" in low and "does not exist" in low):
            return f"cannot connect to {at}: {reason}: fix the user and password in DATABASE_URL"
        if "permission denied" in low:
            return (
                f"the database role may not connect to {at} ({reason}): GRANT CONNECT to it "
                "or use another role in DATABASE_URL"
            )
        if unreachable(exc):
            return (
                f"cannot connect to the database at {at} ({reason}): start PostgreSQL there, "
                f"or {URL_HINT}"
            )
        return f"cannot use the database at {at} ({reason}): check DATABASE_URL and the server"
    return None


# --------------------------------------------------------------------------------------
# Schema checks: migrated, up to date, and every object the migrations create still there
# --------------------------------------------------------------------------------------

_OBJECT_PATTERNS = {
    "table": re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)", re.I),
    "view": re.compile(r"CREATE\s+OR\s+REPLACE\s+VIEW\s+([a-z_][a-z0-9_]*)", re.I),
    "function": re.compile(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+([a-z_][a-z0-9_]*)", re.I),
    "trigger": re.compile(r"CREATE\s+TRIGGER\s+([a-z_][a-z0-9_]*)", re.I),
}
_DROP = re.compile(
    r"DROP\s+(TABLE|VIEW|FUNCTION|TRIGGER)\s+(?:IF\s+EXISTS\s+)?([a-z_][a-z0-9_]*)", re.I
)
# Objects a migration creates only on some databases: a table only where the production
# layout was there; the embedding_vector trigger and its function only where the `vector`
# extension exists (0024_embedding_vector.sql).
_CONDITIONAL = {
    "ai_commentary_summaries_legacy_duplicates",
    "ai_jobs_fill_embedding_vector",
    "ai_jobs_embedding_vector",
    "ai_jobs_embedding_vector_ins",
}


@dataclass(frozen=True)
class SchemaObject:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def expected_objects(texts: list[str]) -> list[SchemaObject]:
    """The tables, views, functions and triggers the migration files leave behind, in
    order of first creation (an object dropped by a later file and not re-created is
    left out)."""
    found: dict[tuple[str, str], SchemaObject] = {}
    for text in texts:
        code = re.sub(r"--[^\n]*", "", text)
        events: list[tuple[int, str, str, bool]] = []
        for kind, pat in _OBJECT_PATTERNS.items():
            events += [(m.start(), kind, m.group(1).lower(), True) for m in pat.finditer(code)]
        events += [
            (m.start(), m.group(1).lower(), m.group(2).lower(), False) for m in _DROP.finditer(code)
        ]
        for _pos, kind, name, create in sorted(events):
            if name in _CONDITIONAL:
                continue
            if create:
                found.setdefault((kind, name), SchemaObject(kind, name))
            else:
                found.pop((kind, name), None)
    return list(found.values())


_EXISTS = {
    "table": "SELECT to_regclass(%s) IS NOT NULL AS ok",
    "view": "SELECT to_regclass(%s) IS NOT NULL AS ok",
    "function": "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %s"
    " AND pg_function_is_visible(oid)) AS ok",
    "trigger": "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " WHERE t.tgname = %s AND pg_table_is_visible(c.oid)) AS ok",
}


def missing_objects(conn: psycopg.Connection[Any], objects: list[SchemaObject]) -> list[str]:
    """The expected objects that are not in the database (``kind name``)."""
    out: list[str] = []
    with conn.cursor() as cur:
        for obj in objects:
            cur.execute(_EXISTS[obj.kind], (obj.name,))
            row = cur.fetchone()
            ok = row["ok"] if isinstance(row, dict) else (row[0] if row else False)
            if not ok:
                out.append(str(obj))
    return out
