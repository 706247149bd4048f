"""poll: check one provider batch; reschedule while it runs, ingest when it ends.

The batch row is locked with ``FOR UPDATE SKIP LOCKED`` for the whole check-and-ingest, so
two pollers never process the same batch (failure mode 1); a second one simply returns.
Every raw provider state is mapped explicitly (worker.providers.states); an unknown state
is never taken for finished (mode 7): polling goes on and the state is recorded.
Waiting does not consume attempts; the delay grows from seconds to minutes.

A terminal batch is ingested whatever its state: cancelled and expired batches keep the
results they have. Requests left without a result spend an attempt only when the batch's
cause is theirs (worker.providers.error_policy.classify_batch_failure: limits, provider errors,
expiry and cancellation are free retries); the provider's reason goes on the batch row
(``failure_cause``, ``failure_reason``), into worker_errors, the alert and the requests'
error. A batch that succeeded with results not readable yet (Gemini without a responses
file, a results file answering 404) is polled again with backoff for
RESULTS_GRACE_SECONDS before its lines count as missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from worker.commentary import budget
from worker.commentary.claim import load_settings
from worker.commentary.defer import defer, defer_poll
from worker.commentary.ingest import IngestCounts, ingest_lines
from worker.commentary.rows import BatchJob
from worker.commentary.settings_row import CommentarySettings
from worker.config import get_settings
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.ops import metrics, resilience
from worker.ops.error_log import record_error
from worker.providers.base import BatchState, BatchStatus, ResultLine
from worker.providers.error_policy import BatchCause, BatchFailure, classify_batch_failure
from worker.providers.routing import providers
from worker.queries import q
from worker.redact import redact, redact_opt

log = logging.getLogger(__name__)
T = TypeVar("T")

FINAL_STATE = {
    BatchState.COMPLETED: "ingested",
    BatchState.FAILED: "failed",
    BatchState.EXPIRED: "expired",
    BatchState.CANCELLED: "cancelled",
}
MISSING_REASON = {
    BatchState.COMPLETED: "missing from the batch output",
    BatchState.FAILED: "the batch failed",
    BatchState.EXPIRED: "the batch expired before this request ran",
    BatchState.CANCELLED: "the batch was cancelled before this request ran",
}


class ResultsUnavailable(Exception):
    """Downloading a finished batch's results failed transiently."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


class ResultsNotReady(Exception):
    """A batch reported success but its results cannot be read (yet): no results file
    named, or the file answers 404. Polled again within RESULTS_GRACE_SECONDS."""


def next_delay(poll_count: int) -> float:
    """Seconds until the next poll: doubling from POLL_MIN_SECONDS up to POLL_MAX_SECONDS."""
    s = get_settings()
    return float(min(s.poll_max_seconds, s.poll_min_seconds * (2 ** min(poll_count, 20))))


async def run_poll(pool: AsyncConnectionPool, batch_job_id: str) -> dict[str, Any]:
    async with pool.connection() as conn:
        try:
            settings = await load_settings(conn)
        except ConfigError as exc:
            await record_error(conn, "settings", str(exc), fingerprint="settings:invalid")
            await defer_poll(conn, batch_job_id, 60)
            return {"error": redact(str(exc))}
        async with conn.transaction():
            cur = conn.cursor(row_factory=class_row(BatchJob))
            await cur.execute(q("lock_batch"), {"id": batch_job_id})
            job = await cur.fetchone()
            if job is None:
                return {"skipped": "locked by another poller or unknown"}
            if job.state != "in_flight":
                return {"skipped": f"state {job.state}"}
            if job.batch_id is None or job.model_key is None or job.model_name is None:
                # In flight but never created at the provider (edited by hand?): nothing to
                # poll; recorded where a person looks, and the tick's reconciler decides.
                await record_error(
                    conn,
                    "poll",
                    f"batch {job.id} is in flight without a provider batch id or model",
                    provider=job.provider,
                    batch_job_id=job.id,
                    fingerprint=f"poll:incomplete:{job.id}",
                )
                return {"skipped": "in flight without a provider batch id or model"}
            batch_id = job.batch_id
            if job.provider in await resilience.blocked_providers(
                conn, providers=[job.provider], include_stops=False
            ):
                await conn.execute(
                    q("batch_still_running"),
                    {"id": batch_job_id, "raw_state": job.status, "delay": 60},
                )
                await defer_poll(conn, batch_job_id, 60)
                return {"waiting": "provider blocked"}
            provider = providers().batch(job.provider)
            try:
                with metrics.timed_call(job.provider, "batch_status"):
                    status = await provider.status(batch_id)
            except ProviderError as exc:
                if exc.status_code == 404:
                    lost = await budget.resolve_lost(conn, job, exc)
                    if lost is not None:
                        return lost
                delay = max(next_delay(job.poll_count), exc.retry_after or 0)
                await conn.execute(
                    q("batch_still_running"),
                    {"id": batch_job_id, "raw_state": job.status, "delay": delay},
                )
                await defer_poll(conn, batch_job_id, delay)
                await resilience.on_provider_error(conn, job.provider, exc)
                await record_error(
                    conn,
                    exc.kind.value,
                    f"polling batch failed: {exc}",
                    provider=job.provider,
                    batch_job_id=batch_job_id,
                    fingerprint=f"poll:{job.provider}:{exc.kind.value}",
                )
                return {"poll_error": str(exc)}
            await resilience.on_provider_success(conn, job.provider)
            if not status.state.terminal:
                delay = next_delay(job.poll_count)
                await conn.execute(
                    q("batch_still_running"),
                    {"id": batch_job_id, "raw_state": status.raw_state, "delay": delay},
                )
                await defer_poll(conn, batch_job_id, delay)
                if status.state is BatchState.UNKNOWN:
                    await record_error(
                        conn,
                        "unknown_batch_state",
                        f"provider state {status.raw_state!r} is not known; still polling",
                        provider=job.provider,
                        batch_job_id=batch_job_id,
                        fingerprint=f"unknown-state:{job.provider}:{status.raw_state}",
                    )
                return {"state": status.raw_state, "next_poll_in": delay}
            late: str | None = None
            if (
                status.state is BatchState.COMPLETED
                and job.provider == "gemini"
                and (not status.output_file_id and not status.inline_results)
            ):
                waited = await results_pending(conn, job, status.raw_state)
                if waited is None:
                    return {"state": status.raw_state, "results": "not readable yet"}
                late = f"the batch succeeded but named no results file for {waited:.0f}s"
            try:
                try:
                    counts = await finish(conn, settings, job, status, late=late)
                except ResultsNotReady as exc:
                    waited = await results_pending(conn, job, status.raw_state)
                    if waited is None:
                        return {"state": status.raw_state, "results": "not readable yet"}
                    late = f"results not readable for {waited:.0f}s: {exc}"
                    counts = await finish(conn, settings, job, status, late=late)
            except ResultsUnavailable as exc:
                # A transient error while downloading results: nothing of this batch was
                # written (ingest's savepoint rolled back) and the provider keeps the file,
                # so read it again later. Counting its lines as missing would re-send them
                # in a new batch: paid twice.
                delay = max(next_delay(job.poll_count), exc.error.retry_after or 0)
                await conn.execute(
                    q("batch_still_running"),
                    {"id": batch_job_id, "raw_state": status.raw_state, "delay": delay},
                )
                await defer_poll(conn, batch_job_id, delay)
                await resilience.on_provider_error(conn, job.provider, exc.error)
                await record_error(
                    conn,
                    exc.error.kind.value,
                    f"reading results failed, retrying: {exc.error}",
                    provider=job.provider,
                    batch_job_id=batch_job_id,
                    fingerprint=f"results:{job.provider}:{exc.error.kind.value}",
                )
                return {"results_error": str(exc.error), "next_poll_in": delay}
        # Requests that went back to waiting (or summaries now ready) need a submit.
        await defer(conn, "submit", "submit")
    return {"state": status.raw_state, **counts.as_dict()}


@contextlib.asynccontextmanager
async def closing(it: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator on exit (``contextlib.aclosing`` for any async iterator)."""
    try:
        yield it
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def results_pending(
    conn: AsyncConnection[Any], job: BatchJob, raw_state: str
) -> float | None:
    """A finished batch whose results are not readable yet: poll it again with backoff and
    return None, or - once RESULTS_GRACE_SECONDS have passed since this was first seen -
    return how long it waited (the caller then ingests what there is)."""
    delay = next_delay(job.poll_count)
    cur = await conn.execute(
        q("batch_results_pending"), {"id": job.id, "raw_state": raw_state, "delay": delay}
    )
    row = await cur.fetchone()
    waited = float(row[0]) if row and row[0] is not None else 0.0
    if waited >= get_settings().results_grace_seconds:
        return waited
    await defer_poll(conn, job.id, delay)
    log.info(
        "batch results not readable yet",
        extra={"batch_job_id": str(job.id), "waited": waited, "next_poll_in": delay},
    )
    return None


async def finish(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    job: BatchJob,
    status: BatchStatus,
    late: str | None = None,
) -> IngestCounts:
    """Ingest a terminal batch: whatever results exist (cancelled and expired batches
    included), then everything else as missing - charged an attempt only when the batch's
    cause is the requests' (worker.providers.error_policy.classify_batch_failure).

    ``late``: the results stayed unreadable past the grace period (why); the lines not read
    are then missing without an attempt spent, and the batch row says why. Without it, an
    output file that answers 404 raises :class:`ResultsNotReady` (the caller waits)."""
    if job.model_key is None or job.model_name is None:
        raise ValueError(f"batch {job.id} has no model (run_poll skips such rows)")
    provider = providers().batch(job.provider)
    error: str | None = late

    async def lines() -> AsyncIterator[ResultLine]:
        nonlocal error
        try:
            # aclosing: when ingest stops early (an error, a cancelled job) the provider's
            # generator is closed now, so its downloaded temp file is deleted now rather
            # than whenever (if ever) the garbage collector finalises it.
            async with closing(provider.results(status)) as results:
                async for line in results:
                    yield line
        except ProviderError as exc:
            if exc.kind is ErrorKind.RETRYABLE:
                raise ResultsUnavailable(exc) from exc  # retried by run_poll
            if exc.status_code == 404:
                if late is None:
                    raise ResultsNotReady(str(exc)) from exc  # maybe not written yet
                # Expired or deleted at the provider: paid for, gone. Not the requests'
                # fault: they go back to waiting without an attempt, and it is recorded.
                error = f"results file gone at the provider (expired or deleted): {exc}"
                return
            # A permanent download failure is not lost work: the lines not read count as
            # missing (retried), and the error is recorded (failure mode 12).
            error = f"reading results failed: {exc}"

    failure = classify_batch_failure(
        job.provider, status.state.value, status.failure_code, status.failure_message
    )
    missing_reason = MISSING_REASON[status.state]
    if failure.reason:
        missing_reason += f" ({failure.reason})"
    charge_missing = failure.charges_attempts
    if late is not None:
        failure = BatchFailure(BatchCause.PROVIDER, redact(late))
        missing_reason = f"{MISSING_REASON[status.state]} ({failure.reason})"
        charge_missing = False
    async with closing(lines()) as result_lines:
        counts = await ingest_lines(
            conn,
            settings,
            owner=str(job.id),
            model_key=job.model_key,
            provider=job.provider,
            model_name=job.model_name,
            batch_job_id=job.id,
            batch_priced=True,
            lines=result_lines,
            missing_reason=missing_reason[:2000],
            charge_missing=charge_missing,
        )
    if (
        status.state is BatchState.COMPLETED
        and not status.output_file_id
        and not status.error_file_id
        and not status.inline_results
    ):
        error = error or "completed batch has no output file"
    await record_failure(conn, job, status, failure, counts)
    await conn.execute(
        q("batch_finished"),
        {
            "id": job.id,
            "raw_state": status.raw_state,
            "state": FINAL_STATE[status.state],
            "output_file_id": status.output_file_id,
            "error_file_id": status.error_file_id,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "missing": counts.missing,
            "input_tokens": counts.input_tokens,
            "output_tokens": counts.output_tokens,
            "error": redact_opt(error),
        },
    )
    await resilience.on_batch_finished(
        conn,
        job,
        status,
        counts,
        error,
        reason=failure.reason,
        charged=failure.charges_attempts,
    )
    log.info(
        "batch finished",
        extra={"batch_job_id": str(job.id), "state": status.raw_state, **counts.as_dict()},
    )
    return counts


async def record_failure(
    conn: AsyncConnection[Any],
    job: BatchJob,
    status: BatchStatus,
    failure: BatchFailure,
    counts: IngestCounts,
) -> None:
    """Store a batch-level failure's cause and reason on the batch row and in worker_errors;
    a provider-side failure also counts toward the provider's breaker (back off)."""
    if failure.cause is None:
        return
    await conn.execute(
        q("batch_failure"),
        {"id": job.id, "cause": failure.cause, "reason": failure.reason},
    )
    charged = "spent an attempt" if failure.charges_attempts else "did not spend an attempt"
    await record_error(
        conn,
        f"batch_{failure.cause}",
        f"batch {status.batch_id} ended {status.raw_state} ({failure.cause}): "
        f"{(failure.reason or 'no reason given').rstrip('.')}; {counts.missing} requests "
        "without a result "
        f"went back to waiting and {charged}",
        provider=job.provider,
        batch_job_id=job.id,
        fingerprint=f"batch-{failure.cause}:{job.provider}:{status.failure_code or ''}",
    )
    if failure.cause == BatchCause.LIMIT:
        # The provider's queue was fuller than the budget table said: learn a smaller one.
        await budget.on_token_limit_failure(conn, job, failure.reason or "limit")
    if failure.cause == BatchCause.PROVIDER:
        await resilience.on_provider_error(
            conn,
            job.provider,
            ProviderError(
                failure.reason or "batch failed at the provider",
                kind=ErrorKind.RETRYABLE,
                provider=job.provider,
                code=status.failure_code,
            ),
        )
