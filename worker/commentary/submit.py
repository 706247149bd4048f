"""submit: one run claims questions (:mod:`.claim`), then per model with waiting requests
records a batch intent, creates the provider batch exactly once and defers its ``poll``,
or hands instant models to :mod:`.instant`. If more work waits, submit defers itself
again (:mod:`.defer`)."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from worker.commentary import budget, custom_ids, request_check
from worker.commentary.claim import claim, claim_size, load_settings, take
from worker.commentary.defer import defer, defer_poll, delayed_submit_lock
from worker.commentary.instant import submit_instant_model
from worker.commentary.requests import build_requests
from worker.commentary.settings_row import CommentarySettings
from worker.config import get_settings
from worker.errors import ConfigError, ProviderError, WorkerError
from worker.ops import metrics, resilience
from worker.ops.alerts import alert
from worker.ops.error_log import record_error
from worker.providers import idempotent
from worker.providers.base import ChatRequest, SubmittedBatch
from worker.providers.jsonl import chunk_requests, request_line_encoder
from worker.providers.routing import providers
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)


MAX_BATCHES_PER_MODEL_PER_RUN = 20


@dataclass
class SubmitReport:
    claimed: int = 0
    summary_claimed: int = 0
    batches: int = 0
    requests_sent: int = 0
    instant_calls: int = 0
    skipped_models: list[str] | None = None
    more: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v}


async def run_submit(pool: AsyncConnectionPool) -> dict[str, Any]:
    report = SubmitReport()
    async with pool.connection() as conn:
        try:
            settings = await load_settings(conn)
        except ConfigError as exc:
            await record_error(conn, "settings", str(exc), fingerprint="settings:invalid")
            return {"error": redact(str(exc))}
        if not settings.feature_enabled:
            return {"feature_enabled": False}
        if await resilience.budget_exhausted(conn, settings):
            return {"budget_exhausted": True}
        report.claimed, report.summary_claimed = await claim(
            conn, settings, await claim_size(conn, settings)
        )
        cur = await conn.execute(q("waiting_model_keys"))
        model_keys = sorted(r[0] for r in await cur.fetchall())
        wanted = {
            settings.route(k).provider for k in model_keys if k == "summary" or k in settings.models
        }
        blocked = await resilience.blocked_providers(conn, providers=wanted)

    skipped: list[str] = []

    async def one_model(model_key: str) -> None:
        """Send one model's waiting requests. Models run concurrently: while one
        provider uploads or answers, another's requests are being built."""
        try:
            route = settings.route(model_key)
        except KeyError:
            async with pool.connection() as conn:
                await record_error(
                    conn,
                    "settings",
                    f"requests wait for model key {model_key!r}, which "
                    "ai_commentary_settings.models does not define",
                    fingerprint=f"settings:unknown-model:{model_key}",
                )
            skipped.append(model_key)
            return
        if route.provider in blocked:
            skipped.append(model_key)
            return
        try:
            if route.mode == "batch":
                b, n = await submit_batch_model(pool, settings, model_key)
                report.batches += b
                report.requests_sent += n
            else:
                report.instant_calls += await submit_instant_model(pool, settings, model_key)
        except ConfigError as exc:
            async with pool.connection() as conn:
                await record_error(
                    conn,
                    "config",
                    str(exc),
                    provider=route.provider,
                    fingerprint=f"config:{route.provider}",
                )
            skipped.append(model_key)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database connection, not this model: the run fails and is retried
        except Exception as exc:
            # Anything else (a bug, MemoryError): this model is skipped this run, recorded
            # where a person looks; the other models' requests are still sent (issue #11).
            async with pool.connection() as conn:
                await record_error(
                    conn,
                    "submit_error",
                    f"submit of model {model_key!r} ({route.provider}) failed: "
                    f"{type(exc).__name__}: {str(exc)[:500]}",
                    provider=route.provider,
                    detail={"task": "submit", "model_key": model_key},
                    fingerprint=f"submit_error:{model_key}:{type(exc).__name__}",
                )
            skipped.append(model_key)

    await asyncio.gather(*(one_model(k) for k in model_keys))

    report.skipped_models = skipped or None
    async with pool.connection() as conn:
        await _defer_again(conn, settings, report)
    return report.as_dict()


async def submit_batch_model(
    pool: AsyncConnectionPool, settings: CommentarySettings, model_key: str
) -> tuple[int, int]:
    """Send the waiting requests of one batch-mode model as provider batches, packed up to
    the free token budget (worker.commentary.budget), the provider's request/byte limits and what the
    daily budget has left. Requests that do not fit stay waiting, unclaimed; a finished
    batch's poll defers submit again. Returns (batches created, requests sent)."""
    route = settings.route(model_key)
    stage = "summary" if model_key == "summary" else "comment"
    # Chunks are measured on the exact lines the adapter will upload.
    line_size = request_line_encoder(route.provider, route.model)
    batches = sent = 0
    async with pool.connection() as conn:
        async with conn.transaction():
            await budget.calibrate(conn, route.provider, route.model)
    for _ in range(MAX_BATCHES_PER_MODEL_PER_RUN):
        async with pool.connection() as conn:
            async with conn.transaction():
                intents = await _pack_intents(
                    conn, settings, model_key, route.provider, route.model, stage, line_size
                )
                if not intents:
                    return batches, sent
            for i, (job_id, chunk) in enumerate(intents):
                if await create_provider_batch(conn, route.provider, route.model, job_id, chunk):
                    batches += 1
                    sent += len(chunk)
                    continue
                # The provider refused: hand the other intents' requests back at once and
                # stop hammering it this run (the breaker / stop decides about the next).
                for other_id, _ in intents[i + 1 :]:
                    await abandon_intent(
                        conn,
                        other_id,
                        route.provider,
                        RuntimeError("not sent: an earlier batch of this run failed"),
                        notify=False,
                    )
                return batches, sent
    return batches, sent


async def _pack_intents(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    model_key: str,
    provider_name: str,
    model: str,
    stage: str,
    line_size: Any,
) -> list[tuple[uuid.UUID, list[ChatRequest]]]:
    """Inside the caller's transaction: take the waiting requests that fit the budgets,
    record one intent (with its reservation) per provider-sized chunk, mark them submitted."""
    provider = providers().batch(provider_name)
    await budget.lock(conn, provider_name)
    mb = await budget.load(conn, provider_name, model)
    if not mb.may_create_batch:
        return []
    limit = provider.limits.max_requests
    if mb.free_requests is not None:
        limit = min(limit, mb.free_requests)
    free = mb.free_tokens
    if free is not None:
        if free <= 0 and not mb.nothing_in_flight:
            return []
        # Take a little more than should fit (the estimate decides); never the whole queue.
        limit = min(limit, int(free / (0.5 * mb.request_tokens())) + 1)
    money = await budget.money(conn, settings.daily_budget_usd, resilience.budget_timezone())
    per_token: Decimal | None = None
    if money is not None:
        if money.free <= 0:
            return []
        per_token = await budget.cost_per_token(conn, mb)
    if limit <= 0:
        return []
    rows = await take(conn, model_key, limit)
    if not rows:
        return []
    requests = await request_check.build_checked(conn, settings, model_key, rows, build_requests)
    if not requests:
        return []
    raw = [budget.raw_estimate(r) for r in requests]
    estimates = [math.ceil(x * mb.factor) for x in raw]
    packed = budget.pack(
        mb, estimates, raw, money_free=money.free if money else None, cost_per_token=per_token
    )
    if packed.count < len(requests):
        log.info(
            "%s %s: %d of %d waiting requests fit (%s)",
            provider_name,
            model,
            packed.count,
            len(requests),
            packed.reason,
        )
    requests = requests[: packed.count]
    est = {r.custom_id: (estimates[i], raw[i]) for i, r in enumerate(requests)}
    intents: list[tuple[uuid.UUID, list[ChatRequest]]] = []
    for chunk in chunk_requests(requests, line_size, provider.limits):
        if intents and not mb.may_create_batch:
            break  # the rest stays waiting, unclaimed
        job_id = uuid.uuid4()
        qids = [custom_ids.parse(r.custom_id)[0] for r in chunk]
        await conn.execute(
            q("insert_batch_intent"),
            {
                "id": job_id,
                "provider": provider_name,
                "stage": stage,
                "model_key": model_key,
                "model_name": model,
                "question_ids": qids,
                "request_count": len(chunk),
            },
        )
        await budget.record(
            conn,
            mb,
            job_id,
            sum(est[r.custom_id][0] for r in chunk),
            sum(est[r.custom_id][1] for r in chunk),
            len(chunk),
        )
        await conn.execute(
            q("mark_submitted"),
            {
                "owner": str(job_id),
                "batch_job_id": job_id,
                "model_key": model_key,
                "ids": qids,
            },
        )
        intents.append((job_id, chunk))
    return intents


async def create_provider_batch(
    conn: AsyncConnection[Any],
    provider_name: str,
    model: str,
    job_id: uuid.UUID,
    requests: Sequence[ChatRequest],
) -> bool:
    """Create the provider batch for a recorded intent; adopt it if the call failed after
    the provider created it; abandon the intent (requests wait again) otherwise.

    Holds a session advisory lock on the intent so the reconciler never touches an intent
    whose submitter is alive."""
    provider = providers().batch(provider_name)
    lock_key = custom_ids.lock_key(job_id)
    await conn.execute(q("advisory_lock"), (lock_key,))
    try:
        # The reconciler may have abandoned this intent (its requests already wait for
        # another batch) if this worker looked dead for a moment: never create it then.
        cur = await conn.execute(q("intent_state"), (job_id,))
        row = await cur.fetchone()
        if not row or row[0] != "submitting":
            return False
        created_at = row[1]
        try:
            with metrics.timed_call(provider_name, "batch_submit"):
                submitted = await provider.submit(
                    model, requests, intent_id=str(job_id), created_after=created_at
                )
        except (ProviderError, WorkerError, OSError) as exc:
            found = None
            lookup_failed = False
            try:
                found = await provider.find_by_intent(str(job_id), created_at)
            except Exception as find_exc:
                lookup_failed = True
                log.warning("find_by_intent after failed submit: %s", find_exc)
            if found is None and lookup_failed and idempotent.batch_may_exist(exc):
                # The batch may exist and we cannot tell: keep the intent (and its
                # reservation) for the tick's reconciler, which looks again once this lock
                # is free, instead of abandoning a batch the provider may run and bill.
                await record_error(
                    conn,
                    "submit_unresolved",
                    f"batch creation failed ambiguously ({exc}) and the lookup by intent "
                    "failed too; the tick will look again before anything is resubmitted",
                    provider=provider_name,
                    batch_job_id=job_id,
                    fingerprint=f"submit-unresolved:{provider_name}",
                )
                await resilience.on_provider_error(conn, provider_name, exc)
                return False
            if found is None:
                await abandon_intent(conn, job_id, provider_name, exc)
                return False
            submitted = found
        await mark_created(conn, job_id, submitted, get_settings().poll_min_seconds)
        await resilience.on_provider_success(conn, provider_name)
        log.info(
            "batch created",
            extra={
                "batch_job_id": str(job_id),
                "provider": provider_name,
                "batch_id": submitted.batch_id,
                "requests": len(requests),
            },
        )
        return True
    finally:
        await conn.execute(q("advisory_unlock"), (lock_key,))


async def mark_created(
    conn: AsyncConnection[Any], job_id: uuid.UUID, batch: SubmittedBatch, first_poll: float
) -> None:
    """The intent's provider batch exists (created now, or found by the intent id): record
    it and defer its first poll, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            q("batch_created"),
            {
                "id": job_id,
                "batch_id": batch.batch_id,
                "input_file_id": batch.input_file_id,
                "raw_state": batch.raw_state,
                "first_poll": first_poll,
            },
        )
        await defer_poll(conn, job_id, first_poll)


async def abandon_intent(
    conn: AsyncConnection[Any],
    job_id: uuid.UUID,
    provider_name: str,
    exc: BaseException,
    *,
    notify: bool = True,
) -> None:
    kind = exc.kind.value if isinstance(exc, ProviderError) else "submit_error"
    message = redact(f"batch submission failed: {exc}")
    async with conn.transaction():
        await conn.execute(q("batch_abandoned"), {"id": job_id, "error": message[:2000]})
    if not notify:
        return
    await record_error(
        conn,
        kind,
        message,
        provider=provider_name,
        batch_job_id=job_id,
        fingerprint=f"submit:{provider_name}:{kind}",
    )
    if not (isinstance(exc, ProviderError) and exc.kind in resilience.STOP_KINDS):
        # A stop (quota, auth) raises its own critical alert; anything else alerts here.
        await alert(
            conn,
            f"submit:{provider_name}:{kind}",
            f"{provider_name}: batch submission failed ({kind})",
            f"{message}\nThe requests go back to waiting and are retried; see"
            " `python -m worker status` and worker_errors.",
        )
    await resilience.on_provider_error(conn, provider_name, exc)


async def _defer_again(
    conn: AsyncConnection[Any], settings: CommentarySettings, report: SubmitReport
) -> None:
    """Defer the next submit: now if this run was full or left sendable work, later when
    the only pending questions are still inside processing_delay_minutes."""
    cur = await conn.execute(q("has_waiting_work"))
    row = await cur.fetchone()
    waiting = bool(row and row[0])
    progressed = report.claimed or report.summary_claimed or report.batches or report.instant_calls
    cur = await conn.execute(
        q("next_pending_due"), {"delay_minutes": settings.processing_delay_minutes}
    )
    due_row = await cur.fetchone()
    due = due_row[0] if due_row else None
    if (waiting and progressed) or report.claimed >= min(settings.batch_size, budget.CLAIM_CAP):
        report.more = True
        await defer(conn, "submit", "submit")
    elif due is not None:
        # Its own queueing lock: under 'submit' it would swallow every earlier wake-up
        # until it ran (issue #11: hours, for a long processing_delay_minutes).
        await defer(conn, "submit", delayed_submit_lock(due), scheduled_at=due)
    await conn.execute(q("cancel_later_delayed_submits"), {"due": due})
