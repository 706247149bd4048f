"""`python -m worker status [--json]` as an operator runs it, after a pipeline run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from typing import Any

import psycopg

from tests.fixtures.pipeline import drain, insert_questions
from worker.emulator import Emulator


def _status(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "worker", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _seed_operational_state(db: psycopg.Connection[Any]) -> None:
    insert_questions(db, 2, prefix="Wartend")  # pending (the worker is not running now)
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, state, status, stage, model_key,"
        " model_name, request_count, poll_count, submitted_at, batch_id) VALUES"
        " ('gemini', 'in_flight', 'JOB_STATE_RUNNING', 'comment', 'gemini', 'gemini-2.5-flash',"
        "  40, 7, now() - interval '2 hours 5 minutes', 'batches/abc123')"
    )
    db.execute(
        "INSERT INTO worker_errors (fingerprint, kind, provider, message, occurrences,"
        " last_seen_at) VALUES ('f1', 'batch_failed', 'mistral', 'batch expired at provider', 3,"
        " now() - interval '5 minutes')"
    )
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason) VALUES"
        " ('deepseek', 'quota', 'insufficient balance')"
    )
    db.execute("INSERT INTO provider_health (provider, state) VALUES ('openai', 'open')")
    db.execute(
        "INSERT INTO provider_credit_checks (total_credits, total_usage, remaining_usd,"
        " usage_today_usd, level) VALUES (10, 6, 4, 1.5, 'warning')"
    )


def test_status_text_and_json(pipeline: Emulator, db: psycopg.Connection[Any], db_url: str) -> None:
    insert_questions(db, 15)
    assert drain(60) == 0
    _seed_operational_state(db)
    spend = db.execute("SELECT sum(cost_usd) AS c FROM ai_cost_ledger").fetchone()
    assert spend is not None and spend["c"] > 0

    text = _status(db_url)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    print(out)
    assert "Questions      pending 2   processing 0   completed 15   failed 0" in out
    assert "oldest pending" in out
    assert "Batches in flight: 1" in out
    line = next(x for x in out.splitlines() if "batches/abc123" in x)
    assert "gemini" in line and "JOB_STATE_RUNNING" in line and "2h 05m" in line
    assert "deepseek STOPPED (insufficient balance" in out
    assert "openai breaker OPEN" in out
    assert f"Spend today    ${float(spend['c']):,.4f}" in out
    assert "OpenRouter     $4.0000 left, $1.5000 used today — warning" in out
    assert "batch_failed/mistral ×3" in out
    assert "batch expired at provider" in out

    js = _status(db_url, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["questions"]["by_status"] == {"completed": 15, "pending": 2}
    assert data["questions"]["oldest_pending_age_seconds"] >= 0
    b = data["batches_in_flight"]
    assert b["total"] == 1
    assert b["oldest"][0]["provider_status"] == "JOB_STATE_RUNNING"
    assert 2 * 3600 < b["oldest"][0]["age_seconds"] < 3 * 3600
    assert [s["provider"] for s in data["providers"]["stopped"]] == ["deepseek"]
    assert [s["provider"] for s in data["providers"]["breakers_open"]] == ["openai"]
    assert abs(Decimal(str(data["spend_today"]["total_usd"])) - spend["c"]) < Decimal("1e-9")
    models = {(r["provider"], r["model"], r["pricing"]) for r in data["spend_today"]["by_model"]}
    assert models == {
        ("openai", "gpt-4.1-mini", "batch"),
        ("gemini", "gemini-2.5-flash", "batch"),
        ("mistral", "mistral-small-latest", "batch"),
        ("perplexity", "sonar", "realtime"),
    }
    assert data["errors"]["last"][0]["kind"] == "batch_failed"
    assert data["openrouter_credits"]["level"] == "warning"
    # The submit job deferred by the pending questions' insert trigger is visible.
    assert data["queue"]["submit"]["by_status"]["todo"] == 1
    assert data["ai_jobs"] is not None  # the realtime lane's table exists (0010)


def test_status_on_an_idle_database(db_url: str) -> None:
    r = _status(db_url)
    assert r.returncode == 0, r.stderr
    assert "Batches in flight: 0" in r.stdout
    assert "Spend today    $0.0000" in r.stdout
    assert "Errors (24 h)  none" in r.stdout


def test_status_when_the_database_is_down() -> None:
    r = _status("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1")
    assert r.returncode == 2
    # a set-up error: one line naming the fix (worker/preflight.py), no traceback
    assert r.stderr.startswith("error: cannot connect to the database at postgres@127.0.0.1:1")
    assert len(r.stderr.strip().splitlines()) == 1 and "start PostgreSQL" in r.stderr
