"""The OpenRouter credit monitor against the emulator's /credits endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.settings import configure
from worker.config import get_settings
from worker.emulator import Emulator
from worker.ops import credits


@pytest.fixture
def openrouter(
    db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Emulator]:
    point_env_at_emulator(monkeypatch, emulator)
    for name in ("PUSHOVER_USER_KEY", "PUSHOVER_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # Thresholds under test; the daily-usage alert is tested on its own.
    monkeypatch.setenv("OPENROUTER_DAILY_USAGE_ALERT_USD", "1000")
    get_settings.cache_clear()
    yield emulator
    get_settings.cache_clear()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    # Like the Procrastinate pool: autocommit, tuple rows.
    p = AsyncConnectionPool(db_url, kwargs={"autocommit": True}, min_size=1, max_size=2, open=False)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


def _alerts(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT dedup_key, priority, status, title FROM worker_alerts"
        " WHERE dedup_key LIKE 'credits:%%' ORDER BY id"
    ).fetchall()


async def test_alerts_at_warning_and_critical_thresholds(
    openrouter: Emulator, pool: AsyncConnectionPool, db: psycopg.Connection[Any]
) -> None:
    openrouter.configure(openrouter_total_credits=100.0, openrouter_total_usage=10.0)
    out = await credits.run_credit_check(pool)
    assert out["level"] == "ok" and out["remaining_usd"] == 90.0 and out["alerts"] == []

    openrouter.configure(openrouter_total_usage=95.5)  # $4.50 left: below $5
    out = await credits.run_credit_check(pool)
    assert out["level"] == "warning"
    assert [a["kind"] for a in out["alerts"]] == ["credit_warning"]
    # Pushover is not configured: recorded by worker.ops.alerts as 'disabled'.
    assert out["alerts"][0]["delivered"] == "disabled"
    assert _alerts(db) == [
        {
            "dedup_key": "credits:openrouter:credit_warning",
            "priority": 0,
            "status": "disabled",
            "title": "OpenRouter credit warning: $4.50 left",
        }
    ]

    # The next hourly check at the same level does not repeat the alert.
    out = await credits.run_credit_check(pool)
    assert out["level"] == "warning" and out["alerts"] == []

    openrouter.configure(openrouter_total_usage=99.25)  # $0.75 left: below $1
    out = await credits.run_credit_check(pool)
    assert out["level"] == "critical"
    assert [a["kind"] for a in out["alerts"]] == ["credit_critical"]
    alerts = _alerts(db)
    assert len(alerts) == 2
    assert alerts[1]["dedup_key"] == "credits:openrouter:credit_critical"
    assert alerts[1]["priority"] == 1  # high priority

    rows = db.execute(
        "SELECT level, remaining_usd, jsonb_array_length(alerts) AS n"
        " FROM provider_credit_checks ORDER BY id"
    ).fetchall()
    assert [(r["level"], float(r["remaining_usd"]), r["n"]) for r in rows] == [
        ("ok", 90.0, 0),
        ("warning", 4.5, 1),
        ("warning", 4.5, 0),
        ("critical", 0.75, 1),
    ]

    # Topped up: back to ok, and a later drop alerts again.
    openrouter.configure(openrouter_total_credits=200.0)
    assert (await credits.run_credit_check(pool))["level"] == "ok"
    openrouter.configure(openrouter_total_credits=104.0)  # $4.75 left
    out = await credits.run_credit_check(pool)
    # A new drop is raised again; worker.ops.alerts folds it into the alert of an hour ago.
    assert out["alerts"] == [
        {"kind": "credit_warning", "severity": "warning", "delivered": "deduplicated"}
    ]
    assert len(_alerts(db)) == 2


async def test_thresholds_are_configurable(
    openrouter: Emulator,
    pool: AsyncConnectionPool,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(
        monkeypatch,
        OPENROUTER_CREDIT_WARN_USD="50",
        OPENROUTER_CREDIT_CRITICAL_USD="20",
        OPENROUTER_ALERT_REPEAT_HOURS="0",  # every check alerts
    )
    openrouter.configure(openrouter_total_credits=100.0, openrouter_total_usage=60.0)
    assert [a["kind"] for a in (await credits.run_credit_check(pool))["alerts"]] == [
        "credit_warning"
    ]
    assert [a["kind"] for a in (await credits.run_credit_check(pool))["alerts"]] == [
        "credit_warning"
    ]
    openrouter.configure(openrouter_total_usage=85.0)
    out = await credits.run_credit_check(pool)
    assert out["level"] == "critical" and [a["kind"] for a in out["alerts"]] == ["credit_critical"]


async def test_daily_usage_alert(
    openrouter: Emulator,
    pool: AsyncConnectionPool,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, OPENROUTER_DAILY_USAGE_ALERT_USD="2.5")
    # Yesterday's last check left the cumulative usage at $10.
    db.execute(
        "INSERT INTO provider_credit_checks (checked_at, total_credits, total_usage,"
        " remaining_usd, level) VALUES (current_date::timestamptz - interval '1 hour',"
        " 100, 10, 90, 'ok')"
    )
    openrouter.configure(openrouter_total_credits=100.0, openrouter_total_usage=12.0)
    out = await credits.run_credit_check(pool)
    assert out["usage_today_usd"] == 2.0 and out["alerts"] == []

    openrouter.configure(openrouter_total_usage=13.0)
    out = await credits.run_credit_check(pool)
    assert out["usage_today_usd"] == 3.0
    assert [a["kind"] for a in out["alerts"]] == ["daily_usage"]
    assert _alerts(db)[0]["dedup_key"] == "credits:openrouter:daily_usage"

    openrouter.configure(openrouter_total_usage=20.0)  # once per day
    out = await credits.run_credit_check(pool)
    assert out["usage_today_usd"] == 10.0 and out["alerts"] == []


async def test_unreadable_endpoint_is_recorded_not_raised(
    openrouter: Emulator,
    pool: AsyncConnectionPool,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_BASE_URL", openrouter.base_url + "/nowhere/v1")
    get_settings.cache_clear()
    out = await credits.run_credit_check(pool)
    assert out["level"] == "error" and "HTTP 404" in out["error"]
    err = db.execute("SELECT kind, provider FROM worker_errors").fetchall()
    assert err == [{"kind": "credit_check", "provider": "openrouter"}]
    assert db.execute("SELECT level FROM provider_credit_checks").fetchall() == [{"level": "error"}]


async def test_without_api_key_the_check_is_skipped(
    openrouter: Emulator,
    pool: AsyncConnectionPool,
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY")
    monkeypatch.setattr(
        "worker.config.Settings.model_config", {**get_settings().model_config, "env_file": None}
    )
    get_settings.cache_clear()
    assert "skipped" in await credits.run_credit_check(pool)
    assert db.execute("SELECT count(*) AS n FROM provider_credit_checks").fetchone() == {"n": 0}
