"""Provider stops and breakers end to end: the real runner against the emulator, with faults
injected on one provider while the others finish their work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain, insert_questions, status_counts
from tests.fixtures.settings import configure
from tests.integration import test_alerts
from tests.integration.test_alerts import FakePushover
from worker.emulator import Emulator

# The fake Pushover fixtures (Pushover is off unless a test asks for the fake).
pushover = test_alerts.pushover
pushover_off = test_alerts.pushover_off

N = 6


def comments_per_model(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute(
        "SELECT model_key, count(*) AS n FROM ai_answer_comments"
        " WHERE general_comment IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {r["model_key"]: r["n"] for r in rows}


def run_until(condition: Callable[[], bool], timeout: float, slice_seconds: float = 1.5) -> bool:
    """Run the real runner in short slices until ``condition`` holds (the work cannot go
    idle while a provider is stopped: its questions stay in processing)."""
    from worker.queue import runner

    async def go() -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await runner.run_async(timeout=slice_seconds)
            if condition():
                return True
        return False

    return asyncio.run(go())


def test_openai_out_of_credit_stops_only_openai_until_re_enabled(
    pipeline: Emulator, pushover: FakePushover, db: psycopg.Connection[Any]
) -> None:
    insert_questions(db, N)
    pipeline.configure(http_faults=[{"provider": "openai", "kind": "quota", "count": None}])

    others = {"deepseek": N, "gemini": N, "mistral": N, "perplexity": N}

    def others_done_and_openai_stopped() -> bool:
        stopped = db.execute("SELECT count(*) AS n FROM provider_stops").fetchone()
        return comments_per_model(db) == others and stopped == {"n": 1}

    assert run_until(others_done_and_openai_stopped, timeout=40)

    # OpenAI is stopped, recorded with its reason; the others finished their work.
    [stop] = db.execute("SELECT * FROM provider_stops").fetchall()
    assert (stop["provider"], stop["kind"], stop["cleared_at"]) == ("openai", "quota", None)
    assert "insufficient_quota" in stop["reason"]
    assert comments_per_model(db) == others  # no chatgpt comment
    # questions cannot complete without chatgpt; none failed, none lost
    assert status_counts(db) == {"processing": N}
    waiting = db.execute(
        "SELECT model_key, status, count(*) AS n FROM ai_commentary_requests"
        " WHERE model_key = 'chatgpt' GROUP BY 1, 2"
    ).fetchall()
    assert waiting == [{"model_key": "chatgpt", "status": "waiting", "n": N}]
    # exactly one alert, critical, naming the re-enable statement; the feature stays on
    assert len(pushover.messages) == 1, pushover.messages
    [msg] = pushover.messages
    assert "openai stopped (quota)" in msg["title"] and msg["priority"] == "1"
    assert "SELECT worker_resume_provider('openai');" in msg["message"]
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": True
    }
    # after the stop the worker leaves OpenAI alone (a transient-retry loop would hammer it)
    faults = pipeline.stats()["openai"]["faults_injected"]
    assert faults >= 1
    assert run_until(lambda: False, timeout=2) is False  # more runs: still no OpenAI calls
    assert pipeline.stats()["openai"]["faults_injected"] == faults
    assert len(pushover.messages) == 1

    # Re-enable with the documented statement once the account is topped up.
    pipeline.configure(http_faults=[])
    assert db.execute("SELECT worker_resume_provider('openai') AS n").fetchone() == {"n": 1}
    assert drain(60) == 0
    assert status_counts(db) == {"completed": N}
    assert comments_per_model(db) == {"chatgpt": N, **others}
    assert db.execute("SELECT count(*) AS n FROM ai_commentary_summaries").fetchone() == {"n": N}
    assert db.execute(
        "SELECT count(*) AS n FROM provider_stops WHERE cleared_at IS NULL"
    ).fetchone() == {"n": 0}


def test_quota_with_quota_disables_feature_switches_everything_off(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    """The old behaviour, by configuration only: a quota stop also sets feature_enabled."""
    insert_questions(db, 3)
    db.execute("UPDATE ai_commentary_settings SET quota_disables_feature = true")
    pipeline.configure(http_faults=[{"provider": "gemini", "kind": "quota", "count": None}])
    assert drain(30) == 0  # feature off: nothing counts as open work any more
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": False
    }
    assert db.execute("SELECT provider, kind FROM provider_stops").fetchall() == [
        {"provider": "gemini", "kind": "quota"}
    ]


def test_transient_faults_open_the_breaker_not_a_stop(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mistral answering 503 on every call opens its breaker (never a stop, no feature
    switch-off); the other providers finish their work meanwhile."""
    configure(monkeypatch, BREAKER_FAILURE_THRESHOLD="2", BREAKER_COOLDOWN_SECONDS="30")
    insert_questions(db, 4)
    pipeline.configure(http_faults=[{"provider": "mistral", "kind": "unavailable", "count": None}])

    def others_done_and_mistral_open() -> bool:
        row = db.execute("SELECT state FROM provider_health WHERE provider = 'mistral'").fetchone()
        done = comments_per_model(db) == {"chatgpt": 4, "deepseek": 4, "gemini": 4, "perplexity": 4}
        return done and row == {"state": "open"}

    assert run_until(others_done_and_mistral_open, timeout=30)
    assert db.execute("SELECT count(*) AS n FROM provider_stops").fetchone() == {"n": 0}
    h = db.execute("SELECT * FROM provider_health WHERE provider = 'mistral'").fetchone()
    assert h is not None and h["times_opened"] == 1 and h["last_error_kind"] == "retryable"
    alerts = [r["dedup_key"] for r in db.execute("SELECT dedup_key FROM worker_alerts")]
    assert alerts.count("breaker:mistral") == 1 and not any(k.startswith("stop:") for k in alerts)
    assert db.execute("SELECT feature_enabled FROM ai_commentary_settings").fetchone() == {
        "feature_enabled": True
    }
    # while open, the worker leaves Mistral alone
    hits = pipeline.stats()["mistral"]["faults_injected"]
    run_until(lambda: False, timeout=2)
    assert pipeline.stats()["mistral"]["faults_injected"] == hits


def test_breaker_recovers_through_one_probe_after_the_cooldown(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, BREAKER_COOLDOWN_SECONDS="0.5")
    insert_questions(db, 3)
    db.execute(
        "INSERT INTO provider_health (provider, state, consecutive_failures, opened_at)"
        " VALUES ('mistral', 'open', 5, clock_timestamp())"
    )
    db.execute(
        "SELECT worker_defer_job('submit', 'submit', 'submit:probe:mistral', '{}',"
        " clock_timestamp() + interval '0.6 seconds')"
    )
    assert run_until(lambda: status_counts(db) == {"completed": 3}, timeout=10)
    h = db.execute("SELECT state FROM provider_health WHERE provider = 'mistral'").fetchone()
    assert h == {"state": "closed"}
