"""submit: claim pending questions and send their requests to the providers.

One run: read the settings row; claim up to ``batch_size`` pending questions (and
summary-missing ones) in one atomic statement; create one request row per question and
enabled model (plus the summary); then, per model with waiting requests, record a batch
intent, create the provider batch, and defer its ``poll`` — or, for instant models, call
them with bounded concurrency and ingest the answers through the same write path. If more
work waits, submit defers itself again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.commentary import budget, custom_ids, ingest, prompts, question_input, request_check
from worker.commentary.schemas import COMMENTARY_SCHEMA, COMMENTARY_SCHEMA_FOUR, SUMMARY_SCHEMA
from worker.commentary.settings_row import CommentarySettings, parse_settings
from worker.config import get_settings
from worker.errors import ConfigError, ErrorKind, ProviderError, WorkerError
from worker.ops import metrics
from worker.ops.error_log import record_error
from worker.providers import idempotent
from worker.providers.base import ChatRequest, ResultLine
from worker.providers.error_policy import Disposition, disposition
from worker.providers.jsonl import chunk_requests, request_line_encoder
from worker.providers.routing import providers
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)

MAX_BATCHES_PER_MODEL_PER_RUN = 20
INSTANT_PER_RUN = 200


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


async def defer(
    conn: AsyncConnection[Any],
    task: str,
    lock: str,
    args: dict[str, Any] | None = None,
    scheduled_at: datetime | None = None,
    queue: str | None = None,
) -> None:
    await conn.execute(
        q("defer_job"),
        {
            "queue": queue or task,
            "task": task,
            "lock": lock,
            "args": Jsonb(args or {}),
            "scheduled_at": scheduled_at,
        },
    )


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


def _question(row: dict[str, Any]) -> prompts.QuestionText:
    # Bad input (issue #5 item 8): text is cleaned before it is sent, and an official
    # answer outside A-E goes to the summary as unknown (worker.commentary.question_input).
    clean = question_input.clean_text
    return prompts.QuestionText(
        question=clean(row["question"]),
        option_a=clean(row["option_a"]),
        option_b=clean(row["option_b"]),
        option_c=clean(row["option_c"]),
        option_d=clean(row["option_d"]),
        option_e=clean(row["option_e"]),
        subject=clean(row["subject"]) or None,
        correct_answer=question_input.official_answer(row),
    )


async def build_requests(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    model_key: str,
    rows: Sequence[dict[str, Any]],
) -> list[ChatRequest]:
    """The chat requests for ``rows`` (questions) of ``model_key`` (or the summary)."""
    if model_key == "summary":
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q("comments_for_summary"), {"ids": [r["question_id"] for r in rows]})
        by_q: dict[Any, dict[str, dict[str, Any]]] = {}
        for c in await cur.fetchall():
            by_q.setdefault(c["question_id"], {})[c["model_key"]] = c
        return [
            ChatRequest(
                custom_id=custom_ids.make(r["question_id"], "summary"),
                system_prompt=prompts.SUMMARY_SYSTEM_DE_V1,
                user_prompt=prompts.summary_prompt(_question(r), by_q.get(r["question_id"], {})),
                schema_name="summary",
                json_schema=SUMMARY_SCHEMA,
            )
            for r in rows
        ]
    out = []
    for r in rows:
        question = _question(r)
        out.append(
            ChatRequest(
                custom_id=custom_ids.make(r["question_id"], model_key),
                system_prompt=prompts.system_prompt(question, settings.system_prompt),
                user_prompt=prompts.user_prompt(question, settings.user_prompt_template),
                schema_name="commentary",
                json_schema=COMMENTARY_SCHEMA
                if question.letters == "ABCDE"
                else COMMENTARY_SCHEMA_FOUR,
            )
        )
    return out


async def _take(conn: AsyncConnection[Any], model_key: str, limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    while True:
        await cur.execute(q("take_waiting"), {"model_key": model_key, "limit": limit})
        rows = list(await cur.fetchall())
        # Bad input (issue #5 item 8): questions that cannot be sent fail here, with a
        # reason, and are never sent (worker.commentary.question_input). Take again if none was left.
        good = await question_input.reject_bad_questions(conn, rows, model_key)
        if good or not rows:
            return good


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
    from worker.ops import resilience

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
    rows = await _take(conn, model_key, limit)
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
    await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
    try:
        # The reconciler may have abandoned this intent (its requests already wait for
        # another batch) if this worker looked dead for a moment: never create it then.
        cur = await conn.execute(
            "SELECT state, created_at FROM ai_commentary_batch_jobs WHERE id = %s", (job_id,)
        )
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
                from worker.ops import resilience

                await resilience.on_provider_error(conn, provider_name, exc)
                return False
            if found is None:
                await abandon_intent(conn, job_id, provider_name, exc)
                return False
            submitted = found
        async with conn.transaction():
            await conn.execute(
                q("batch_created"),
                {
                    "id": job_id,
                    "batch_id": submitted.batch_id,
                    "input_file_id": submitted.input_file_id,
                    "raw_state": submitted.raw_state,
                    "first_poll": get_settings().poll_min_seconds,
                },
            )
            await defer_poll(conn, job_id, get_settings().poll_min_seconds)
        from worker.ops import resilience

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
        await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))


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
    from worker.ops import resilience

    if not (isinstance(exc, ProviderError) and exc.kind in resilience.STOP_KINDS):
        # A stop (quota, auth) raises its own critical alert; anything else alerts here.
        from worker.ops.alerts import alert

        await alert(
            conn,
            f"submit:{provider_name}:{kind}",
            f"{provider_name}: batch submission failed ({kind})",
            f"{message}\nThe requests go back to waiting and are retried; see"
            " `python -m worker status` and worker_errors.",
        )
    await resilience.on_provider_error(conn, provider_name, exc)


async def defer_poll(conn: AsyncConnection[Any], job_id: uuid.UUID | str, delay: float) -> None:
    from datetime import UTC, timedelta

    await defer(
        conn,
        "poll",
        f"poll:{job_id}",
        {"batch_job_id": str(job_id)},
        scheduled_at=datetime.now(UTC) + timedelta(seconds=delay),
    )


async def submit_instant_model(
    pool: AsyncConnectionPool, settings: CommentarySettings, model_key: str
) -> int:
    """Call an instant (realtime) model for its waiting requests, bounded concurrency.

    The claim's liveness token is a session advisory lock on the owner id, held on a
    connection of its own while the calls run: the tick releases claims whose lock is free
    (the worker, or its connection, died) — by liveness, never by a clock."""
    owner = f"instant:{os.getpid()}:{uuid.uuid4()}"
    async with pool.connection() as live:
        await live.execute("SELECT pg_advisory_lock(hashtext(%s))", (owner,))
        try:
            return await _instant_round(pool, settings, model_key, owner)
        finally:
            with contextlib.suppress(Exception):
                await live.execute("SELECT pg_advisory_unlock(hashtext(%s))", (owner,))


async def _instant_round(
    pool: AsyncConnectionPool, settings: CommentarySettings, model_key: str, owner: str
) -> int:
    route = settings.route(model_key)
    chat = providers().chat(route.provider)
    async with pool.connection() as conn:
        async with conn.transaction():
            rows = await _take(conn, model_key, INSTANT_PER_RUN)
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
            from worker.ops import resilience

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
        from worker.ops import resilience

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
        from worker.ops import resilience

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
        from worker.ops import resilience

        affordable = await budget.affordable_questions(
            conn, settings.daily_budget_usd, resilience.budget_timezone(), routes + summary
        )
        size = min(size, affordable)
    return size


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


def delayed_submit_lock(due: datetime) -> str:
    return f"submit-delayed@{int(due.timestamp())}"
