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

from tests.fixtures.pipeline import drain, insert_questions, set_models
from worker.emulator import Emulator
from worker.ops import health, metrics

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
        server = await health.serve(0, "127.0.0.1", url=db_url)
        try:
            port = server.sockets[0].getsockname()[1]
            # /ready needs the LISTEN probe connected.
            probe = health.probe_of(server)
            for _ in range(50):
                if probe is not None and probe.listening.is_set():
                    break
                await asyncio.sleep(0.05)
            return await _get(port, *paths)
        finally:
            await health.shutdown(server)

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

    # Tokens and cost are counters over the whole ledger (rate() works; nothing resets daily).
    ledger = db.execute(
        "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_usd) AS c"
        " FROM ai_cost_ledger"
    ).fetchone()
    assert ledger is not None and ledger["c"] > 0
    assert (
        types["ai_worker_tokens_total"] == "counter"
        and types["ai_worker_cost_usd_total"] == "counter"
    )
    assert not [n for n in types if n.endswith("_today")]
    assert (
        value(samples, "ai_worker_tokens_total", source="commentary", direction="input")
        == ledger["i"]
    )
    assert (
        value(samples, "ai_worker_tokens_total", source="commentary", direction="output")
        == ledger["o"]
    )
    cost = value(samples, "ai_worker_cost_usd_total", source="commentary")
    assert abs(cost - float(ledger["c"])) < 1e-9
    assert value(samples, "ai_worker_cost_usd_total", provider="perplexity", pricing="realtime") > 0
    assert value(samples, "ai_worker_cost_usd_total", provider="gemini", pricing="batch") > 0

    # Resilience tables (0011) are installed: breaker state and stops are exported.
    assert "ai_worker_breaker_open" in types and "ai_worker_provider_stopped" in types
    # Realtime lane (0010): ai_jobs counts by status.
    assert value(samples, "ai_worker_realtime_due_jobs") == 0

    # In-process provider call histogram: cumulative buckets.
    assert (
        value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="0.5") >= 1
    )
    b05 = value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="5.0")
    b10 = value(samples, "ai_worker_provider_call_seconds_bucket", provider="openai", le="10.0")
    assert b10 >= b05 + 1
    # outcomes are a closed set, never exception text
    assert value(samples, "ai_worker_provider_calls_total", outcome="timeout") >= 1
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
    # The stop is labelled by provider and kind; its free-text reason stays out of the labels.
    assert value(samples, "ai_worker_provider_stopped", provider="mistral", kind="quota") == 1
    assert "out of credit" not in resp.text
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


FIXED_LABELS = {
    "provider",
    "operation",
    "outcome",
    "status",
    "queue",
    "state",
    "provider_status",
    "stage",
    "direction",
    "kind",
    "error_kind",
    "model",
    "source",
    "pricing",
    "collector",
    "level",
    "le",
}


def test_no_free_text_labels(db: psycopg.Connection[Any], db_url: str) -> None:
    """Every label is from a closed set; error text never becomes a label value."""
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason) VALUES"
        " ('openrouter', 'auth', 'openrouter: auth status=403 the key was revoked at 12:01')"
    )
    db.execute(
        "INSERT INTO worker_errors (fingerprint, kind, provider, message) VALUES"
        " ('x', 'rate_limit', 'openai', 'Rate limit reached for gpt-4o in org-123')"
    )
    (resp,) = fetch(db_url, "/metrics")
    samples, _ = parse(resp.text)
    names = {k for series in samples.values() for labels, _ in series for k in labels}
    assert names <= FIXED_LABELS, names - FIXED_LABELS
    assert "revoked" not in resp.text and "org-123" not in resp.text
    assert value(samples, "ai_worker_provider_stopped", provider="openrouter", kind="auth") == 1


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
        assert value(samples, "ai_worker_processes") == 1  # one process, four queue workers
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


IN_PROCESS = ("ai_worker_provider_call", "ai_worker_metrics_scrapes", "process_")
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus


def _family(name: str, types: dict[str, str]) -> str:
    """The exported family of a series name (histogram series end in _bucket/_sum/_count)."""
    if name in types:
        return name
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    assert base in types, f"{name} is not exported"
    return base


def test_grafana_panels_match_the_exported_names_and_labels(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str
) -> None:
    """Every panel query names series /metrics exports, with labels they carry; a query that
    deduplicates the processes' identical database series keeps every label (dropping one,
    as the tokens panel once dropped `source`, undercounts); a realtime lane row shows
    throughput, latency, errors and the queue."""
    import json
    from pathlib import Path

    # A run on both lanes (one realtime provider failing), plus the rarer states, so that
    # every family on the dashboard has samples to check the labels against.
    db.execute("UPDATE ai_realtime_settings SET backoff_base_seconds = 0.05, max_attempts = 1")
    set_models(db, deepseek=False)  # DeepSeek fails here; the commentary must not wait on it
    pipeline.configure(http_faults=[{"provider": "deepseek", "kind": "server", "count": None}])
    insert_questions(db, 5)
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('chat', 'openai', 'gpt-4.1-mini', 'Hallo'), ('chat', 'gemini', 'gemini-2.5-flash', 'Hi'),"
        " ('chat', 'deepseek', 'deepseek-chat', 'Fehler')"
    )
    assert drain(90) == 0
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text, next_attempt_at) VALUES"
        " ('chat', 'openai', 'gpt-4.1-mini', 'später', now() + interval '1 hour')"
    )
    db.execute(
        "INSERT INTO provider_stops (provider, kind, reason) VALUES ('mistral', 'quota', 'x')"
    )
    db.execute(
        "INSERT INTO provider_credit_checks (total_credits, total_usage, remaining_usd,"
        " usage_today_usd, level) VALUES (10, 6, 4, 1.5, 'ok')"
    )
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, state, status, stage, request_count,"
        " submitted_at, batch_id) VALUES ('openai', 'in_flight', 'in_progress', 'comment', 7,"
        " now(), 'batch_live')"
    )
    db.execute(
        "INSERT INTO worker_alerts (dedup_key, title, message, status) VALUES ('k', 't', 'm', 'sent')"
    )
    db.execute(
        "INSERT INTO worker_errors (fingerprint, kind, provider, message) VALUES ('f', 'x', 'openai', 'm')"
    )
    metrics.observe_provider_call("openai", "batch_submit", 0.2)
    (resp,) = fetch(db_url, "/metrics")
    samples, types = parse(resp.text)
    labels: dict[str, set[str]] = {}
    for name, series in samples.items():
        labels.setdefault(_family(name, types), set()).update(k for lab, _ in series for k in lab)
    for name, series in samples.items():
        if name.endswith("_bucket"):
            labels[name] = {k for lab, _ in series for k in lab}

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "grafana" / "ai-worker-dashboard.json").read_text())
    panels = dash["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 30
    for expr in exprs:
        used = re.findall(r"\b((?:ai_worker|process)_\w+)(\{[^}]*\})?", expr)
        assert used, expr
        expr_labels: set[str] = set()
        for name, selector in used:
            fam = _family(name, types)
            have = labels.get(name, labels.get(fam, set()))
            assert name in samples or fam in samples, f"{name} has no samples to check: {expr}"
            expr_labels |= have
            for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", selector):
                assert label in have | SCRAPE_LABELS, f"{name} has no label {label}: {expr}"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            wanted = {g.strip() for g in group.split(",") if g.strip()}
            assert wanted <= expr_labels | SCRAPE_LABELS, f"unknown label in by ({group}): {expr}"
        # The innermost deduplication of a database series keeps all of its labels (ages
        # excepted: their max over a label is the meaning), or fixes them with a matcher.
        pattern = r"\bmax(?: by \(([^)]*)\))? \((?:\w+\()?(ai_worker_\w+)(\{[^}]*\})?"
        for group, name, selector in re.findall(pattern, expr):
            if name.startswith(IN_PROCESS) or name.endswith("_age_seconds"):
                continue
            kept = {g.strip() for g in group.split(",") if g.strip()}
            kept |= set(re.findall(r"(\w+)\s*=(?!~)", selector))
            have = labels.get(name, labels.get(_family(name, types), set()))
            assert have <= kept, f"max by ({group}) drops {have - kept} of {name}: {expr}"
        # In-process series are summed over the processes, never deduplicated with max.
        assert not re.search(
            r"\bmax(?: by \([^)]*\))? \((?:\w+\()?ai_worker_provider_call", expr
        ), expr

    # The main series of the issue are on the dashboard.
    text = " ".join(exprs)
    for name in (
        "ai_worker_questions",
        "ai_worker_batches_in_flight",
        "ai_worker_errors_total",
        "ai_worker_cost_usd_total",
        "ai_worker_tokens_total",
        "ai_worker_breaker_open",
        "ai_worker_queue_depth",
        "ai_worker_oldest_pending_age_seconds",
        "ai_worker_provider_call_seconds",
    ):
        assert name in text, name
    assert "_today" not in text
    # A realtime lane row: throughput, latency, errors, queue.
    start = next(
        i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Realtime lane"
    )
    row = []
    for p in panels[start + 1 :]:
        if p["type"] == "row":
            break
        row.append(" ".join(t["expr"] for t in p["targets"]))
    needs = {
        "throughput": "rate(ai_worker_realtime_jobs_finished_total",
        "latency": "ai_worker_realtime_call_seconds_bucket",
        "errors": "ai_worker_realtime_failed_calls_total",
        "queue": "ai_worker_realtime_jobs{",
    }
    for what, series in needs.items():
        assert any(series in e for e in row), what
    # the realtime figures reflect the run: two completed, one failed (deepseek), one queued
    assert value(samples, "ai_worker_realtime_jobs_finished_total", status="completed") == 2
    assert (
        value(
            samples, "ai_worker_realtime_jobs_finished_total", provider="deepseek", status="failed"
        )
        == 1
    )
    assert value(samples, "ai_worker_realtime_job_failures_total", error_kind="retryable") == 1
    assert value(samples, "ai_worker_realtime_jobs", status="pending") == 1
    assert value(samples, "ai_worker_realtime_call_seconds_count") == 2
    assert value(samples, "ai_worker_realtime_call_seconds_bucket", le="+Inf") == 2


def test_realtime_counters_fold_old_rows_once_and_only_grow(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    """Finished jobs older than the fold margin are read once and kept per process; later
    scrapes read only recent rows, so the counters keep growing even when old rows go."""

    def finish(n: int, status: str, ago: str) -> None:
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, input_text)"
            " SELECT 'chat', 'openai', 'gpt-4.1-mini', 'x' FROM generate_series(1, %s)",
            (n,),
        )
        db.execute(
            "UPDATE ai_jobs SET status = %s, latency_ms = 200, attempts = 1,"
            " input_tokens = 7, output_tokens = 3,"
            " error_kind = CASE WHEN %s = 'failed' THEN 'retryable' END,"
            " completed_at = now() - %s::interval WHERE completed_at IS NULL AND status = 'pending'",
            (status, status, ago),
        )

    def finished(samples: Samples, status: str) -> float:
        return value(samples, "ai_worker_realtime_jobs_finished_total", status=status)

    finish(30, "completed", "2 hours")
    finish(4, "failed", "1 hour")
    finish(5, "completed", "10 seconds")
    (resp,) = fetch(db_url, "/metrics")
    samples, _ = parse(resp.text)
    assert finished(samples, "completed") == 35 and finished(samples, "failed") == 4
    assert value(samples, "ai_worker_realtime_call_seconds_count") == 35
    assert value(samples, "ai_worker_realtime_call_seconds_bucket", le="0.25") == 35
    assert value(samples, "ai_worker_realtime_call_seconds_bucket", le="0.1") == 0
    assert value(samples, "ai_worker_realtime_failed_calls_total") == 39

    finish(2, "completed", "1 second")
    db.execute("DELETE FROM ai_jobs WHERE completed_at < now() - interval '90 minutes'")
    (resp,) = fetch(db_url, "/metrics")
    samples, _ = parse(resp.text)
    assert finished(samples, "completed") == 37  # 30 deleted rows were already counted
    assert finished(samples, "failed") == 4
    chat = {"provider": "openai", "model": "gpt-4.1-mini", "kind": "chat"}
    assert value(samples, "ai_worker_realtime_requests_total", **chat, status="completed") == 37
    assert value(samples, "ai_worker_realtime_tokens_total", **chat, direction="input") == 41 * 7
    assert value(samples, "ai_worker_realtime_tokens_total", **chat, direction="output") == 41 * 3
    assert value(samples, "ai_worker_realtime_request_call_seconds_count", **chat) == 37
    assert value(samples, "ai_worker_realtime_job_failures_total", error_kind="retryable") == 4


def test_realtime_requests_by_provider_model_and_kind(
    pipeline: Emulator, db: psycopg.Connection[Any], db_url: str
) -> None:
    """Real chat, template and embedding jobs through the drain (the emulator, and the mock
    provider): the series by provider, model and kind count the jobs finished, sum their
    stored tokens and hold one call duration per completed job; a model the configuration
    does not know is counted as `other`, never under the caller's name."""
    db.execute("UPDATE ai_realtime_settings SET backoff_base_seconds = 0.05, max_attempts = 1")
    pipeline.configure(http_faults=[{"provider": "deepseek", "kind": "server", "count": None}])
    jobs = [
        ("chat", "openai", "gpt-4.1-mini", 3),
        ("sentiment", "openai", "gpt-4.1-mini", 2),
        ("embedding", "openai", "text-embedding-3-small", 5),
        ("chat", "mock", "mock-unlisted-7", 2),  # no price, route, template or limit names it
        ("embedding", "mock", "mock", 4),  # the mock provider's default model
        ("chat", "deepseek", "deepseek-chat", 1),  # fails (server error, one attempt)
    ]
    for kind, provider, model, n in jobs:
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, input_text)"
            " SELECT %s, %s, %s, 'Text Nummer ' || g FROM generate_series(1, %s) g",
            (kind, provider, model, n),
        )
    assert drain(90) == 0
    rows = db.execute(
        "SELECT provider, model, kind, status, count(*) AS n,"
        " coalesce(sum(input_tokens), 0) AS input, coalesce(sum(output_tokens), 0) AS output,"
        " coalesce(sum(latency_ms), 0) AS ms, count(latency_ms) AS timed"
        " FROM ai_jobs GROUP BY 1, 2, 3, 4"
    ).fetchall()
    assert {(r["kind"], r["provider"], r["status"]): r["n"] for r in rows} == {
        ("chat", "openai", "completed"): 3,
        ("sentiment", "openai", "completed"): 2,
        ("embedding", "openai", "completed"): 5,
        ("chat", "mock", "completed"): 2,
        ("embedding", "mock", "completed"): 4,
        ("chat", "deepseek", "failed"): 1,
    }
    (resp,) = fetch(db_url, "/metrics")
    samples, types = parse(resp.text)
    assert types["ai_worker_realtime_requests_total"] == "counter"
    assert types["ai_worker_realtime_tokens_total"] == "counter"
    assert types["ai_worker_realtime_request_call_seconds"] == "histogram"
    assert "mock-unlisted-7" not in resp.text

    def label(model: str) -> str:
        return "other" if model == "mock-unlisted-7" else model

    done = 0.0
    for r in rows:
        key = {"provider": r["provider"], "model": label(r["model"]), "kind": r["kind"]}
        got = value(samples, "ai_worker_realtime_requests_total", **key, status=r["status"])
        assert got == r["n"], (key, got)
        done += got
        tokens = value(samples, "ai_worker_realtime_tokens_total", **key, direction="input")
        assert tokens == r["input"], (key, tokens)
        tokens = value(samples, "ai_worker_realtime_tokens_total", **key, direction="output")
        assert tokens == r["output"], (key, tokens)
        if r["status"] != "completed":
            assert not [
                lab
                for lab, _ in samples["ai_worker_realtime_request_call_seconds_count"]
                if lab == key
            ]
            continue
        assert r["timed"] == r["n"]
        hist = "ai_worker_realtime_request_call_seconds"
        assert value(samples, f"{hist}_count", **key) == r["n"]
        assert value(samples, f"{hist}_bucket", **key, le="+Inf") == r["n"]
        assert value(samples, f"{hist}_sum", **key) == pytest.approx(r["ms"] / 1000)
        # cumulative buckets, in order, one per bound
        buckets = [
            v
            for lab, v in samples[f"{hist}_bucket"]
            if {k: lab[k] for k in key} == key and lab["le"] != "+Inf"
        ]
        assert len(buckets) == len(metrics.REALTIME_BUCKETS)
        assert buckets == sorted(buckets) and buckets[-1] <= r["n"]
    assert done == sum(n for *_, n in jobs) == 17
    # real work was measured: chat answers have both directions, embeddings their input
    assert value(samples, "ai_worker_realtime_tokens_total", kind="chat", direction="output") > 0
    assert (
        value(samples, "ai_worker_realtime_tokens_total", kind="embedding", direction="input") > 0
    )
    assert value(samples, "ai_worker_realtime_tokens_total", provider="mock", model="other") > 0
    # the series by provider are these series summed
    for provider in ("openai", "mock", "deepseek"):
        for status in ("completed", "failed"):
            assert value(
                samples, "ai_worker_realtime_jobs_finished_total", provider=provider, status=status
            ) == value(
                samples, "ai_worker_realtime_requests_total", provider=provider, status=status
            )
    for provider in ("openai", "mock"):  # deepseek completed nothing: no series
        assert value(samples, "ai_worker_realtime_call_seconds_count", provider=provider) == value(
            samples, "ai_worker_realtime_requests_total", provider=provider, status="completed"
        )
    assert value(samples, "ai_worker_realtime_request_call_seconds_count") == 16
