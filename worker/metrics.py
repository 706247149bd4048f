"""Prometheus metrics and the health endpoints of ``python -m worker run``.

``serve(port)`` answers, over plain HTTP/1.1 (asyncio streams, one request per connection):

- ``GET /metrics``  Prometheus text exposition format 0.0.4
- ``GET /health``   liveness: 200 while the process's event loop answers
- ``GET /ready``    readiness: 200 when the database answers, LISTEN/NOTIFY round-trips and a
                    worker heartbeat is fresh; 503 with the failing check otherwise

Most figures are read from the database at each scrape (the database is the source of truth
and is shared by every worker process, so any process's /metrics shows the whole system):
questions and queue jobs by status, batches in flight by provider and state, submissions
and results per provider, batch failures by cause, errors by provider and kind, batch
turnaround histograms, tokens and cost today, breaker state and provider stops (when the
resilience tables exist), queue depth and oldest pending age, worker heartbeats and the last
OpenRouter credit check.

The in-process registry (:data:`REGISTRY`) holds what only a process knows: provider call
latency (:func:`observe_provider_call`, :func:`timed_call`) and scrape counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from worker.database import aconnect
from worker.health import ListenProbe, readiness
from worker.queries import q

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROVIDER_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_TURNAROUND_BUCKETS = (
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
OPEN_BREAKER_STATES = frozenset({"open", "half_open", "half-open"})

LabelKey = tuple[str, ...]


# --------------------------------------------------------------------------- exposition


def _fmt_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


@dataclass
class Sample:
    suffix: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    """One metric family: ``# HELP``, ``# TYPE`` and its samples."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: Any, suffix: str = "", **labels: Any) -> None:
        self.samples.append(
            Sample(suffix, {k: "" if v is None else str(v) for k, v in labels.items()}, _num(value))
        )

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for s in self.samples:
            if s.labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels.items())
                lines.append(f"{self.name}{s.suffix}{{{inner}}} {_fmt_value(s.value)}")
            else:
                lines.append(f"{self.name}{s.suffix} {_fmt_value(s.value)}")
        return "\n".join(lines) + "\n"


def _num(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float, Decimal)):
        return float(v)
    if isinstance(v, datetime):
        return v.timestamp()
    return float(v)


def render(families: Iterable[Family]) -> str:
    """Families in exposition format (each name once: later duplicates merge into the first)."""
    merged: dict[str, Family] = {}
    for f in families:
        if f.name in merged:
            merged[f.name].samples.extend(f.samples)
        else:
            merged[f.name] = Family(f.name, f.kind, f.help, list(f.samples))
    return "".join(f.render() for f in merged.values())


# --------------------------------------------------------------------------- in-process registry


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, Any]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _labels(self, key: LabelKey) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True))

    def collect(self) -> Family:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0.0)

    def collect(self) -> Family:
        fam = Family(self.name, self.kind, self.help)
        with self._lock:
            for key, v in sorted(self._values.items()):
                fam.add(v, **self._labels(key))
        return fam


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def collect(self) -> Family:
        fam = Family(self.name, self.kind, self.help)
        with self._lock:
            for key, v in sorted(self._values.items()):
                fam.add(v, **self._labels(key))
        return fam


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = PROVIDER_CALL_BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def collect(self) -> Family:
        fam = Family(self.name, self.kind, self.help)
        with self._lock:
            for key, counts in sorted(self._counts.items()):
                labels = self._labels(key)
                for b, n in zip(self.buckets, counts, strict=False):
                    fam.add(n, "_bucket", **labels, le=_fmt_value(b))
                fam.add(counts[-1], "_bucket", **labels, le="+Inf")
                fam.add(self._sums[key], "_sum", **labels)
                fam.add(counts[-1], "_count", **labels)
        return fam


_M = TypeVar("_M", bound=_Metric)


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _M) -> _M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def collect(self) -> list[Family]:
        return [m.collect() for m in self._metrics.values()]


REGISTRY = Registry()
PROVIDER_CALL_SECONDS = REGISTRY.register(
    Histogram(
        "ai_worker_provider_call_seconds",
        "Duration of provider API calls made by this process (submit, poll, download, instant).",
        ("provider", "operation"),
    )
)
PROVIDER_CALLS = REGISTRY.register(
    Counter(
        "ai_worker_provider_calls_total",
        "Provider API calls made by this process, by outcome (ok or the error class).",
        ("provider", "operation", "outcome"),
    )
)
SCRAPES = REGISTRY.register(
    Counter("ai_worker_metrics_scrapes_total", "Scrapes of /metrics answered by this process.")
)
_STARTED = time.time()


def observe_provider_call(
    provider: str, operation: str, seconds: float, error: BaseException | str | None = None
) -> None:
    """Record one provider call (``error``: the exception or its class name, None when ok)."""
    outcome = "ok" if error is None else (error if isinstance(error, str) else type(error).__name__)
    PROVIDER_CALL_SECONDS.observe(seconds, provider=provider, operation=operation)
    PROVIDER_CALLS.inc(provider=provider, operation=operation, outcome=outcome)


@contextlib.contextmanager
def timed_call(provider: str, operation: str) -> Iterator[None]:
    """``with timed_call("openai", "submit"): ...`` records duration and outcome."""
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        observe_provider_call(provider, operation, time.monotonic() - started, exc)
        raise
    observe_provider_call(provider, operation, time.monotonic() - started)


# --------------------------------------------------------------------------- optional tables


async def table_columns(conn: psycopg.AsyncConnection[Any], name: str) -> list[str]:
    """Column names of ``name``; empty when the table does not exist (yet)."""
    present = await _rows(conn, "ops_table_exists", {"name": name})
    if not present or not present[0]["present"]:
        return []
    return [r["name"] for r in await _rows(conn, "ops_table_columns", {"name": name})]


def _first(cols: Sequence[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in cols), None)


async def ai_job_counts(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """Realtime ``ai_jobs`` rows by status (None while the table does not exist)."""
    cols = await table_columns(conn, "ai_jobs")
    status = _first(cols, "status", "state")
    if status is None:
        return None
    stmt = sql.SQL("SELECT {s}::text AS status, count(*) AS n FROM ai_jobs GROUP BY 1 ORDER BY 1")
    return await _query(conn, stmt.format(s=sql.Identifier(status)))


async def ai_job_due(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
    """Due realtime jobs and the age of the oldest (None while ai_jobs is absent)."""
    cols = await table_columns(conn, "ai_jobs")
    if not all(c in cols for c in ("status", "next_attempt_at", "created_at")):
        return None
    rows = await _query(
        conn,
        "SELECT count(*) AS due, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
        " AS oldest_age_seconds FROM ai_jobs"
        " WHERE status IN ('pending', 'retrying') AND next_attempt_at <= now()",
    )
    return rows[0]


async def ai_job_spend_since(
    conn: psycopg.AsyncConnection[Any], since: datetime
) -> list[dict[str, Any]] | None:
    """Tokens and cost of ``ai_jobs`` since ``since`` when the table records them."""
    cols = await table_columns(conn, "ai_jobs")
    model = _first(cols, "model", "model_name")
    ts = _first(cols, "finished_at", "completed_at", "updated_at", "created_at")
    need = ("provider", "input_tokens", "output_tokens", "cost_usd")
    if model is None or ts is None or not all(c in cols for c in need):
        return None
    stmt = sql.SQL(
        "SELECT provider, {m} AS model_name, count(*) AS requests,"
        " coalesce(sum(input_tokens), 0) AS input_tokens,"
        " coalesce(sum(output_tokens), 0) AS output_tokens,"
        " coalesce(sum(cost_usd), 0) AS cost_usd"
        " FROM ai_jobs WHERE {t} >= %(since)s AND cost_usd IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(m=sql.Identifier(model), t=sql.Identifier(ts))
    return await _query(conn, stmt, {"since": since})


async def breaker_states(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """``provider_health`` rows as {provider, state} (None while the table does not exist)."""
    cols = await table_columns(conn, "provider_health")
    state = _first(cols, "breaker_state", "state", "status")
    if "provider" not in cols or state is None:
        return None
    stmt = sql.SQL(
        "SELECT provider::text AS provider, {s}::text AS state FROM provider_health ORDER BY 1"
    ).format(s=sql.Identifier(state))
    return await _query(conn, stmt)


async def active_stops(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]] | None:
    """Active ``provider_stops`` rows as {provider, reason, since} (None without the table)."""
    cols = await table_columns(conn, "provider_stops")
    if "provider" not in cols:
        return None
    reason = _first(cols, "reason", "kind", "error", "message")
    since = _first(cols, "stopped_at", "created_at", "since")
    conds: list[sql.Composable] = []
    for c in ("cleared_at", "resolved_at", "lifted_at", "ended_at", "released_at", "resumed_at"):
        if c in cols:
            conds.append(sql.SQL("{} IS NULL").format(sql.Identifier(c)))
    for c in ("until", "stopped_until", "expires_at", "resume_at"):
        if c in cols:
            conds.append(sql.SQL("({c} IS NULL OR {c} > now())").format(c=sql.Identifier(c)))
    if "active" in cols:
        conds.append(sql.SQL("active"))
    stmt = sql.SQL(
        "SELECT provider::text AS provider, {r} AS reason, {s} AS since FROM provider_stops"
        " WHERE {w} ORDER BY 1"
    ).format(
        r=sql.SQL("{}::text").format(sql.Identifier(reason)) if reason else sql.SQL("NULL::text"),
        s=sql.Identifier(since) if since else sql.SQL("NULL::timestamptz"),
        w=sql.SQL(" AND ").join(conds) if conds else sql.SQL("true"),
    )
    return await _query(conn, stmt)


# --------------------------------------------------------------------------- database collectors

Collector = Callable[[psycopg.AsyncConnection[Any]], Awaitable[list[Family]]]


async def _rows(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return await _query(conn, q(name), params)


async def _query(
    conn: psycopg.AsyncConnection[Any],
    query: sql.SQL | sql.Composed | LiteralString,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows as dicts whatever the connection's row factory."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params or {})
        return list(await cur.fetchall())


async def _questions(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    fam = Family("ai_worker_questions", "gauge", "Questions by ai_commentary_status.")
    for r in await _rows(conn, "ops_question_counts"):
        fam.add(r["n"], status=r["status"])
    p = (await _rows(conn, "ops_pending_summary"))[0]
    oldest = Family(
        "ai_worker_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending question (0 when none is pending; at least the time"
        " since the install for rows queued before it).",
    )
    oldest.add(p["oldest_pending_age_seconds"])
    claimed = Family(
        "ai_worker_oldest_processing_age_seconds",
        "gauge",
        "Age of the oldest claim of a processing question (0 when none; at least the time"
        " since the install for rows claimed before it).",
    )
    claimed.add(p["oldest_processing_age_seconds"])
    return [fam, oldest, claimed]


async def _queue(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    jobs = Family("ai_worker_jobs", "gauge", "Procrastinate jobs by queue and status.")
    for r in await _rows(conn, "ops_jobs_by_queue"):
        jobs.add(r["n"], queue=r["queue"], status=r["status"])
    depth = Family("ai_worker_queue_depth", "gauge", "Jobs due now and not started, by queue.")
    age = Family(
        "ai_worker_queue_oldest_age_seconds",
        "gauge",
        "How long the oldest due job of each queue has waited.",
    )
    for r in await _rows(conn, "ops_queue_due"):
        depth.add(r["due"], queue=r["queue"])
        age.add(r["oldest_age_seconds"], queue=r["queue"])
    out = [jobs, depth, age]
    ai_jobs = await ai_job_counts(conn)
    if ai_jobs is not None:
        fam = Family("ai_worker_ai_jobs", "gauge", "Realtime ai_jobs rows by status.")
        for r in ai_jobs:
            fam.add(r["n"], status=r["status"])
        out.append(fam)
    due = await ai_job_due(conn)
    if due is not None:
        depth = Family(
            "ai_worker_ai_jobs_due",
            "gauge",
            "Realtime ai_jobs pending or retrying whose next attempt is due.",
        )
        depth.add(due["due"])
        oldest = Family(
            "ai_worker_ai_jobs_oldest_due_age_seconds",
            "gauge",
            "Age (since created) of the oldest due realtime ai_job.",
        )
        oldest.add(due["oldest_age_seconds"])
        out += [depth, oldest]
    return out


async def _batches(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    live = Family(
        "ai_worker_batches_in_flight",
        "gauge",
        "Provider batches not finished, by provider, our state and the raw provider state.",
    )
    live_age = Family(
        "ai_worker_batch_oldest_in_flight_age_seconds",
        "gauge",
        "Age of the oldest unfinished batch by provider and state.",
    )
    for r in await _rows(conn, "ops_batches_live"):
        live.add(
            r["n"], provider=r["provider"], state=r["state"], provider_status=r["provider_status"]
        )
        live_age.add(
            r["oldest_age_seconds"],
            provider=r["provider"],
            state=r["state"],
            provider_status=r["provider_status"],
        )
    by_state = Family(
        "ai_worker_batches", "gauge", "All provider batches by provider, stage and state."
    )
    subs = Family(
        "ai_worker_batch_submissions_total", "counter", "Batches created at the provider."
    )
    reqs = Family(
        "ai_worker_batch_requests_submitted_total", "counter", "Requests sent in provider batches."
    )
    results = Family(
        "ai_worker_batch_results_total",
        "counter",
        "Batch result lines ingested, by outcome (succeeded, failed, missing).",
    )
    tokens = Family(
        "ai_worker_batch_tokens_total", "counter", "Tokens reported by ingested provider batches."
    )
    agg: dict[tuple[str, str], dict[str, float]] = {}
    for r in await _rows(conn, "ops_batch_totals"):
        by_state.add(r["batches"], provider=r["provider"], stage=r["stage"], state=r["state"])
        a = agg.setdefault((r["provider"], r["stage"]), {})
        for k in (
            "submitted",
            "requests",
            "succeeded",
            "failed",
            "missing",
            "input_tokens",
            "output_tokens",
        ):
            a[k] = a.get(k, 0.0) + _num(r[k])
    for (provider, stage), a in sorted(agg.items()):
        subs.add(a["submitted"], provider=provider, stage=stage)
        reqs.add(a["requests"], provider=provider, stage=stage)
        for outcome in ("succeeded", "failed", "missing"):
            results.add(a[outcome], provider=provider, stage=stage, outcome=outcome)
        tokens.add(a["input_tokens"], provider=provider, stage=stage, direction="input")
        tokens.add(a["output_tokens"], provider=provider, stage=stage, direction="output")
    hist = Family(
        "ai_worker_batch_turnaround_seconds",
        "histogram",
        "Provider batch turnaround, submitted to finished.",
    )
    buckets = await _rows(
        conn, "ops_batch_turnaround_buckets", {"buckets": list(BATCH_TURNAROUND_BUCKETS)}
    )
    for r in buckets:
        hist.add(
            r["n"], "_bucket", provider=r["provider"], stage=r["stage"], le=_fmt_value(r["le"])
        )
    for r in await _rows(conn, "ops_batch_turnaround_totals"):
        hist.add(r["n"], "_bucket", provider=r["provider"], stage=r["stage"], le="+Inf")
        hist.add(r["total_seconds"], "_sum", provider=r["provider"], stage=r["stage"])
        hist.add(r["n"], "_count", provider=r["provider"], stage=r["stage"])
    failures = Family(
        "ai_worker_batch_failures_total",
        "counter",
        "Batches that ended without all their results, by cause (limit, provider, expired, "
        "cancelled, request, unknown; see ai_commentary_batch_jobs.failure_reason).",
    )
    for r in await _rows(conn, "ops_batch_failures"):
        failures.add(r["batches"], provider=r["provider"], stage=r["stage"], cause=r["cause"])
    # Keep each series' samples together (bucket..., +Inf, sum, count).
    hist.samples.sort(
        key=lambda s: (
            s.labels.get("provider", ""),
            s.labels.get("stage", ""),
            _SUFFIX_ORDER[s.suffix],
            _le_key(s.labels.get("le")),
        )
    )
    return [live, live_age, by_state, subs, reqs, results, tokens, failures, hist]


_SUFFIX_ORDER = {"_bucket": 0, "_sum": 1, "_count": 2}


def _le_key(le: str | None) -> float:
    if le is None:
        return 0.0
    return math.inf if le == "+Inf" else float(le)


async def _errors(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    fam = Family(
        "ai_worker_errors_total",
        "counter",
        "Errors recorded in worker_errors, by provider and kind (error class).",
    )
    for r in await _rows(conn, "ops_errors_by_kind"):
        fam.add(r["occurrences"], provider=r["provider"], kind=r["kind"])
    return [fam]


async def _spend(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    since = (await _rows(conn, "ops_today_start"))[0]["since"]
    tokens = Family(
        "ai_worker_tokens_today",
        "gauge",
        "Tokens recorded today (server time zone) by provider, model and direction.",
    )
    cost = Family(
        "ai_worker_cost_usd_today",
        "gauge",
        "Cost recorded today in USD by provider, model and pricing (batch/realtime).",
    )
    reqs = Family(
        "ai_worker_priced_requests_today",
        "gauge",
        "Priced results recorded today by provider, model and pricing.",
    )
    rows = [
        {**r, "pricing": "batch" if r["batch_priced"] else "realtime", "source": "commentary"}
        for r in await _rows(conn, "ops_spend_since", {"since": since})
    ]
    jobs = await ai_job_spend_since(conn, since)
    for r in jobs or []:
        rows.append({**r, "pricing": "realtime", "source": "ai_jobs"})
    for r in rows:
        labels = {"provider": r["provider"], "model": r["model_name"], "source": r["source"]}
        tokens.add(r["input_tokens"], **labels, direction="input")
        tokens.add(r["output_tokens"], **labels, direction="output")
        cost.add(r["cost_usd"], **labels, pricing=r["pricing"])
        reqs.add(r["requests"], **labels, pricing=r["pricing"])
    return [tokens, cost, reqs]


async def _providers(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    out: list[Family] = []
    breakers = await breaker_states(conn)
    if breakers is not None:
        state = Family(
            "ai_worker_breaker_state",
            "gauge",
            "Circuit breaker state per provider (1 for the current state).",
        )
        is_open = Family(
            "ai_worker_breaker_open",
            "gauge",
            "1 while a provider's circuit breaker is open or half-open.",
        )
        for r in breakers:
            state.add(1, provider=r["provider"], state=r["state"])
            is_open.add(str(r["state"]).lower() in OPEN_BREAKER_STATES, provider=r["provider"])
        out += [state, is_open]
    stops = await active_stops(conn)
    if stops is not None:
        fam = Family(
            "ai_worker_provider_stopped",
            "gauge",
            "1 per provider with an active stop (quota, billing, auth).",
        )
        for r in stops:
            fam.add(1, provider=r["provider"], reason=r["reason"] or "")
        out.append(fam)
    return out


async def _workers(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    r = (await _rows(conn, "ops_workers", {"fresh_seconds": 30.0}))[0]
    workers = Family("ai_worker_workers", "gauge", "Registered Procrastinate workers.")
    workers.add(r["workers"])
    fresh = Family("ai_worker_workers_fresh", "gauge", "Workers with a heartbeat in the last 30 s.")
    fresh.add(r["fresh"])
    age = Family(
        "ai_worker_heartbeat_age_seconds",
        "gauge",
        "Age of the newest worker heartbeat (-1 when no worker is registered).",
    )
    age.add(-1 if r["newest_heartbeat_age_seconds"] is None else r["newest_heartbeat_age_seconds"])
    return [workers, fresh, age]


async def _credits(conn: psycopg.AsyncConnection[Any]) -> list[Family]:
    rows = await _rows(conn, "ops_last_credit_check", {"provider": "openrouter"})
    if not rows:
        return []
    r = rows[0]
    out = []
    if r["remaining_usd"] is not None:
        fam = Family(
            "ai_worker_openrouter_credits_remaining_usd",
            "gauge",
            "OpenRouter credits left at the last check (total_credits - total_usage).",
        )
        fam.add(r["remaining_usd"])
        out.append(fam)
    if r["usage_today_usd"] is not None:
        fam = Family(
            "ai_worker_openrouter_usage_today_usd",
            "gauge",
            "OpenRouter usage since the start of the day at the last check.",
        )
        fam.add(r["usage_today_usd"])
        out.append(fam)
    level = Family(
        "ai_worker_openrouter_credit_level",
        "gauge",
        "Level of the last credit check (1 for the current level).",
    )
    level.add(1, level=r["level"])
    age = Family(
        "ai_worker_openrouter_credit_check_age_seconds",
        "gauge",
        "Seconds since the last OpenRouter credit check.",
    )
    age.add(r["age_seconds"])
    return [*out, level, age]


COLLECTORS: dict[str, Collector] = {
    "questions": _questions,
    "queue": _queue,
    "batches": _batches,
    "errors": _errors,
    "spend": _spend,
    "providers": _providers,
    "workers": _workers,
    "credits": _credits,
}


async def collect_database(url: str | None = None, timeout: float = 5.0) -> list[Family]:
    """Run every collector on one connection; a failing collector is reported, not fatal."""
    up = Family("ai_worker_database_up", "gauge", "1 when the database answered this scrape.")
    failures = Family(
        "ai_worker_collector_failed",
        "gauge",
        "1 for each database collector that failed during this scrape.",
    )
    try:
        conn = await asyncio.wait_for(aconnect(url, autocommit=True), timeout)
    except Exception as exc:
        log.warning("metrics: database unreachable: %s", exc)
        up.add(0)
        return [up]
    out: list[Family] = []
    async with conn:
        for name, collector in COLLECTORS.items():
            try:
                out += await asyncio.wait_for(collector(conn), timeout)
            except Exception as exc:
                log.warning("metrics collector %s failed: %s", name, exc)
                failures.add(1, collector=name)
                if conn.closed:
                    break
        up.add(0 if conn.closed else 1)
    return [up, failures, *out]


async def render_metrics(url: str | None = None) -> str:
    """The full /metrics body."""
    started = time.monotonic()
    SCRAPES.inc()
    families = await collect_database(url)
    process = Family(
        "ai_worker_process_start_time_seconds",
        "gauge",
        "Start time of this process (Unix seconds).",
    )
    process.add(_STARTED)
    duration = Family(
        "ai_worker_scrape_duration_seconds", "gauge", "Time this scrape spent reading the database."
    )
    duration.add(time.monotonic() - started)
    return render([*families, *REGISTRY.collect(), process, duration])


# --------------------------------------------------------------------------- HTTP


@dataclass
class _ServerState:
    probe: ListenProbe
    url: str | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_SERVERS: dict[int, _ServerState] = {}
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: str, content_type: str, head: bool = False
) -> None:
    data = body.encode("utf-8")
    headers = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(headers.encode("ascii") + (b"" if head else data))
    await writer.drain()


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str) + "\n"


async def _handle(
    state: _ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3:
            await _respond(writer, 400, "bad request\n", "text/plain")
            return
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, "GET only\n", "text/plain")
            return
        is_head = method == "HEAD"
        if path == "/metrics":
            async with state.lock:
                body = await render_metrics(state.url)
            await _respond(writer, 200, body, CONTENT_TYPE, is_head)
        elif path in ("/health", "/healthz"):
            body = _json(
                {
                    "status": "ok",
                    "pid": os.getpid(),
                    "uptime_seconds": round(time.time() - _STARTED, 1),
                }
            )
            await _respond(writer, 200, body, "application/json", is_head)
        elif path in ("/ready", "/readyz"):
            result = await readiness(state.probe, url=state.url)
            await _respond(
                writer,
                200 if result.ok else 503,
                _json(result.as_dict()),
                "application/json",
                is_head,
            )
        elif path == "/":
            await _respond(
                writer, 200, "ai-worker: /metrics /health /ready\n", "text/plain", is_head
            )
        else:
            await _respond(writer, 404, "not found\n", "text/plain", is_head)
    except (ConnectionError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("metrics endpoint failed")
        with contextlib.suppress(Exception):
            await _respond(writer, 500, "internal error\n", "text/plain")
    finally:
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()


async def serve(port: int, host: str = "0.0.0.0", *, url: str | None = None) -> asyncio.Server:
    """Start serving /metrics, /health and /ready; stop with :func:`shutdown`.

    ``port=0`` binds any free port (read it from ``server.sockets[0].getsockname()[1]``).
    ``url``: the database (default: the worker's, see :mod:`worker.database`).
    """
    state = _ServerState(probe=ListenProbe(url), url=url)
    # reuse_port: the processes of `run --processes N` share the port (the kernel spreads
    # scrapes over them; the database figures are the same from each).
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w),
        host=host,
        port=port,
        reuse_address=True,
        reuse_port=hasattr(socket, "SO_REUSEPORT") and port != 0,
    )
    state.probe.start()
    _SERVERS[id(server)] = state
    bound = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
    log.info("metrics and health endpoints on %s", bound)
    return server


async def shutdown(server: asyncio.Server) -> None:
    """Stop accepting, close the server and its LISTEN probe connection."""
    server.close()
    state = _SERVERS.pop(id(server), None)
    if state is not None:
        await state.probe.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5.0)
