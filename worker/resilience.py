"""Provider health: stopped providers, circuit breakers, alerts (filled in by resilience)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from worker.settings_row import CommentarySettings


async def blocked_providers(conn: AsyncConnection[Any]) -> set[str]:
    return set()


async def budget_exhausted(conn: AsyncConnection[Any], settings: CommentarySettings) -> bool:
    return False


async def on_provider_error(conn: AsyncConnection[Any], provider: str, exc: BaseException) -> None:
    return None


async def on_provider_success(conn: AsyncConnection[Any], provider: str) -> None:
    return None


async def on_batch_finished(
    conn: AsyncConnection[Any], job: dict[str, Any], status: Any, counts: Any, error: str | None
) -> None:
    return None
