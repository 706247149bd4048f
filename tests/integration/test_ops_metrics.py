"""/metrics, /health and /ready over real HTTP against a real database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.fixtures.pipeline import drain, insert_questions
from worker import metrics
from worker.emulator import Emulator

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>[-+0-9.eE]+|NaN|[+-]Inf)$"
)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """A strict reader of the text format: every line is HELP, TYPE or a valid sample."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"TYPE {name} twice"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m["labels"] or ""))
        samples.setdefault(m["name"], []).append((labels, float(m["value"])))
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert matches, f"no sample {name}{labels}"
    return sum(matches)


async def _get(port: int, *paths: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return [await client.get(f"http://127.0.0.1:{port}{p}") for p in paths]


def fetch(db_url: str, *paths: str) -> list[httpx.Response]:
    """Start the endpoint server on a free port, GET the paths, stop it."""

    async def run() -> list[httpx.Response]:
        server = await metrics.serve(0, "127.0.0.1", url=db_url)
        try:
            port = server.sockets[0].getsockname()[1]
            # /ready needs the LISTEN probe connected.
            for _ in range(50):
                if metrics._SERVERS[id(server)].probe.listening.is_set():
                    break
                await asyncio.sleep(0.05)
            return await _get(port, *paths)
        finally:
            await metrics.shutdown(server)

    return asyncio.run(run())


def test_metrics_after_a_pipeline_run(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str
) -> None:
    insert_questions(db, 20)
    insert_questions(db, 3, status="failed", prefix="Alt")
    assert drain(60) == 0
    db.execute(
        "INSERT INTO worker_errors (fingerprint, kind, provider, message, occurrences)"
        " VALUES ('t1', 'rate_limit', 'openai', 'slow down', 4), ('t2', 'auth', NULL, 'bad \"key\"', 1)"
    )
    metrics.observe_provider_call("openai", "submit", 0.3)
    metrics.observe_provider_call("openai", "submit", 7.0, TimeoutError())

    (resp,) = fetch(db_url, "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == metrics.CONTENT_TYPE
    samples, types = parse(resp.text)

    assert value(samples, "ai_worker_database_up") == 1
    assert "ai_worker_collector_failed" not in samples
    assert value(samples, "ai_worker_questions", status="completed") == 20
    assert value(samples, "ai_worker_questions", status="failed") == 3
    assert value(samples, "ai_worker_oldest_pending_age_seconds") == 0
    # 3 model batches + 1 summary batch, all ingested; nothing in flight.
    assert value(samples, "ai_worker_batches", state="ingested") == 4
    assert "ai_worker_batches_in_flight" not in samples
    assert value(samples, "ai_worker_batch_submissions_total", provider="openai") == 2
    assert value(samples, "ai_worker_batch_submissions_total", provider="gemini") == 1
    assert value(samples, "ai_worker_batch_requests_submitted_total", provider="mistral") == 20
    assert (
        value(
            samples,
            "ai_worker_batch_results_total",
            provider="openai",
            stage="summary",
            outcome="succeeded",
        )
        == 20
    )
    assert value(samples, "ai_worker_batch_results_total", outcome="failed") == 0
    assert types["ai_worker_batch_turnaround_seconds"] == "histogram"
    assert value(samples, "ai_worker_batch_turnaround_seconds_count") == 4
    inf = value(samples, "ai_worker_batch_turnaround_seconds_bucket", le="+Inf")
    assert inf == 4
    assert value(samples, "ai_worker_errors_total", provider="openai", kind="rate_limit") == 4
    assert value(samples, "ai_worker_errors_total", kind="auth") == 1
    assert types["ai_worker_errors_total"] == "counter"

    # Tokens and cost today equal the ledger.
    ledger = db.execute(
        "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c"
        " FROM ai_cost_ledger"
    ).fetchone()
    assert ledger is not None and ledger["c"] > 0
    assert value(samples, "ai_worker_tokens_today", direction="input") == ledger["i"]
    assert value(samples, "ai_worker_tokens_today", direction="output") == ledger["o"]
    assert abs(value(samples, "ai_worker_cost_usd_today") - float(ledger["c"])) < 1e-9
    assert value(samples, "ai_worker_cost_usd_today", provider="perplexity", pricing="realtime") > 0
    assert value(samples, "ai_worker_cost_usd_today", provider="gemini", pricing="batch") > 0

    # Resilience tables (0011) are installed: breaker state and stops are exported.
    assert "ai_worker_breaker_open" in types and "ai_worker_provider_stopped" in types
    # Realtime lane (0010): ai_jobs counts by status.
    assert "ai_worker_ai_jobs_due" in samples

    # In-process provider call histogram: cumulative buckets.
    assert (
        value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="0.5") >= 1
    )
    b05 = value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="5")
    b10 = value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="10")
    assert b10 >= b05 + 1
    assert value(samples, "ai_worker_provider_calls_total", outcome="TimeoutError") >= 1
    # The pipeline's own provider calls were timed (batch create, status polls, instant chat).
    for provider, operation in (
        ("openai", "batch_submit"),
        ("gemini", "batch_status"),
        ("perplexity", "chat"),
    ):
        assert (
            value(
                samples,
                "ai_worker_provider_calls_total",
                provider=provider,
                operation=operation,
                outcome="ok",
            )
            >= 1
        )
    assert value(samples, "ai_worker_workers") == 0


def test_breaker_stop_and_queue_metrics(db: psycopg.Connection[Any], db_url: str) -> None:
    db.execute(
        "INSERT INTO provider_health (provider, state) VALUES ('openai', 'open'),"
        " ('gemini', 'closed')"
    )
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason) VALUES"
        " ('mistral', 'quota', 'out of credit')"
    )
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason, cleared_at) VALUES"
        " ('deepseek', 'auth', 'old', now())"
    )
    insert_questions(db, 2)
    db.execute("UPDATE questions SET ai_commentary_queued_at = now() - interval '10 minutes'")
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, state, status, stage, request_count,"
        " submitted_at, batch_id) VALUES ('openai', 'in_flight', 'in_progress', 'comment', 7,"
        " now() - interval '90 seconds', 'batch_x')"
    )
    (resp,) = fetch(db_url, "/metrics")
    samples, _ = parse(resp.text)
    assert value(samples, "ai_worker_breaker_open", provider="openai") == 1
    assert value(samples, "ai_worker_breaker_open", provider="gemini") == 0
    assert value(samples, "ai_worker_breaker_state", provider="openai", state="open") == 1
    assert (
        value(samples, "ai_worker_provider_stopped", provider="mistral", reason="out of credit")
        == 1
    )
    assert all(lab["provider"] != "deepseek" for lab, _ in samples["ai_worker_provider_stopped"])
    assert value(samples, "ai_worker_questions", status="pending") == 2
    assert 590 < value(samples, "ai_worker_oldest_pending_age_seconds") < 700
    assert (
        value(
            samples,
            "ai_worker_batches_in_flight",
            provider="openai",
            state="in_flight",
            provider_status="in_progress",
        )
        == 1
    )
    assert 85 < value(samples, "ai_worker_batch_oldest_in_flight_age_seconds") < 200
    # The insert trigger deferred one submit job: the queue depth shows it.
    assert value(samples, "ai_worker_queue_depth", queue="submit") == 1


def test_health_and_ready(db: psycopg.Connection[Any], db_url: str) -> None:
    health, ready, missing = fetch(db_url, "/health", "/ready", "/nope")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert missing.status_code == 404
    # No worker heartbeat yet: not ready, and it says why.
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["listen"]["ok"] is True
    assert checks["heartbeat"]["ok"] is False

    db.execute("INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now())")
    (ready,) = fetch(db_url, "/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"

    db.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '5 minutes'")
    (ready,) = fetch(db_url, "/ready")
    assert ready.status_code == 503
    assert re.search(r"newest heartbeat 30\d s old", ready.json()["checks"]["heartbeat"]["detail"])


def test_database_down_is_reported_not_raised() -> None:
    dead = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"
    metrics_resp, ready, health = fetch(dead, "/metrics", "/ready", "/health")
    assert metrics_resp.status_code == 200
    samples, _ = parse(metrics_resp.text)
    assert value(samples, "ai_worker_database_up") == 0
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
    assert health.status_code == 200


def test_label_values_are_escaped() -> None:
    fam = metrics.Family("x_total", "counter", "help with \\ and\nnewline")
    fam.add(1.5, kind='a "quoted"\nvalue\\')
    text = fam.render()
    assert 'x_total{kind="a \\"quoted\\"\\nvalue\\\\"} 1.5' in text
    assert "# HELP x_total help with \\\\ and\\nnewline" in text
    parse(text)


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_worker_run_serves_endpoints(db_url: str, free_port: int) -> None:
    """`python -m worker run` with METRICS_PORT: /ready turns 200 once its workers beat."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "METRICS_PORT": str(free_port),
        "FETCH_JOB_POLLING_INTERVAL": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{free_port}/ready", timeout=5)
                status = r.status_code
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert status == 200, proc.stderr.read1().decode() if proc.stderr else status  # type: ignore[union-attr]
        r = httpx.get(f"http://127.0.0.1:{free_port}/metrics", timeout=10)
        samples, _ = parse(r.text)
        assert value(samples, "ai_worker_workers_fresh") >= 1
        assert value(samples, "ai_worker_database_up") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{free_port}/health", timeout=2)


def test_grafana_dashboard_uses_exported_metrics() -> None:
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "grafana" / "ai-worker-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for e in exprs
        for m in re.findall(r"\bai_worker_\w+", e)
    }
    source = Path(metrics.__file__).read_text()
    exported = set(re.findall(r'"(ai_worker_\w+)"', source))
    assert used <= exported, used - exported
    # The main series of the issue are on the dashboard.
    for name in (
        "ai_worker_questions",
        "ai_worker_batches_in_flight",
        "ai_worker_errors_total",
        "ai_worker_cost_usd_today",
        "ai_worker_breaker_open",
        "ai_worker_queue_depth",
        "ai_worker_oldest_pending_age_seconds",
        "ai_worker_provider_call_seconds",
    ):
        assert name in used, name
