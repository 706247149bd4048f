"""Alerts: recorded in ``worker_alerts``, deduplicated, rate-limited, pushed via Pushover.

Policy (so an outage sends a handful of messages, not thousands):

- **Dedup**: an alert carries a ``key`` (e.g. ``breaker:openai``). The first alert of a key
  opens a window of ``ALERT_DEDUP_SECONDS`` (3600); repeats inside it are only counted
  (``worker_alerts.suppressed`` of the alert that was raised). Decided under the row lock of
  the key in ``worker_alert_keys``, so concurrent processes raise it once.
- **Rate limit**: at most ``ALERT_RATE_LIMIT`` (5) messages per ``ALERT_RATE_WINDOW_SECONDS``
  (600) across all processes; further alerts are recorded as ``rate_limited`` and held back,
  never dropped: the next message that goes out carries them as a digest (their titles,
  with the repeats folded into each), and when nothing else goes out the maintenance tick
  sends the digest on its own once the window has room (:func:`flush_held`). Repeats of a
  held-back key inside the dedup window are counted on the held alert, so the digest says
  how often it happened. ``worker_alerts.delivered_with`` names the message that carried a
  held alert. High-priority alerts (priority >= 1: provider stopped for quota/auth, budget)
  are counted but never held back; they are already deduplicated per provider.
- **Delivery**: Pushover (``PUSHOVER_USER_KEY`` + ``PUSHOVER_API_TOKEN``; silently off
  without them: status ``disabled``) over httpx with a short timeout (``ALERT_HTTP_TIMEOUT``,
  5 s). A failing Pushover is recorded (``failed`` + ``delivery_error``) and logged; it never
  raises into the worker.

Every alert is recorded whatever happens to its delivery, so ``SELECT * FROM worker_alerts
ORDER BY id DESC`` is the full history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import httpx
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.config import Settings, get_settings
from worker.ops.error_log import record_error
from worker.queries import q
from worker.redact import redact, redact_opt

log = logging.getLogger(__name__)

TITLE_LIMIT = 250  # Pushover limits
MESSAGE_LIMIT = 1024


class Priority(IntEnum):
    """Pushover priorities (2, "emergency", needs acknowledgement and is not used)."""

    LOW = -1
    NORMAL = 0
    HIGH = 1  # "critical": bypasses the recipient's quiet hours and our rate limit


class Outcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    DISABLED = "disabled"  # Pushover not configured; recorded only
    RATE_LIMITED = "rate_limited"
    DEDUPLICATED = "deduplicated"  # a repeat inside the dedup window; counted only
    ERROR = "error"  # the bookkeeping itself failed (logged)


@dataclass(frozen=True)
class AlertPolicy:
    dedup_seconds: float = 3600.0
    rate_limit: int = 5
    rate_window_seconds: float = 600.0
    http_timeout: float = 5.0

    @classmethod
    def current(cls, settings: Settings | None = None) -> AlertPolicy:
        """The policy of this process (``ALERT_*`` fields of :class:`~worker.config.Settings`)."""
        s = settings or get_settings()
        return cls(
            dedup_seconds=s.alert_dedup_seconds,
            rate_limit=s.alert_rate_limit,
            rate_window_seconds=s.alert_rate_window_seconds,
            http_timeout=s.alert_http_timeout,
        )


def pushover_configured() -> bool:
    s = get_settings()
    return bool(
        s.pushover_user_key
        and s.pushover_api_token
        and s.pushover_user_key.get_secret_value()
        and s.pushover_api_token.get_secret_value()
    )


async def send_pushover(title: str, message: str, priority: int, *, timeout: float) -> str | None:
    """POST one message to Pushover; None on success, else why it failed. Never raises."""
    s = get_settings()
    if s.pushover_user_key is None or s.pushover_api_token is None:
        return "pushover not configured"
    data = {
        "token": s.pushover_api_token.get_secret_value(),
        "user": s.pushover_user_key.get_secret_value(),
        "title": title[:TITLE_LIMIT],
        "message": message[:MESSAGE_LIMIT],
        "priority": str(int(priority)),
    }
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.post(s.pushover_url, data=data)
    except Exception as exc:  # timeouts, refused connections, bad URL: never raise
        return f"{type(exc).__name__}: {exc}"[:500]
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP 200 with a non-JSON body: {resp.text[:200]}"
    if not isinstance(body, dict) or body.get("status") != 1:
        return f"rejected: {str(body)[:300]}"
    return None


async def alert(
    conn: AsyncConnection[Any],
    key: str,
    title: str,
    message: str,
    *,
    priority: Priority = Priority.NORMAL,
    policy: AlertPolicy | None = None,
) -> Outcome:
    """Raise an alert: record it, and push it unless deduplicated or rate-limited.

    ``conn`` may be inside the caller's transaction (the decision runs in a savepoint).
    Never raises (a failure here is logged and reported as ``Outcome.ERROR``)."""
    policy = policy or AlertPolicy.current()
    title, message = redact(title), redact(message)
    try:
        decided = await _decide(conn, key, title, message, int(priority), policy)
    except Exception as exc:
        log.exception("could not record alert %s", key)
        await record_error(
            conn,
            "alert",
            f"could not record alert {key!r} ({title}): {exc}",
            fingerprint="alert:bookkeeping",
        )
        return Outcome.ERROR
    if isinstance(decided, Outcome):
        return decided
    alert_id, text = decided
    error = redact_opt(await send_pushover(title, text, int(priority), timeout=policy.http_timeout))
    outcome = Outcome.SENT if error is None else Outcome.FAILED
    if error is not None:
        log.warning("pushover delivery of alert %s failed: %s", key, error)
    else:
        log.info("alert sent: %s", title, extra={"alert_key": key})
    try:
        async with conn.transaction():
            await conn.execute(
                q("alert_delivered"), {"id": alert_id, "status": outcome.value, "error": error}
            )
    except Exception:
        log.exception("could not record delivery of alert %s", key)
    return outcome


async def _decide(
    conn: AsyncConnection[Any],
    key: str,
    title: str,
    message: str,
    priority: int,
    policy: AlertPolicy,
) -> Outcome | tuple[int, str]:
    """Record the alert. Returns the final outcome, or (alert id, text) when it must be sent."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q("alert_claim_key"), {"key": key, "window": policy.dedup_seconds})
        claim = await cur.fetchone()
        assert claim is not None
        if not claim["fresh"]:
            if claim["last_alert_id"] is not None:
                await conn.execute(q("alert_count_repeat"), {"id": claim["last_alert_id"]})
            log.info("alert %s deduplicated", key)
            return Outcome.DEDUPLICATED
        await conn.execute(q("alert_lock_limiter"))
        await cur.execute(q("alert_recent"), {"window": policy.rate_window_seconds})
        recent = await cur.fetchone()
        assert recent is not None
        over = recent["recent"] >= policy.rate_limit and priority < Priority.HIGH
        text = message
        held: list[dict[str, Any]] = []
        if not over:
            await cur.execute(q("alert_held"))
            held = list(await cur.fetchall())
            if held:
                text = f"{message}\n\n{digest_text(held)}"
        if over:
            status = Outcome.RATE_LIMITED
        elif not pushover_configured():
            status = Outcome.DISABLED
        else:
            status = None
        await cur.execute(
            q("alert_insert"),
            {
                "key": key,
                "title": title[:TITLE_LIMIT],
                "message": text[:4000],
                "priority": priority,
                "status": status.value if status else "pending",
            },
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(q("alert_link_key"), {"id": row["id"], "key": key})
        if held:
            await conn.execute(
                q("alert_carried"), {"by": row["id"], "ids": [h["id"] for h in held]}
            )
    if status is not None:
        log.warning("alert (%s): %s: %s", status.value, title, message)
        return status
    return int(row["id"]), text


DIGEST_LINES = 15


def digest_text(held: list[dict[str, Any]]) -> str:
    """The part of a message that delivers alerts held back by the rate limit."""
    lines = [f"{len(held)} alert(s) held back by the rate limit:"]
    for h in held[:DIGEST_LINES]:
        times = f" (x{1 + int(h['suppressed'])})" if h["suppressed"] else ""
        lines.append(f"- {h['created_at']:%H:%M} {h['title']}{times}")
    if len(held) > DIGEST_LINES:
        lines.append(f"... and {len(held) - DIGEST_LINES} more (worker_alerts)")
    return "\n".join(lines)


async def flush_held(
    conn: AsyncConnection[Any], policy: AlertPolicy | None = None
) -> Outcome | None:
    """Send the digest of held-back alerts when the rate window has room (the maintenance
    tick calls this every minute). None when nothing is held back or there is no room yet.
    Never raises."""
    policy = policy or AlertPolicy.current()
    try:
        async with conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await conn.execute(q("alert_lock_limiter"))
            await cur.execute(q("alert_held"))
            held = list(await cur.fetchall())
            if not held:
                return None
            await cur.execute(q("alert_recent"), {"window": policy.rate_window_seconds})
            recent = await cur.fetchone()
            assert recent is not None
            if recent["recent"] >= policy.rate_limit:
                return None
            title = redact(f"ai-worker: {len(held)} alert(s) held back")
            text = redact(digest_text(held))
            status = None if pushover_configured() else Outcome.DISABLED
            await cur.execute(
                q("alert_insert"),
                {
                    "key": "digest",
                    "title": title[:TITLE_LIMIT],
                    "message": text[:4000],
                    "priority": int(Priority.NORMAL),
                    "status": status.value if status else "pending",
                },
            )
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(
                q("alert_carried"), {"by": row["id"], "ids": [h["id"] for h in held]}
            )
    except Exception:
        log.exception("could not send the digest of held-back alerts")
        return Outcome.ERROR
    if status is not None:
        log.warning("alert digest (%s): %s", status.value, title)
        return status
    error = redact_opt(
        await send_pushover(title, text, int(Priority.NORMAL), timeout=policy.http_timeout)
    )
    outcome = Outcome.SENT if error is None else Outcome.FAILED
    if error is not None:
        log.warning("pushover delivery of the alert digest failed: %s", error)
    try:
        async with conn.transaction():
            await conn.execute(
                q("alert_delivered"), {"id": row["id"], "status": outcome.value, "error": error}
            )
    except Exception:
        log.exception("could not record delivery of the alert digest")
    return outcome
