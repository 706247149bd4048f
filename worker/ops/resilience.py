"""Provider health: stopped providers, circuit breakers, the daily budget, and alerts.

The pipeline calls five hooks (each safe to call inside the caller's transaction: the work
runs in a savepoint, and a failure of this bookkeeping is logged and recorded, never
raised into the pipeline):

- :func:`blocked_providers` - providers submit and poll must leave alone now: stopped
  ones (``provider_stops``), open breakers within their cooldown, and half-open ones whose
  single probe another caller holds. A caller that gets a probe sees the provider unblocked.
- :func:`budget_exhausted` - today's spend reached ``daily_budget_usd``: submit pauses
  (one alert per day) and resumes by itself the next day (``BUDGET_TIMEZONE``, default UTC).
- :func:`on_provider_error` - quota/billing or auth: stop *that* provider only (one row in
  ``provider_stops``, one high-priority alert; quota also sets ``feature_enabled = false``
  when ``quota_disables_feature`` is on). Rate limits, 5xx, timeouts and unknown failures
  count toward the breaker (alert when it opens). Invalid requests, refused content and
  too-long inputs are the request's fault: no breaker count, one (deduplicated) alert.
- :func:`on_provider_success` - closes the breaker.
- :func:`on_batch_finished` - alerts for batches ending failed/expired/cancelled, a
  missing output file or unreadable results, and more than 20% failed lines.

Re-enable a stopped provider with one statement (see schema/0011_resilience.sql)::

    SELECT worker_resume_provider('openai');
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.commentary.rows import BatchJob
from worker.commentary.settings_row import CommentarySettings
from worker.config import get_settings
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.ops import breaker
from worker.ops.alerts import Priority, alert
from worker.ops.error_log import record_error
from worker.providers.base import BatchState
from worker.providers.error_policy import classify
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)

#: Share of failed + missing lines above which a finished batch raises an alert.
FAILED_LINES_ALERT_SHARE = 0.20

STOP_KINDS = {ErrorKind.QUOTA: "quota", ErrorKind.AUTH: "auth"}
RESUME_SQL = "SELECT worker_resume_provider('{provider}');"


def budget_timezone() -> str:
    return get_settings().budget_timezone


async def blocked_providers(
    conn: AsyncConnection[Any],
    *,
    providers: Collection[str] | None = None,
    include_stops: bool = True,
) -> set[str]:
    """Providers to leave alone now. ``providers``: the ones the caller is about to call;
    only their half-open probes are claimed (None: every due probe - a caller that then
    does not call a provider wastes its probe until BREAKER_PROBE_TIMEOUT_SECONDS).
    ``include_stops=False`` (poll): a provider stopped for credit or a bad key stops new
    submissions only; batches already paid for keep being polled and ingested."""
    blocked, _ = await provider_gates(conn, providers=providers, include_stops=include_stops)
    return blocked


async def provider_gates(
    conn: AsyncConnection[Any],
    *,
    providers: Collection[str] | None = None,
    include_stops: bool = True,
) -> tuple[set[str], set[str]]:
    """(providers to leave alone, providers whose one half-open probe this caller just
    took). A caller holding a probe must send exactly one call to that provider until
    its outcome is recorded (or give it back with :func:`breaker.return_probe`)."""
    try:
        async with conn.transaction():
            stopped: set[str] = set()
            if include_stops:
                cur = await conn.execute(q("active_stops"))
                stopped = {r[0] for r in await cur.fetchall()}
            cfg = breaker.BreakerConfig.current()
            blocked, probing = await breaker.blocked(conn, cfg, providers)
            for provider in probing:
                # If the probe goes unused, a submit right after it expires takes it again.
                await conn.execute(
                    q("wake_submit_at"),
                    {
                        "lock": f"submit:probe:{provider}",
                        "delay": float(cfg.probe_timeout_seconds) + 0.1,
                    },
                )
            return stopped | blocked, probing - stopped
    except Exception as exc:
        # Failing open: a broken health table must not stop all work.
        log.exception("could not read provider health")
        await record_error(
            conn,
            "resilience",
            f"could not read provider health: {exc}",
            fingerprint="resilience:blocked",
        )
        return set(), set()


async def budget_exhausted(conn: AsyncConnection[Any], settings: CommentarySettings) -> bool:
    budget = settings.daily_budget_usd
    if budget is None:
        return False
    try:
        async with conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("spent_today_usd"), {"tz": budget_timezone()})
            row = await cur.fetchone()
        spent = Decimal(row["spent"] if row else 0)
        # Money follows the token reservations (worker.commentary.budget): batches in flight count at
        # their estimated cost until ingested, so the budget is overshot by one batch at most.
        reserved = Decimal(row["reserved"] if row else 0)
        if spent + reserved < budget:
            return False
        day = row["day"] if row else None
        message = (
            f"Spent {spent:.4f} USD today ({day}, {budget_timezone()}) and {reserved:.4f} "
            f"USD reserved by batches in flight, daily budget {budget} USD: new submissions "
            "pause (until tomorrow, or until batches in flight cost less than estimated). "
            "Batches already running are still collected. Raise "
            "ai_commentary_settings.daily_budget_usd (or set it to NULL) to resume now."
        )
        await record_error(conn, "budget", message, fingerprint=f"budget:{day}")
        await alert(
            conn,
            f"budget:{day}",
            "AI commentary: daily budget reached",
            message,
            priority=Priority.HIGH,
        )
        return True
    except Exception as exc:
        log.exception("budget check failed")
        await record_error(
            conn, "resilience", f"budget check failed: {exc}", fingerprint="resilience:budget"
        )
        return False


def _as_provider_error(provider: str, exc: BaseException) -> ProviderError | None:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ConfigError):
        return None  # our configuration, recorded by the caller; says nothing of the provider
    return classify(exc, provider) if isinstance(exc, Exception) else None


async def on_provider_error(
    conn: AsyncConnection[Any], provider: str, exc: BaseException, count: int = 1
) -> None:
    """``count``: how many failed calls ``exc`` stands for (the realtime drain reports the
    calls of one flush together); each one counts toward the breaker."""
    try:
        err = _as_provider_error(provider, exc)
        if err is None:
            return
        if err.kind in STOP_KINDS:
            await _stop_provider(conn, provider, err)
        elif breaker.counts_toward_breaker(err.kind):
            await _count_failure(conn, provider, err, count)
        else:
            await alert(
                conn,
                f"request-error:{provider}:{err.kind.value}",
                f"AI commentary: {provider} rejected a request ({err.kind.value})",
                f"{err}\n\nThe request's questions are retried up to max_attempts, then "
                "marked failed; see worker_errors.",
            )
    except Exception as bookkeeping:
        log.exception("provider error bookkeeping failed")
        await record_error(
            conn,
            "resilience",
            f"provider error bookkeeping failed: {bookkeeping}",
            provider=provider,
            fingerprint=f"resilience:error:{provider}",
        )


async def _stop_provider(conn: AsyncConnection[Any], provider: str, err: ProviderError) -> None:
    kind = STOP_KINDS[err.kind]
    reason = redact(str(err))[:2000]
    disabled = False
    async with conn.transaction():
        cur = await conn.execute(
            q("insert_stop"), {"provider": provider, "kind": kind, "reason": reason}
        )
        row = await cur.fetchone()
        if row is None:
            return  # already stopped: no second alert
        stop_id = row[0]
        if err.kind is ErrorKind.QUOTA:
            scur = conn.cursor(row_factory=dict_row)
            await scur.execute(q("read_settings"))
            settings = await scur.fetchone()
            if settings and settings.get("quota_disables_feature"):
                await conn.execute(q("disable_feature"))
                disabled = True
    what = "out of credit / quota" if kind == "quota" else "rejected the API key"
    message = (
        f"{provider} {what}: {reason}\n\n"
        f"Only {provider} is stopped; other providers go on. Its questions wait.\n"
        f"Re-enable after fixing it: {RESUME_SQL.format(provider=provider)}"
    )
    if disabled:
        message += (
            "\nquota_disables_feature is on, so feature_enabled was set to false: "
            "UPDATE ai_commentary_settings SET feature_enabled = true;"
        )
    log.error("provider %s stopped (%s)", provider, kind)
    await record_error(
        conn,
        "provider_stopped",
        message,
        provider=provider,
        fingerprint=f"stop:{provider}:{stop_id}",
    )
    await alert(
        conn,
        f"stop:{provider}:{stop_id}",
        f"AI commentary: {provider} stopped ({kind})",
        message,
        priority=Priority.HIGH,
    )


async def _count_failure(
    conn: AsyncConnection[Any], provider: str, err: ProviderError, count: int = 1
) -> None:
    cfg = breaker.BreakerConfig.current()
    async with conn.transaction():
        health, opened = await breaker.record_failure(
            conn, provider, err.kind, str(err), cfg, count
        )
    if not opened:
        return
    # Nothing else wakes submit when the cooldown ends (a blocked submit does not re-defer).
    async with conn.transaction():
        await conn.execute(
            q("wake_submit_at"),
            {"lock": f"submit:probe:{provider}", "delay": float(cfg.cooldown_seconds) + 0.1},
        )
    log.warning(
        "circuit for %s opened after %d consecutive failures", provider, health.consecutive_failures
    )
    await alert(
        conn,
        f"breaker:{provider}",
        f"AI commentary: {provider} circuit open",
        f"{health.consecutive_failures} consecutive failures; the last: {err}\n\n"
        f"{provider} work waits {cfg.cooldown_seconds:g}s, then one probe call decides; "
        "other providers go on. See provider_health.",
    )


async def on_provider_success(conn: AsyncConnection[Any], provider: str) -> None:
    try:
        async with conn.transaction():
            changed = await breaker.record_success(conn, provider)
        if changed:
            log.info("circuit for %s closed", provider)
    except Exception as exc:
        log.exception("provider success bookkeeping failed")
        await record_error(
            conn,
            "resilience",
            f"provider success bookkeeping failed: {exc}",
            provider=provider,
            fingerprint=f"resilience:success:{provider}",
        )


def _state_of(status: Any) -> BatchState | None:
    state = getattr(status, "state", status)
    try:
        return BatchState(state)
    except ValueError:
        return None


async def on_batch_finished(
    conn: AsyncConnection[Any],
    job: BatchJob,
    status: Any,
    counts: Any,
    error: str | None,
    *,
    reason: str | None = None,
    charged: bool = True,
) -> None:
    """Alerts for a finished batch. ``reason``: the provider's failure reason (it goes into
    the alert text); ``charged``: whether requests without a result spent an attempt."""
    try:
        provider = job.provider
        model = job.model_key or job.stage or "?"
        state = _state_of(status)
        raw = getattr(status, "raw_state", state)
        total = job.request_count or 0
        failed = int(getattr(counts, "failed", 0) or 0)
        missing = int(getattr(counts, "missing", 0) or 0)
        succeeded = int(getattr(counts, "succeeded", 0) or 0)
        summary = (
            f"batch {job.id} ({provider} {getattr(status, 'batch_id', '')}, model "
            f"{model}): {total} requests, {succeeded} succeeded, {failed} failed, "
            f"{missing} missing. Failed and missing requests are retried"
            + ("." if charged else " without spending an attempt.")
        )
        because = f": {reason.rstrip('.')}" if reason else ""
        if state in (BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED):
            await alert(
                conn,
                f"batch-{state.value}:{provider}",
                f"AI commentary: {provider} batch {state.value}",
                f"State {raw}{because}. {summary}",
            )
        elif total and (failed + missing) / total > FAILED_LINES_ALERT_SHARE:
            share = (failed + missing) / total
            await alert(
                conn,
                f"batch-failed-lines:{provider}",
                f"AI commentary: {provider} batch with {share:.0%} failed lines",
                summary,
            )
        if error:
            await alert(
                conn,
                f"batch-error:{provider}",
                f"AI commentary: {provider} batch: {error[:120]}",
                f"{error}\n\n{summary}",
            )
    except Exception as exc:
        log.exception("batch alert bookkeeping failed")
        await record_error(
            conn,
            "resilience",
            f"batch alert bookkeeping failed: {exc}",
            fingerprint="resilience:batch",
        )
