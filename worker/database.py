"""Finding the database and opening connections.

Order: ``DATABASE_URL`` when set; else the server on ``AI_WORKER_LOCAL_URL``
(127.0.0.1:5432) when one answers; else an embedded Postgres (the ``pgserver`` wheel)
started under ``AI_WORKER_DATA_DIR``/pg (``.data/pg``). Whatever is found is exported as
``DATABASE_URL`` so child processes (workers, the CLI) use the same server.

This module reads ``DATABASE_URL`` from ``os.environ`` (the one setting read outside
:mod:`worker.config`, see there), on purpose: the environment is where the resolved URL is
handed on (an embedded server this process started must not be resolved, or started, again by the
next caller or a child process), so it is read back from there first
(:func:`configured_database_url`); ``Settings.database_url`` (the same variable, also from
``.env``) comes next.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from worker.config import get_settings

log = logging.getLogger(__name__)

APPLICATION_NAME = "ai-worker"
_embedded: Any = None  # keeps the embedded server handle alive for this process


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def embedded_data_dir() -> Path:
    return Path(get_settings().ai_worker_data_dir).resolve() / "pg"


def start_embedded() -> str:
    """Start (or reuse) the embedded Postgres under .data/pg and return its URL."""
    global _embedded
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - pgserver is installed by `make setup`
        raise RuntimeError(
            "No DATABASE_URL, no server on 127.0.0.1:5432 and pgserver is not installed"
        ) from exc
    path = embedded_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    _embedded = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    url: str = _embedded.get_uri("postgres")
    log.info("started embedded postgres in %s", path)
    return url


def resolve_database_url() -> str:
    """The URL of the database to use, starting an embedded server if nothing else is."""
    url = configured_database_url()
    if not url:
        # Overridable so the embedded fallback can be exercised on a machine with a server.
        local = get_settings().ai_worker_local_url
        url = local if _answers(local) else start_embedded()
        os.environ["DATABASE_URL"] = url
    return url


def configured_database_url() -> str | None:
    """``DATABASE_URL`` as configured or as resolved and exported earlier (see the module
    doc), or None when neither: the raw value, before any server is looked for."""
    return os.environ.get("DATABASE_URL") or get_settings().database_url


def with_database(url: str, dbname: str) -> str:
    """The same server, another database (as a conninfo string psycopg understands)."""
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A sync connection with dict rows and our application_name (visible in pg_stat_activity)."""
    return psycopg.connect(
        url or resolve_database_url(),
        autocommit=autocommit,
        row_factory=dict_row,
        application_name=APPLICATION_NAME,
    )


async def aconnect(
    url: str | None = None, *, autocommit: bool = False
) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        url or resolve_database_url(),
        autocommit=autocommit,
        row_factory=dict_row,
        application_name=APPLICATION_NAME,
    )
