"""Reads shared by ``status`` and ``/metrics`` for tables a database may lack or shape
differently (the realtime ``ai_jobs``, the resilience tables): each returns None while the
table is absent. Column names are checked in ``information_schema`` and quoted with
:mod:`psycopg.sql`, so nothing outside the named queries is interpolated."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from worker.queries import q

OPEN_BREAKER_STATES = frozenset({"open", "half_open", "half-open"})


async def _rows(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return await _query(conn, q(name), params)


async def _query(
    conn: psycopg.AsyncConnection[Any],
    query: sql.SQL | sql.Composed | LiteralString,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows as dicts whatever the connection's row factory."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params or {})
        return list(await cur.fetchall())


async def table_columns(conn: psycopg.AsyncConnection[Any], name: str) -> list[str]:
    """Column names of ``name``; empty when the table does not exist (yet)."""
    present = await _rows(conn, "ops_table_exists", {"name": name})
    if not present or not present[0]["present"]:
        return []
    return [r["name"] for r in await _rows(conn, "ops_table_columns", {"name": name})]


def _first(cols: Sequence[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in cols), None)


async def ai_job_counts(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """Realtime ``ai_jobs`` rows by status (None while the table does not exist)."""
    cols = await table_columns(conn, "ai_jobs")
    status = _first(cols, "status", "state")
    if status is None:
        return None
    stmt = sql.SQL("SELECT {s}::text AS status, count(*) AS n FROM ai_jobs GROUP BY 1 ORDER BY 1")
    return await _query(conn, stmt.format(s=sql.Identifier(status)))


async def ai_job_due(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
    """Due realtime jobs and the age of the oldest (None while ai_jobs is absent)."""
    cols = await table_columns(conn, "ai_jobs")
    if not all(c in cols for c in ("status", "next_attempt_at", "created_at")):
        return None
    rows = await _query(
        conn,
        "SELECT count(*) AS due, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
        " AS oldest_age_seconds FROM ai_jobs"
        " WHERE status IN ('pending', 'retrying') AND next_attempt_at <= now()",
    )
    return rows[0]


async def ai_job_spend_since(
    conn: psycopg.AsyncConnection[Any], since: datetime
) -> list[dict[str, Any]] | None:
    """Tokens and cost of ``ai_jobs`` since ``since`` when the table records them."""
    cols = await table_columns(conn, "ai_jobs")
    model = _first(cols, "model", "model_name")
    ts = _first(cols, "finished_at", "completed_at", "updated_at", "created_at")
    need = ("provider", "input_tokens", "output_tokens", "cost_usd")
    if model is None or ts is None or not all(c in cols for c in need):
        return None
    stmt = sql.SQL(
        "SELECT provider, {m} AS model_name, count(*) AS requests,"
        " coalesce(sum(input_tokens), 0) AS input_tokens,"
        " coalesce(sum(output_tokens), 0) AS output_tokens,"
        " coalesce(sum(cost_usd), 0) AS cost_usd"
        " FROM ai_jobs WHERE {t} >= %(since)s AND cost_usd IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(m=sql.Identifier(model), t=sql.Identifier(ts))
    return await _query(conn, stmt, {"since": since})


async def breaker_states(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """``provider_health`` rows as {provider, state} (None while the table does not exist)."""
    cols = await table_columns(conn, "provider_health")
    state = _first(cols, "breaker_state", "state", "status")
    if "provider" not in cols or state is None:
        return None
    stmt = sql.SQL(
        "SELECT provider::text AS provider, {s}::text AS state FROM provider_health ORDER BY 1"
    ).format(s=sql.Identifier(state))
    return await _query(conn, stmt)


async def active_stops(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """Active ``provider_stops`` rows as {provider, reason, since} (None without the table)."""
    cols = await table_columns(conn, "provider_stops")
    if "provider" not in cols:
        return None
    reason = _first(cols, "reason", "kind", "error", "message")
    since = _first(cols, "stopped_at", "created_at", "since")
    conds: list[sql.Composable] = []
    for c in ("cleared_at", "resolved_at", "lifted_at", "ended_at", "released_at", "resumed_at"):
        if c in cols:
            conds.append(sql.SQL("{} IS NULL").format(sql.Identifier(c)))
    for c in ("until", "stopped_until", "expires_at", "resume_at"):
        if c in cols:
            conds.append(sql.SQL("({c} IS NULL OR {c} > now())").format(c=sql.Identifier(c)))
    if "active" in cols:
        conds.append(sql.SQL("active"))
    stmt = sql.SQL(
        "SELECT provider::text AS provider, {k} AS kind, {r} AS reason, {s} AS since"
        " FROM provider_stops WHERE {w} ORDER BY 1"
    ).format(
        k=sql.SQL("kind::text") if "kind" in cols else sql.SQL("NULL::text"),
        r=sql.SQL("{}::text").format(sql.Identifier(reason)) if reason else sql.SQL("NULL::text"),
        s=sql.Identifier(since) if since else sql.SQL("NULL::timestamptz"),
        w=sql.SQL(" AND ").join(conds) if conds else sql.SQL("true"),
    )
    return await _query(conn, stmt)
