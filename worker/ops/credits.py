"""OpenRouter credit monitor: the hourly ``credit_check`` task.

Reads ``GET {OPENROUTER_BASE_URL}/credits`` (``{"data": {"total_credits": X,
"total_usage": Y}}``), records one row in ``provider_credit_checks`` and raises alerts:

- remaining credit (total_credits - total_usage) below ``OPENROUTER_CREDIT_WARN_USD``
  (default 5): warning; below ``OPENROUTER_CREDIT_CRITICAL_USD`` (default 1): critical
  (high priority). Only the more severe of the two is raised.
- today's usage above ``OPENROUTER_DAILY_USAGE_ALERT_USD`` (default 10; 0 = off).
  Today's usage is the cumulative ``total_usage`` minus the last value recorded before
  today began (or today's first check, for the first day).

An alert of a kind is raised once and then again only after
``OPENROUTER_ALERT_REPEAT_HOURS`` (default 24) — or at once when the balance level gets
worse (warning -> critical); the daily-usage alert at most once per day. Each alert goes to
:func:`worker.ops.alerts.alert` (recorded in ``worker_alerts``, pushed via Pushover when
configured) and is also kept in the check's ``alerts`` column.

Without ``OPENROUTER_API_KEY`` the check is skipped. An unreadable endpoint records a row
with level ``error`` and a ``worker_errors`` entry (kind ``credit_check``); it never raises.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any, LiteralString

import httpx
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.config import Settings, get_settings
from worker.ops.alerts import Priority, alert
from worker.ops.error_log import record_error
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)

PROVIDER = "openrouter"
DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
LEVEL_RANK = {"ok": 0, "warning": 1, "critical": 2}


async def _all(
    conn: AsyncConnection[Any], query: LiteralString, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    # Explicit dict rows: the Procrastinate pool's connections return tuples.
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params or {})
        return list(await cur.fetchall())


async def _maybe_one(
    conn: AsyncConnection[Any], query: LiteralString, params: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    rows = await _all(conn, query, params)
    return rows[0] if rows else None


async def _one(
    conn: AsyncConnection[Any], query: LiteralString, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    row = await _maybe_one(conn, query, params)
    if row is None:
        raise RuntimeError("query returned no row")
    return row


def _dec(v: Any) -> Decimal:
    return Decimal(str(v))


def balance_level(remaining: Decimal, cfg: Settings) -> str:
    if remaining < _dec(cfg.openrouter_credit_critical_usd):
        return "critical"
    if remaining < _dec(cfg.openrouter_credit_warn_usd):
        return "warning"
    return "ok"


async def fetch_credits(base_url: str, api_key: str, timeout: float) -> tuple[Decimal, Decimal]:
    """(total_credits, total_usage) from the OpenRouter credits endpoint."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        resp = await client.get(
            base_url.rstrip("/") + "/credits", headers={"Authorization": f"Bearer {api_key}"}
        )
    if resp.status_code != 200:
        raise RuntimeError(f"GET /credits: HTTP {resp.status_code}: {resp.text[:300]}")
    try:
        data = resp.json()["data"]
        return _dec(data["total_credits"]), _dec(data["total_usage"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"GET /credits: unexpected body {resp.text[:300]!r}") from exc


async def _deliver(conn: AsyncConnection[Any], a: dict[str, Any]) -> str:
    """Hand an alert to worker.ops.alerts; returns its outcome."""
    priority = Priority.HIGH if a["severity"] == "critical" else Priority.NORMAL
    outcome = await alert(
        conn, f"credits:{PROVIDER}:{a['kind']}", a["title"], a["message"], priority=priority
    )
    return str(outcome.value if hasattr(outcome, "value") else outcome)


async def check_credits(conn: AsyncConnection[Any], cfg: Settings | None = None) -> dict[str, Any]:
    """One check on ``conn`` (autocommit); returns what was recorded. The thresholds are the
    ``OPENROUTER_*`` fields of :class:`~worker.config.Settings` (``cfg``, else this process's)."""
    cfg = settings = cfg or get_settings()
    if settings.openrouter_api_key is None or not settings.openrouter_api_key.get_secret_value():
        return {"skipped": "OPENROUTER_API_KEY is not set"}
    base_url = settings.openrouter_base_url or DEFAULT_BASE_URL
    row: dict[str, Any] = {
        "provider": PROVIDER,
        "total_credits": None,
        "total_usage": None,
        "remaining_usd": None,
        "usage_today_usd": None,
        "level": "error",
        "error": None,
    }
    alerts: list[dict[str, Any]] = []
    try:
        total, used = await fetch_credits(
            base_url,
            settings.openrouter_api_key.get_secret_value(),
            cfg.openrouter_credit_timeout_seconds,
        )
    except Exception as exc:
        row["error"] = redact(f"{type(exc).__name__}: {exc}")[:1000]
        await record_error(
            conn,
            "credit_check",
            row["error"],
            provider=PROVIDER,
            fingerprint=f"credit_check:{PROVIDER}:{type(exc).__name__}",
        )
    else:
        remaining = total - used
        row.update(
            total_credits=total,
            total_usage=used,
            remaining_usd=remaining,
            level=balance_level(remaining, cfg),
        )
        day_start = (await _one(conn, q("ops_today_start")))["since"]
        base = await _maybe_one(
            conn, q("ops_credit_usage_baseline"), {"provider": PROVIDER, "day_start": day_start}
        )
        usage_today = used - _dec(base["total_usage"]) if base else Decimal(0)
        row["usage_today_usd"] = max(usage_today, Decimal(0))

        prev_row = await _maybe_one(conn, q("ops_credit_previous_level"), {"provider": PROVIDER})
        prev = prev_row["level"] if prev_row else "ok"
        now = (await _one(conn, q("ops_now")))["now"]
        repeat_since = now - timedelta(hours=cfg.openrouter_alert_repeat_hours)
        recent = {
            r["kind"]
            for r in await _all(
                conn, q("ops_credit_alerted_since"), {"provider": PROVIDER, "since": repeat_since}
            )
        }
        today = {
            r["kind"]
            for r in await _all(
                conn, q("ops_credit_alerted_since"), {"provider": PROVIDER, "since": day_start}
            )
        }

        level = row["level"]
        if level != "ok":
            kind = f"credit_{level}"
            worse = LEVEL_RANK[level] > LEVEL_RANK.get(prev, 0)
            if worse or kind not in recent:
                threshold = (
                    cfg.openrouter_credit_critical_usd
                    if level == "critical"
                    else cfg.openrouter_credit_warn_usd
                )
                alerts.append(
                    {
                        "kind": kind,
                        "severity": level,
                        "title": f"OpenRouter credit {level}: ${remaining:.2f} left",
                        "message": (
                            f"OpenRouter has ${remaining:.2f} of credit left (below "
                            f"${threshold:.2f}); total credits ${total:.2f}, used "
                            f"${used:.2f}. Top up at https://openrouter.ai/settings/credits"
                        ),
                    }
                )
        limit = cfg.openrouter_daily_usage_alert_usd
        if limit and row["usage_today_usd"] > _dec(limit) and "daily_usage" not in today:
            alerts.append(
                {
                    "kind": "daily_usage",
                    "severity": "warning",
                    "title": f"OpenRouter usage today ${row['usage_today_usd']:.2f}",
                    "message": (
                        f"OpenRouter usage today is ${row['usage_today_usd']:.2f}, above "
                        f"the alert threshold of ${limit:.2f}."
                    ),
                }
            )
    for a in alerts:
        a["delivered"] = await _deliver(conn, a)
    async with conn.transaction():
        ins = await _maybe_one(conn, q("ops_credit_insert"), {**row, "alerts": Jsonb(alerts)})
    out = {k: (float(v) if isinstance(v, Decimal) else v) for k, v in row.items()}
    out["alerts"] = [{k: a[k] for k in ("kind", "severity", "delivered")} for a in alerts]
    out["check_id"] = ins["id"] if ins else None
    if alerts:
        log.warning("credit check: %s", "; ".join(a["title"] for a in alerts))
    return out


async def run_credit_check(pool: AsyncConnectionPool) -> dict[str, Any]:
    """The ``credit_check`` task body (hourly)."""
    async with pool.connection() as conn:
        return await check_credits(conn)
