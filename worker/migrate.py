"""Applying the schema: Procrastinate's, then the ordered files of ``worker/schema/``.

The files ship inside the package and are read with :mod:`importlib.resources` (as
Procrastinate reads its own schema), so an installed wheel can migrate.

Run explicitly (``python -m worker db migrate``); the worker never runs DDL on its own.
Every applied file is recorded with its SHA-256 in ``worker_schema_migrations``; running
again applies only new files, and a changed applied file stops everything with an error
rather than silently diverging. Each file runs in its own transaction, under an advisory
lock so two concurrent migrate commands cannot interleave.

Every object a file creates is recorded in ``worker_schema_objects`` (the catalog compared
before and after the file, in its transaction), and from ``0016_security.sql`` on,
``worker_secure()`` runs before that transaction commits: a new object is never committed
open to ``PUBLIC``, ``anon`` or ``authenticated`` (see the README, "Security and roles").
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import procrastinate.schema
import psycopg
import psycopg.errors
from psycopg import sql

from worker.database import connect
from worker.errors import MigrationError, SetupError
from worker.preflight import MIGRATE_HINT, SchemaObject, expected_objects, where
from worker.preflight import missing_objects as missing
from worker.queries import q

log = logging.getLogger(__name__)

SQL_DIR = Path(str(importlib.resources.files("worker").joinpath("schema")))
PROCRASTINATE_ENTRY = "procrastinate/schema.sql"
_LOCK_KEY = 0x41_49_57_4B  # "AIWK": serialises concurrent migrate runs

TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS worker_schema_migrations (
    filename text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# What each migration created: worker_secure() locks these down and keeps them hardened.
# Objects the application had before the install are never listed.
OBJECTS_TABLE = """
CREATE TABLE IF NOT EXISTS worker_schema_objects (
    kind text NOT NULL CHECK (kind IN ('table', 'view', 'sequence', 'function')),
    name text NOT NULL,
    created_by text NOT NULL,
    secured_at timestamptz,
    carry_acl aclitem[],
    PRIMARY KEY (kind, name)
)
"""

Snapshot = dict[tuple[str, int], tuple[str, str | None]]


@dataclass(frozen=True)
class Migration:
    filename: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Applied:
    filename: str
    checksum: str
    applied_at: datetime


def project_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """The ``schema/*.sql`` files in name order."""
    files = sorted(p for p in directory.glob("*.sql") if p.is_file())
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def _applied(conn: psycopg.Connection[Any]) -> dict[str, Applied]:
    rows = conn.execute(q("applied_migrations")).fetchall()
    return {r["filename"]: Applied(r["filename"], r["checksum"], r["applied_at"]) for r in rows}


def _procrastinate_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(q("procrastinate_present")).fetchone()
    return bool(row and row["present"])


def _snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """(kind, oid) -> (name, acl) of every relation and function in the current schema."""
    rows = conn.execute(q("schema_objects")).fetchall()
    return {(r["kind"], r["oid"]): (r["name"], r["acl"]) for r in rows}


def _record_created(conn: psycopg.Connection[Any], before: Snapshot, created_by: str) -> None:
    """Register what appeared since ``before``, follow renames, forget what was dropped. A
    registered object dropped and re-created under its name passes its grants on."""
    after = _snapshot(conn)
    known = {(r["kind"], r["name"]) for r in conn.execute(q("registered_objects")).fetchall()}
    after_names = {(kind, name) for (kind, _), (name, _) in after.items()}
    dropped: dict[tuple[str, str], str | None] = {}
    for key, (name, acl) in before.items():
        kind = key[0]
        if key not in after:
            dropped[(kind, name)] = acl
            if (kind, name) in known and (kind, name) not in after_names:
                conn.execute(q("forget_object"), {"kind": kind, "name": name})
        elif after[key][0] != name and (kind, name) in known:
            conn.execute(
                q("rename_object"), {"kind": kind, "old_name": name, "new_name": after[key][0]}
            )
    for key, (name, _) in after.items():
        if key in before:
            continue
        kind = key[0]
        carried = dropped.get((kind, name)) if (kind, name) in known else None
        conn.execute(
            q("register_object"),
            {"kind": kind, "name": name, "created_by": created_by, "acl": carried},
        )


def _server_notice(diag: psycopg.errors.Diagnostic) -> None:
    """A migration's WARNING (e.g. a grant it could not carry over) and its own NOTICEs
    reach the operator's terminal; the server's "already exists, skipping" notices do not."""
    message = diag.message_primary or ""
    if diag.severity_nonlocalized == "WARNING" or message.startswith("ai-worker:"):
        log.warning("%s", message)


def _secure(conn: psycopg.Connection[Any]) -> None:
    """Lock down and harden (schema/0016's worker_secure) once it exists."""
    row = conn.execute(q("secure_available")).fetchone()
    if row and row["present"]:
        conn.execute(q("secure_schema"))


def migrate(url: str | None = None, directory: Path = SQL_DIR) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date)."""
    done: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.add_notice_handler(_server_notice)
        conn.execute(q("advisory_lock"), (_LOCK_KEY,))
        try:
            with conn.transaction():
                before = _snapshot(conn)
                conn.execute(TRACKING_TABLE)
                conn.execute(OBJECTS_TABLE)
                _record_created(conn, before, "worker/migrate.py")
            applied = _applied(conn)
            if PROCRASTINATE_ENTRY not in applied:
                schema_text = procrastinate.schema.SchemaManager.get_schema()
                with conn.transaction():
                    if not _procrastinate_installed(conn):
                        before = _snapshot(conn)
                        conn.execute(sql.SQL(schema_text))
                        _record_created(conn, before, PROCRASTINATE_ENTRY)
                        _secure(conn)
                    conn.execute(
                        q("record_migration"),
                        (PROCRASTINATE_ENTRY, Migration("", schema_text).checksum),
                    )
                done.append(PROCRASTINATE_ENTRY)
            for m in project_migrations(directory):
                known = applied.get(m.filename)
                if known is not None:
                    if known.checksum != m.checksum:
                        raise MigrationError(
                            f"schema/{m.filename} changed after it was applied on "
                            f"{known.applied_at:%Y-%m-%d %H:%M}: recorded sha256 "
                            f"{known.checksum[:12]}…, file now {m.checksum[:12]}…. "
                            "Applied migrations are immutable: add a new file instead."
                        )
                    continue
                try:
                    with conn.transaction():
                        before = _snapshot(conn)
                        conn.execute(sql.SQL(m.text))
                        _record_created(conn, before, m.filename)
                        _secure(conn)
                        conn.execute(
                            q("record_migration"),
                            (m.filename, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"schema/{m.filename} failed: {exc}") from exc
                done.append(m.filename)
            # Also when nothing was applied: re-hardens what a hand-run CREATE OR REPLACE reset.
            with conn.transaction():
                _secure(conn)
        finally:
            conn.execute(q("advisory_unlock"), (_LOCK_KEY,))
    return done


def status(url: str | None = None, directory: Path = SQL_DIR) -> list[tuple[str, str]]:
    """(filename, state) for every known migration: applied <date> | pending | CHANGED."""
    with connect(url, autocommit=True) as conn:
        present = conn.execute(q("migrations_ledger_present")).fetchone()
        applied = _applied(conn) if present and present["present"] else {}
    out: list[tuple[str, str]] = []
    proc = applied.get(PROCRASTINATE_ENTRY)
    out.append(
        (PROCRASTINATE_ENTRY, f"applied {proc.applied_at:%Y-%m-%d %H:%M:%S}" if proc else "pending")
    )
    for m in project_migrations(directory):
        a = applied.get(m.filename)
        if a is None:
            out.append((m.filename, "pending"))
        elif a.checksum != m.checksum:
            out.append((m.filename, "CHANGED since applied"))
        else:
            out.append((m.filename, f"applied {a.applied_at:%Y-%m-%d %H:%M:%S}"))
    return out


def missing_objects(url: str | None = None, directory: Path = SQL_DIR) -> list[str]:
    """Objects the applied migration files created that are no longer in the database
    (``kind name``): schema drift the ledger alone cannot see."""
    with connect(url, autocommit=True) as conn:
        applied = _applied(conn) if _ledger_present(conn) else {}
        texts = [m.text for m in project_migrations(directory) if m.filename in applied]
        objects = expected_objects(texts)
        if PROCRASTINATE_ENTRY in applied:
            objects[:0] = [
                SchemaObject("table", "procrastinate_jobs"),
                SchemaObject("function", "procrastinate_defer_jobs_v1"),
            ]
        return missing(conn, objects)


def _ledger_present(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(q("migrations_ledger_present")).fetchone()
    return bool(row and row["present"])


def check_schema(url: str | None = None) -> None:
    """Raise :class:`SetupError` unless the database is migrated, up to date and intact."""
    states = status(url)
    pending = [name for name, state in states if state == "pending"]
    changed = [name for name, state in states if state.startswith("CHANGED")]
    db = where(url) if url else "the database"
    if len(pending) == len(states):
        raise SetupError(f"the database {db} is not migrated: {MIGRATE_HINT}")
    if pending:
        raise SetupError(
            f"the database {db} is {len(pending)} migration(s) behind this version "
            f"({', '.join(pending[:3])}{'…' if len(pending) > 3 else ''}): {MIGRATE_HINT}"
        )
    if changed:
        raise SetupError(
            f"schema/{changed[0]} changed after it was applied to {db}: applied files are "
            "immutable; restore the file (git checkout) and put the change in a new file"
        )
    drift = missing_objects(url)
    if drift:
        raise SetupError(
            f"schema drift in {db}: {len(drift)} object(s) the migrations created are gone "
            f"({', '.join(drift[:3])}{'…' if len(drift) > 3 else ''}): restore them from a "
            "backup, or recreate an empty database and run `python -m worker db migrate` "
            "(`python -m worker db status` lists them)"
        )
