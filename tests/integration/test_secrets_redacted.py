"""Secrets never stored: a gateway that echoes the API key it received (emulator fault flag
``echo_key``) on the batch lane and on the realtime lane; afterwards the keys appear in no
text column of any table, no alert (recorded or pushed), no log line and not in
``status --json`` / ``status``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import openai
import psycopg
import pytest
from psycopg import sql

from tests.fixtures.pipeline import insert_questions, point_env_at_emulator
from tests.integration import test_alerts
from tests.integration.test_alerts import FakePushover
from tests.integration.test_resilience_pipeline import run_until
from worker.config import get_settings
from worker.emulator import Emulator
from worker.ops import status
from worker.providers.routing import reset_providers
from worker.realtime.drain import reset_clients
from worker.redact import MARK, redact

pushover = test_alerts.pushover
pushover_off = test_alerts.pushover_off

# Keys of every shape: none of the first three matches a generic pattern, so only the
# "configured secrets" rule can catch them (any length, percent-encoded inside URLs).
KEYS = {
    "openai": "Zq7!oa-k3y",
    "mistral": "mi5tral",
    "openrouter": "or/Secret+Key=9",
    "gemini": "AIzaSyD-emulator-gemini-key-0001",
    "deepseek": "sk-deepseek-secret-777",
    "perplexity": "pplx-not-faulted-key",
}


# --------------------------------------------------------------------------- the one step


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for p, k in KEYS.items():
        monkeypatch.setenv(f"{p.upper()}_API_KEY", k)
    get_settings.cache_clear()
    yield KEYS
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "text",
    [
        "invalid key Zq7!oa-k3y given",
        "GET https://gw.example/v1?key=Zq7%21oa-k3y&x=1",
        "url https://gw.example/v1?token=or%2FSecret%2BKey%3D9",
        "form or%2FSecret%2BKey%3D9",
        "Authorization: Bearer mi5tral",
        "key mi5tral in the middle",
    ],
)
def test_configured_keys_are_redacted_in_any_form(keys: dict[str, str], text: str) -> None:
    out = redact(text)
    assert MARK in out
    for k in keys.values():
        assert k not in out
    assert "Zq7%21oa-k3y" not in out and "or%2FSecret%2BKey%3D9" not in out


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Incorrect API key provided: sk-proj-abcdef123456", "abcdef123456"),
        ("key AIzaSyA1234567890abcdefgh was rejected", "AIzaSyA1234567890abcdefgh"),
        ("https://x.example/v1beta/models?key=unknownsecret42&alt=sse", "unknownsecret42"),
        ("curl -H 'Authorization: Bearer tok_live_12345'", "tok_live_12345"),
        ('{"api_key": "plainvalue99"}', "plainvalue99"),
    ],
)
def test_unconfigured_key_shapes_are_redacted(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out and MARK in out


@pytest.mark.parametrize(
    "text",
    [
        "gemini: retryable status=503: The model is overloaded. Please try again later.",
        "openai: auth status=401 code=invalid_api_key: Incorrect API key provided: sk-emu***.",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


def test_log_records_are_redacted_whatever_the_handler(
    keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("worker.test_redaction")
    with caplog.at_level(logging.INFO):
        log.warning("call failed: %s", f"bad key {keys['mistral']}")
        try:
            raise RuntimeError(f"upstream said Bearer {keys['openai']}")
        except RuntimeError:
            log.exception("boom")
    text = caplog.text
    assert "mi5tral" not in text and keys["openai"] not in text
    assert "bad key [REDACTED]" in text and "RuntimeError" in text


def test_emulator_echo_key_fault_echoes_the_key(emulator: Emulator) -> None:
    emulator.configure(
        http_faults=[{"provider": "openai", "kind": "server", "count": 1, "echo_key": True}]
    )
    client = openai.OpenAI(api_key="Zq7!oa-k3y", base_url=emulator.openai_base_url, max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    body = json.dumps(exc.value.body)
    assert body.count("Zq7!oa-k3y") == 3  # plain, Bearer, inside a URL


# --------------------------------------------------------------------------- end to end


def text_columns(db: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    rows = db.execute(
        "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE t.table_type = 'BASE TABLE'"
        "   AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
        "   AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"
        "        OR c.udt_name IN ('_text', '_varchar', '_jsonb'))"
    ).fetchall()
    return [(r["table_schema"], r["table_name"], r["column_name"]) for r in rows]


def leaks(db: psycopg.Connection[Any], secrets: list[str]) -> list[str]:
    found = []
    cols = text_columns(db)
    assert len(cols) > 30  # every worker table is scanned, not an empty list
    for schema, table, column in cols:
        for s in secrets:
            stmt = sql.SQL("SELECT count(*) AS n FROM {}.{} WHERE strpos({}::text, %s) > 0").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
            )
            n = db.execute(stmt, (s,)).fetchone()
            if n and n["n"]:
                found.append(f"{schema}.{table}.{column} holds {s!r} ({n['n']} rows)")
    return found


def test_echoed_keys_reach_no_table_alert_log_or_status(
    db_url: str,
    emulator: Emulator,
    keys: dict[str, str],
    pushover: FakePushover,
    monkeypatch: pytest.MonkeyPatch,
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    point_env_at_emulator(monkeypatch, emulator)
    for p, k in keys.items():  # after the helper, which sets its own test keys
        monkeypatch.setenv(f"{p.upper()}_API_KEY", k)
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    reset_providers()
    reset_clients()
    emulator.configure(state_seconds=0)
    models = {
        "chatgpt": {"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"},
        "gemini": {"provider": "gemini", "model": "gemini-2.5-flash", "mode": "batch"},
        "mistral": {"provider": "mistral", "model": "mistral-small-latest", "mode": "batch"},
    }
    db.execute(
        "UPDATE ai_commentary_settings SET processing_delay_minutes = 0, models = %s,"
        " models_enabled = %s",
        (json.dumps(models), json.dumps(dict.fromkeys(models, True))),
    )
    db.execute(
        "UPDATE ai_realtime_settings SET backoff_base_seconds = 0.05, linger_seconds = 0.1, max_attempts = 3"
    )
    echo = {"count": None, "echo_key": True}
    emulator.configure(
        http_faults=[
            # batch lane: OpenAI rejects the key at batch creation (a provider stop with its
            # reason, an alert, worker_errors), Gemini answers 500 twice, Mistral is out of credit
            {"provider": "openai", "kind": "auth", "path": "/batches", **echo},
            {"provider": "gemini", "kind": "server", **{**echo, "count": 2}},
            {"provider": "mistral", "kind": "quota", **echo},
            # realtime lane: DeepSeek fails every call (jobs fail with the error text),
            # OpenRouter rejects the key (provider stop from the realtime lane)
            {"provider": "deepseek", "kind": "server", **echo},
            {"provider": "openrouter", "kind": "auth", **echo},
        ]
    )
    insert_questions(db, 3)
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('chat', 'deepseek', 'deepseek-chat', 'Frage 1'),"
        " ('chat', 'deepseek', 'deepseek-chat', 'Frage 2'),"
        " ('chat', 'openrouter', 'openai/gpt-4.1-mini', 'Frage 3')"
    )

    def everything_failed_or_stopped() -> bool:
        stops = db.execute("SELECT count(*) AS n FROM provider_stops").fetchone()
        failed = db.execute(
            "SELECT count(*) AS n FROM ai_jobs WHERE provider = 'deepseek' AND status = 'failed'"
        ).fetchone()
        return stops == {"n": 3} and failed == {"n": 2}

    with caplog.at_level(logging.DEBUG):
        assert run_until(everything_failed_or_stopped, timeout=60)
        out = io.StringIO()
        with redirect_stdout(out):
            assert status.main(as_json=True) == 0
            assert status.main(as_json=False) == 0

    # The faults fired and their text went where an operator looks, with the key cut out.
    assert emulator.stats()["openai"]["faults_injected"] >= 1
    assert emulator.stats()["deepseek"]["faults_injected"] >= 2
    reasons = [r["reason"] for r in db.execute("SELECT reason FROM provider_stops").fetchall()]
    assert all(MARK in r for r in reasons), reasons
    failed = db.execute("SELECT error FROM ai_jobs WHERE status = 'failed'").fetchall()
    assert failed and all(MARK in r["error"] for r in failed)
    assert db.execute("SELECT count(*) AS n FROM worker_errors").fetchone()["n"] > 0
    assert db.execute("SELECT count(*) AS n FROM worker_alerts").fetchone()["n"] > 0
    assert pushover.messages

    secrets = [k for p, k in keys.items() if p != "perplexity"]
    encoded = ["Zq7%21oa-k3y", "or%2FSecret%2BKey%3D9"]
    assert leaks(db, secrets + encoded) == []
    pushed = json.dumps(pushover.messages)
    logged = caplog.text + "\n".join(
        str(r.__dict__) for r in caplog.records
    )  # messages, tracebacks and extra fields
    printed = out.getvalue()
    for s in secrets + encoded:
        assert s not in pushed
        assert s not in logged
        assert s not in printed
