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


def _seed_operational_state(db: psycopg.Connection[Any]) -> Any:
    """Returns the id of the failed question."""
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
    # An operator's day: alerts (one held back and later carried by a digest), a failed
    # question with its request's reason, a failed realtime job, batches that failed, expired
    # and were cancelled at the provider, and one worker process running four queue workers.
    db.execute(
        "INSERT INTO worker_alerts (dedup_key, title, message, status, created_at) VALUES"
        " ('digest', 'ai-worker: 1 alert(s) held back', 'x', 'sent', now() - interval '1 hour'),"
        " ('k', 'deepseek stopped (quota)', 'x', 'sent', now() - interval '2 hours'),"
        " ('old', 'yesterday''s alert', 'x', 'sent', now() - interval '30 hours')"
    )
    digest = db.execute("SELECT id FROM worker_alerts WHERE dedup_key = 'digest'").fetchone()
    db.execute(
        "INSERT INTO worker_alerts (dedup_key, title, message, status, suppressed,"
        " delivered_with, created_at) VALUES ('task:poll', 'task poll crashed', 'x',"
        " 'rate_limited', 2, %s, now() - interval '90 minutes')",
        (digest["id"] if digest else None,),
    )
    [qid] = insert_questions(db, 1, prefix="Kaputt")
    db.execute("UPDATE questions SET ai_commentary_status = 'failed' WHERE id = %s", (qid,))
    db.execute(
        "INSERT INTO ai_commentary_requests (question_id, model_key, status, last_error)"
        " VALUES (%s, 'mistral', 'failed', 'invalid_request: prompt too long for the model')"
        " ON CONFLICT (question_id, model_key) DO UPDATE SET status = 'failed',"
        " last_error = excluded.last_error, updated_at = now()",
        (qid,),
    )
    db.execute(  # inserted as the app does, then failed as the worker does
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('chat', 'openai', 'gpt-4.1-mini', 'hi')"
    )
    db.execute(
        "UPDATE ai_jobs SET status = 'failed', error_kind = 'content_refused', attempts = 1,"
        " error = 'openai: content_refused status=400: flagged by moderation',"
        " completed_at = now() WHERE input_text = 'hi'"
    )
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, state, status, stage, model_key,"
        " request_count, batch_id, error, finished_at) VALUES"
        " ('openai', 'failed', 'failed', 'comment', 'chatgpt', 12, 'batch_f1',"
        "  'token_limit_exceeded: Enqueued token limit reached', now()),"
        " ('mistral', 'expired', 'TIMEOUT_EXCEEDED', 'comment', 'mistral', 5, 'b-exp',"
        "  'the batch expired', now()),"
        " ('gemini', 'cancelled', 'JOB_STATE_CANCELLED', 'summary', 'summary', 3, 'batches/c1',"
        "  'cancelled by the operator', now())"
    )
    db.execute(
        "INSERT INTO worker_processes (id, hostname, pid, queues) VALUES"
        " ('h:1:1', 'h', 4242, ARRAY['submit', 'poll', 'realtime', 'maintenance'])"
    )
    db.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat) SELECT now() FROM generate_series(1, 4)"
    )
    return qid


def test_status_text_and_json(pipeline: Emulator, db: psycopg.Connection[Any], db_url: str) -> None:
    insert_questions(db, 15)
    assert drain(60) == 0
    qid = _seed_operational_state(db)
    spend = db.execute("SELECT sum(cost_usd) AS c FROM ai_cost_ledger").fetchone()
    assert spend is not None and spend["c"] > 0

    text = _status(db_url)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    print(out)
    assert "Questions      pending 2   processing 0   completed 15   failed 1" in out
    assert "oldest pending" in out
    assert "Batches in flight: 1" in out
    line = next(x for x in out.splitlines() if "batches/abc123" in x)
    assert "gemini" in line and "JOB_STATE_RUNNING" in line and "2h 05m" in line
    # One process running four queue workers is one worker, not four.
    assert "Workers        1 process alive (4 queue workers;" in out
    assert "h pid 4242: submit, poll, realtime, maintenance" in out
    # A stopped provider comes with its reason and the exact statement that resumes it.
    assert "Providers      1 STOPPED; openai breaker OPEN" in out
    assert "deepseek stopped (quota) since" in out and "insufficient balance" in out
    assert """resume with: psql -c "SELECT worker_resume_provider('deepseek');\"""" in out
    # The day: alerts of the last 24 h (not older), how each was delivered.
    assert "Alerts (24 h)  3" in out
    assert "[sent] deepseek stopped (quota)" in out
    assert "[held back, sent in a digest] ×3 task poll crashed" in out
    assert "yesterday's alert" not in out
    # Failed questions with the reason, failed jobs and batches with the provider's reason.
    assert "Failed questions 1" in out
    assert f"{qid}  mistral: invalid_request: prompt too long for the model" in out
    assert "Failed realtime jobs (24 h) 1" in out
    assert "(content_refused, 1 failed calls): openai: content_refused" in out
    failed = out.split("Failed batches (24 h)")[1]
    assert "openai comment chatgpt failed (12 requests, batch_f1): token_limit_exceeded" in failed
    assert "mistral comment mistral expired/TIMEOUT_EXCEEDED" in failed
    assert "the batch expired" in failed
    assert "gemini summary summary cancelled/JOB_STATE_CANCELLED" in failed
    assert f"Spend today    ${float(spend['c']):,.4f}" in out
    assert "OpenRouter     $4.0000 left, $1.5000 used today — warning" in out
    assert "batch_failed/mistral ×3" in out
    assert "batch expired at provider" in out

    js = _status(db_url, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["questions"]["by_status"] == {"completed": 15, "pending": 2, "failed": 1}
    assert data["workers"]["processes"] == 1 and data["workers"]["queue_workers_fresh"] == 4
    assert data["providers"]["stopped"][0]["resume"] == "SELECT worker_resume_provider('deepseek');"
    assert [a["title"] for a in data["alerts_24h"]][-1] == "deepseek stopped (quota)"
    assert data["failed"]["questions"] == 1 and data["failed"]["jobs_24h"] == 1
    assert {b["state"] for b in data["failed"]["batches_24h"]} == {"failed", "expired", "cancelled"}
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
        ("deepseek", "deepseek-chat", "realtime"),
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


def test_status_into_a_closed_pipe_is_quiet(db_url: str) -> None:
    """`status | head`: the reader goes away before status writes; no traceback."""
    env = {**os.environ, "DATABASE_URL": db_url}
    for args in ((), ("--json",)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "status", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `head` exiting before the output arrives
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 0, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err
