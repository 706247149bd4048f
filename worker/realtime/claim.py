"""Claiming due jobs (one statement, ``FOR UPDATE SKIP LOCKED``) and loading what they need:
session history for chat jobs, templates for named kinds, the settings row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.ops.error_log import record_error
from worker.queries import q
from worker.realtime.model import KIND_CHAT, Job, RealtimeSettings, Template


async def load_settings(conn: AsyncConnection[Any]) -> RealtimeSettings:
    """The settings row; its problems (a missing row, a bad value) are recorded in
    ``worker_errors`` and the built-in value is used instead (issue #11)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("rt_read_settings"))
    settings, problems = RealtimeSettings.parse(await cur.fetchone())
    for problem in problems:
        await record_error(conn, "settings", problem, fingerprint=f"rt-settings:{problem[:200]}")
    return settings


async def load_templates(conn: AsyncConnection[Any]) -> dict[str, Template]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("rt_templates"))
    return {
        r["name"]: Template(
            name=r["name"],
            system_prompt=r["system_prompt"] or "",
            user_template=r["user_template"],
            output=r["output"],
            json_schema=r["json_schema"],
            max_output_tokens=r["max_output_tokens"],
            temperature=r["temperature"],
        )
        for r in await cur.fetchall()
    }


def first_rows_limit(limit: int, lane_free: Mapping[str, int], default_free: int) -> int:
    """How many rows a claim may take in plain claim order, without the per-lane caps
    (``rt_claim_fast``): no lane - those in ``lane_free``, and any other at
    ``default_free`` - has fewer free slots, so no lane can be capped among that many
    rows. 0: every claim must apply the caps."""
    return max(0, min(limit, default_free, *lane_free.values()))


async def claim(
    conn: AsyncConnection[Any],
    *,
    owner: str,
    limit: int,
    lane_free: Mapping[str, int],
    default_free: int,
    skip_providers: set[str],
    settings: RealtimeSettings,
    first: bool = False,
) -> list[Job]:
    """Claim up to ``limit`` due jobs, at most ``lane_free[lane]`` per lane, and attach the
    session history (last K messages) of chat jobs. ``first``: the caller knows that no lane
    can reach its cap (``limit <= first_rows_limit(...)``), and the cheaper ``rt_claim_fast``
    takes the same rows."""
    cur = conn.cursor(row_factory=dict_row)
    if first:
        if limit > first_rows_limit(limit, lane_free, default_free):
            raise ValueError("claim(first=True) with a limit some lane could reach")
        await cur.execute(
            q("rt_claim_fast"),
            {
                "owner": owner,
                "limit": limit,
                "skip": sorted(skip_providers),
                "lease": settings.lease_seconds,
            },
        )
    else:
        lanes = sorted(lane_free)
        await cur.execute(
            q("rt_claim"),
            {
                "owner": owner,
                "limit": limit,
                # Scan a little more than we take so one full lane does not starve the others.
                "scan": limit * 2 + 50,
                "skip": sorted(skip_providers),
                "lanes": lanes,
                "free": [lane_free[k] for k in lanes],
                "default_free": default_free,
                "lease": settings.lease_seconds,
            },
        )
    jobs = [Job.from_row(r) for r in await cur.fetchall()]
    sessions = sorted({j.session_id for j in jobs if j.kind == KIND_CHAT and j.session_id})
    if sessions and settings.context_messages > 0:
        await cur.execute(
            q("rt_session_history"),
            {
                "sessions": sessions,
                "k": settings.context_messages,
                "max_chars": settings.message_max_chars,
            },
        )
        history: dict[str, list[dict[str, str]]] = {}
        for r in await cur.fetchall():
            history.setdefault(r["session_id"], []).append(
                {"role": r["role"], "content": r["content"]}
            )
        for j in jobs:
            if j.session_id:
                j.history = history.get(j.session_id, [])
    jobs.sort(key=lambda j: (-j.priority, j.id))
    return jobs
