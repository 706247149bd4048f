"""Does the connected database role have what the worker needs?

The worker runs as the owner of its objects (the role of ``db migrate``) or as a runtime
role given DML only (``SELECT worker_grant_runtime('ai_worker')``, README "Security and
roles"). A role without those rights gets one readable line naming the fix instead of a
traceback from deep inside a task: ``run`` checks before it starts, and the CLI turns any
``permission denied`` into the same line.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors

from worker.database import connect
from worker.errors import WorkerError
from worker.queries import q


class RightsError(WorkerError):
    """The connected role lacks rights on the worker's objects (a WorkerError)."""


def advice(role: str) -> str:
    return (
        f"as the owner (the role that ran db migrate) run: SELECT worker_grant_runtime('{role}');"
        ' see README "Security and roles"'
    )


def explain(exc: psycopg.errors.InsufficientPrivilege, role: str) -> RightsError:
    """One line for a ``permission denied`` the server raised."""
    what = exc.diag.message_primary or str(exc).splitlines()[0]
    return RightsError(f"database role {role}: {what}; {advice(role)}")


def check(url: str | None = None) -> None:
    """Raise :class:`RightsError` when the role cannot run the worker. An unreachable or
    unmigrated database is left to the caller's own handling."""
    try:
        with connect(url, autocommit=True) as conn:
            role = str(conn.info.user)
            try:
                rows: list[dict[str, Any]] = conn.execute(q("missing_runtime_rights")).fetchall()
            except psycopg.errors.UndefinedTable:
                return  # schema older than 0016 or not migrated: db migrate says so
            except psycopg.errors.InsufficientPrivilege as exc:
                raise explain(exc, role) from None
    except psycopg.OperationalError:
        return
    if rows:
        names = ", ".join(f"{r['kind']} {r['name']}" for r in rows[:3])
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise RightsError(f"database role {role} lacks rights on {names}{more}; {advice(role)}")
