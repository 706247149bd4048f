"""Instant models of the batch lane: claimed requests answered by a chat call each
(bounded concurrency), written through the same ingest path as batch results."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from worker.commentary import custom_ids, ingest, request_check
from worker.commentary.claim import take
from worker.commentary.requests import build_requests
from worker.commentary.settings_row import CommentarySettings
from worker.config import get_settings
from worker.errors import ErrorKind, ProviderError
from worker.ops import metrics, resilience
from worker.providers.base import ChatRequest, ResultLine
from worker.providers.error_policy import Disposition, disposition
from worker.providers.routing import providers
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)


INSTANT_PER_RUN = 200


async def submit_instant_model(
    pool: AsyncConnectionPool, settings: CommentarySettings, model_key: str
) -> int:
    """Call an instant (realtime) model for its waiting requests, bounded concurrency.

    The claim's liveness token is a session advisory lock on the owner id, held on a
    connection of its own while the calls run: the tick releases claims whose lock is free
    (the worker, or its connection, died) — by liveness, never by a clock."""
    owner = f"instant:{os.getpid()}:{uuid.uuid4()}"
    async with pool.connection() as live:
        await live.execute(q("advisory_lock_text"), (owner,))
        try:
            return await _instant_round(pool, settings, model_key, owner)
        finally:
            with contextlib.suppress(Exception):
                await live.execute(q("advisory_unlock_text"), (owner,))


async def _instant_round(
    pool: AsyncConnectionPool, settings: CommentarySettings, model_key: str, owner: str
) -> int:
    route = settings.route(model_key)
    chat = providers().chat(route.provider)
    async with pool.connection() as conn:
        async with conn.transaction():
            rows = await take(conn, model_key, INSTANT_PER_RUN)
            if not rows:
                return 0
            requests = await request_check.build_checked(
                conn, settings, model_key, rows, build_requests
            )
            await conn.execute(
                q("mark_submitted"),
                {
                    "owner": owner,
                    "batch_job_id": None,
                    "model_key": model_key,
                    "ids": [custom_ids.parse(r.custom_id)[0] for r in requests],
                },
            )
    sem = asyncio.Semaphore(get_settings().instant_concurrency)
    # The first out-of-credit / bad-key answer stops the provider (as for batch providers):
    # no further calls this round, and no request is charged an attempt for it.
    stopped: list[ProviderError] = []

    async def call(req: ChatRequest) -> ResultLine:
        async with sem:
            if stopped:
                return ResultLine(
                    custom_id=req.custom_id,
                    ok=False,
                    error_code="provider_stopped",
                    error_message=f"not called: {stopped[0]}",
                    error_kind=stopped[0].kind,
                )
            try:
                with metrics.timed_call(route.provider, "chat"):
                    return await asyncio.wait_for(
                        chat.complete(route.model, req), get_settings().provider_timeout_seconds
                    )
            except TimeoutError:
                return ResultLine(
                    custom_id=req.custom_id,
                    ok=False,
                    error_code="timeout",
                    error_message="instant call timed out",
                    error_kind=ErrorKind.UNKNOWN,
                )
            except ProviderError as exc:
                if disposition(exc.kind) is Disposition.STOP_PROVIDER and not stopped:
                    stopped.append(exc)
                return ResultLine(
                    custom_id=req.custom_id,
                    ok=False,
                    error_code=exc.code or exc.kind.value,
                    error_message=str(exc),
                    error_kind=exc.kind,
                )

    results = await asyncio.gather(*(call(r) for r in requests))
    if any(r.ok for r in results):
        async with pool.connection() as conn:
            await resilience.on_provider_success(conn, route.provider)
    total = len(results)
    called = [r for r in results if r.error_code != "provider_stopped"]
    retryable = [
        r
        for r in called
        if not r.ok and r.error_kind is not None and disposition(r.error_kind) is Disposition.RETRY
    ]
    async with pool.connection() as conn:
        # Transient failures (rate limit, 5xx, connection) and a stopped provider's requests
        # go back to waiting without spending an attempt: neither says anything about them.
        free = [
            r
            for r in results
            if not r.ok
            and r.error_kind is not None
            and (
                r.error_kind is ErrorKind.RETRYABLE
                or disposition(r.error_kind) is Disposition.STOP_PROVIDER
            )
        ]
        if free:
            await conn.execute(
                q("release_claims"),
                {
                    "owner": owner,
                    "ids": [custom_ids.parse(r.custom_id)[0] for r in free],
                    "error": redact(free[0].error_message or "transient provider error")[:2000],
                },
            )
            gone = {id(r) for r in free}
            results = [r for r in results if id(r) not in gone]
        await ingest.ingest_lines(
            conn,
            settings,
            owner=owner,
            model_key=model_key,
            provider=route.provider,
            model_name=route.model,
            batch_job_id=None,
            batch_priced=False,
            lines=_aiter(results),
            missing_reason="instant call returned nothing",
        )
        if stopped:
            await resilience.on_provider_error(conn, route.provider, stopped[0])
        elif retryable and len(retryable) == len(called):
            await resilience.on_provider_error(
                conn,
                route.provider,
                ProviderError(
                    retryable[0].error_message or "failed",
                    kind=ErrorKind.RETRYABLE,
                    provider=route.provider,
                ),
            )
    return total


async def _aiter(items: Sequence[ResultLine]) -> Any:
    for item in items:
        yield item
