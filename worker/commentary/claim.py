"""Claim: read the settings row, size the claim to the budgets, claim pending and
summary-missing questions in one statement and create their request rows; take waiting
requests of one model (skipping questions that cannot be sent)."""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row

from worker.commentary import budget, question_input
from worker.commentary.rows import WaitingRequest
from worker.commentary.settings_row import CommentarySettings, parse_settings
from worker.ops import resilience
from worker.ops.error_log import record_error
from worker.queries import q

log = logging.getLogger(__name__)


async def load_settings(conn: AsyncConnection[Any]) -> CommentarySettings:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("read_settings"))
    settings = parse_settings(await cur.fetchone())
    for key, problem in settings.dropped_models.items():
        await record_error(
            conn,
            "settings",
            f"ai_commentary_settings.models.{key} is left out until it is fixed: {problem}",
            fingerprint=f"settings:dropped-model:{key}:{problem[:100]}",
        )
    return settings


async def claim_size(conn: AsyncConnection[Any], settings: CommentarySettings) -> int:
    """Questions to claim this run. Without token limits: ``batch_size``. With them: what
    the free token budget of the tightest enabled batch model can still take beyond the
    requests already waiting (0 when full: nothing is claimed that could not be sent), up
    to budget.CLAIM_CAP; the batches are then packed up to the budget, not to batch_size.
    With a daily budget, no more than today's money left can pay for (estimated)."""
    routes: list[tuple[str, str, str]] = []
    # Comment models only: a summary request waits for its question's comments, so it is
    # not sendable when claimed and would make a full pipeline look like a full budget.
    # Summaries use the budget as comment batches free it (same packing, same lock).
    summary: list[tuple[str, str, str]] = []
    for key in [*settings.enabled_models, "summary"]:
        try:
            route = settings.route(key)
        except KeyError:
            continue
        if route.mode == "batch":
            (summary if key == "summary" else routes).append((key, route.provider, route.model))
    capacity = await budget.claim_capacity(conn, routes)
    size = settings.batch_size if capacity is None else capacity
    if settings.daily_budget_usd is not None:
        affordable = await budget.affordable_questions(
            conn, settings.daily_budget_usd, resilience.budget_timezone(), routes + summary
        )
        size = min(size, affordable)
    return size


async def claim(
    conn: AsyncConnection[Any], settings: CommentarySettings, limit: int | None = None
) -> tuple[int, int]:
    """Claim up to ``limit`` (default ``batch_size``; see :func:`claim_size`) pending and
    summary-missing questions and create their request rows.

    Pending questions go by the policy's priority and at the depth it allows (schema/0021):
    blocked ones leave the queue; a full-depth claim takes its payer's unit in this
    transaction; each question's requests follow the model set it was claimed with."""
    models = settings.enabled_models
    size = settings.batch_size if limit is None else limit
    if size <= 0:
        cur = await conn.execute(q("drop_disabled_waiting"), {"enabled": models})
        dropped = [r[0] for r in await cur.fetchall()]
        if dropped:
            await conn.execute(q("settle_questions"), {"ids": dropped})
        return 0, 0
    async with conn.transaction():
        cur = await conn.execute(
            q("claim_pending"),
            {
                "delay_minutes": settings.processing_delay_minutes,
                "limit": size,
                "models": models,
                "partial_models": settings.partial_set,
            },
        )
        ids = [r[0] for r in await cur.fetchall() if r[1] == "processing"]
        if ids:
            await conn.execute(q("reset_requests"), {"ids": ids})
            await conn.execute(q("create_claimed_requests"), {"ids": ids})
        left = size - len(ids)
        summary_ids: list[Any] = []
        if left > 0:
            cur = await conn.execute(q("claim_summary_missing"), {"limit": left})
            summary_ids = [r[0] for r in await cur.fetchall()]
            if summary_ids:
                await conn.execute(q("reset_requests"), {"ids": summary_ids})
                await conn.execute(
                    q("create_requests"), {"ids": summary_ids, "models": ["summary"]}
                )
        # A model switched off stops holding up questions already claimed.
        cur = await conn.execute(q("drop_disabled_waiting"), {"enabled": models})
        dropped = [r[0] for r in await cur.fetchall()]
        if dropped:
            await conn.execute(q("settle_questions"), {"ids": dropped})
    return len(ids), len(summary_ids)


async def take(conn: AsyncConnection[Any], model_key: str, limit: int) -> list[WaitingRequest]:
    cur = conn.cursor(row_factory=class_row(WaitingRequest))
    while True:
        await cur.execute(q("take_waiting"), {"model_key": model_key, "limit": limit})
        rows = list(await cur.fetchall())
        # Bad input (issue #5 item 8): questions that cannot be sent fail here, with a
        # reason, and are never sent (worker.commentary.question_input). Take again if none was left.
        good = await question_input.reject_bad_questions(conn, rows, model_key)
        if good or not rows:
            return good
