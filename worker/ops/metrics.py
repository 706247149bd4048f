"""Prometheus metrics on ``prometheus-client``.

Two sources, two registries:

- :data:`PROCESS` holds what only this process knows: provider call latency and outcome
  (:func:`observe_provider_call`, :func:`timed_call`), scrapes answered, and the standard
  ``process_*`` figures. Outcomes are a closed set (``ok``, an :class:`ErrorKind` value,
  ``timeout``, ``error``), never exception text.
- Everything else is read from Postgres at each scrape by :func:`read_database` and
  exposed through a custom collector (:class:`Snapshot`). The database is shared by every
  worker process, so any process's ``/metrics`` shows the whole system, whichever of the
  processes sharing the port answers.

Rules: no free-text labels (reasons go to ``status`` and the tables: a stop is labelled by
provider and kind only); figures that only grow are counters (``*_total``, built from
all-time sums, so ``rate()`` and ``increase()`` work; a counter read from rows can step back
if maintenance deletes rows, which Prometheus treats as a reset); gauges are states. Batch failures are counted
by cause (a closed set; the provider's reason is in ``failure_reason`` and ``status``).

Served by :mod:`worker.ops.health` (``/metrics``, ``/health``, ``/ready`` on one port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import prometheus_client
import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.database import aconnect
from worker.errors import ProviderError
from worker.ops.reads import OPEN_BREAKER_STATES, _rows, active_stops, breaker_states

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
PROVIDER_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REALTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
BATCH_TURNAROUND_BUCKETS: tuple[float, ...] = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0)
BATCH_TURNAROUND_BUCKETS += (3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR = datetime(9999, 1, 1, tzinfo=UTC)
HEARTBEAT_FRESH_SECONDS = 30.0

# `_created` series double the series count for no use on a dashboard.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# --------------------------------------------------------------------------- this process

PROCESS = CollectorRegistry()
ProcessCollector(registry=PROCESS)
PROVIDER_CALL_SECONDS = Histogram(
    "ai_worker_provider_call_seconds",
    "Duration of provider API calls made by this process (batch submit and status, instant chat).",
    ("provider", "operation"),
    buckets=PROVIDER_CALL_BUCKETS,
    registry=PROCESS,
)
PROVIDER_CALLS = Counter(
    "ai_worker_provider_calls_total",
    "Provider API calls made by this process, by outcome (ok, the error kind, timeout, error).",
    ("provider", "operation", "outcome"),
    registry=PROCESS,
)
SCRAPES = Counter(
    "ai_worker_metrics_scrapes_total",
    "Scrapes of /metrics answered by this process.",
    registry=PROCESS,
)


def outcome_of(error: BaseException | None) -> str:
    """The closed set of call outcomes (a label value, so never free text)."""
    if error is None:
        return "ok"
    if isinstance(error, ProviderError):
        return error.kind.value
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"


def observe_provider_call(
    provider: str, operation: str, seconds: float, error: BaseException | None = None
) -> None:
    """Record one provider call (``error``: the exception, None when it succeeded)."""
    PROVIDER_CALL_SECONDS.labels(provider, operation).observe(seconds)
    PROVIDER_CALLS.labels(provider, operation, outcome_of(error)).inc()


@contextlib.contextmanager
def timed_call(provider: str, operation: str) -> Iterator[None]:
    """``with timed_call("openai", "batch_submit"): ...`` records duration and outcome."""
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        observe_provider_call(provider, operation, time.monotonic() - started, exc)
        raise
    observe_provider_call(provider, operation, time.monotonic() - started)


# --------------------------------------------------------------------------- database

Conn = psycopg.AsyncConnection[Any]
FOLD_MARGIN = timedelta(minutes=5)
"""Rows that finished longer ago than this are folded into the per-process totals; a
transaction that commits a finishing row later than this after its timestamp is missed."""


@dataclass
class Scrape:
    """What the readers of one scrape share: the database's clock and identity."""

    now: datetime
    db: tuple[str | None, int]


class RangeTotals:
    """All-time sums of rows read by a named query over a ``[from, to)`` time range, kept
    per process: rows older than :data:`FOLD_MARGIN` are read once and folded into
    ``totals``; each scrape then reads only the recent range. Written by hand because a
    measurement asked for it: on 200k finished ai_jobs a scrape reading every row took
    0.4-0.9 s, one after the fold 26-53 ms (``python -m tests.bench.bench_metrics``)."""

    def __init__(self, query: str, keys: tuple[str, ...], params: dict[str, Any] | None = None):
        self.query = query
        self.keys = keys
        self.params = params or {}
        self.watermark = EPOCH
        self.totals: dict[tuple[Any, ...], dict[str, float]] = {}

    def _add(
        self, into: dict[tuple[Any, ...], dict[str, float]], rows: list[dict[str, Any]]
    ) -> None:
        for r in rows:
            sums = into.setdefault(tuple(r[k] for k in self.keys), {})
            for k, v in r.items():
                if k not in self.keys:
                    sums[k] = sums.get(k, 0.0) + _f(v)

    async def read(self, conn: Conn, now: datetime) -> list[dict[str, Any]]:
        upto = now - FOLD_MARGIN
        if upto > self.watermark:
            rows = await _rows(
                conn, self.query, {**self.params, "from": self.watermark, "to": upto}
            )
            self._add(self.totals, rows)
            self.watermark = upto
        out = {k: dict(v) for k, v in self.totals.items()}
        fresh = await _rows(conn, self.query, {**self.params, "from": self.watermark, "to": FAR})
        self._add(out, fresh)
        return [
            {**dict(zip(self.keys, k, strict=True)), **v}
            for k, v in sorted(out.items(), key=lambda kv: tuple(map(str, kv[0])))
        ]


_TOTALS: dict[tuple[tuple[str | None, int], str], RangeTotals] = {}


def totals(scrape: Scrape, query: str, keys: tuple[str, ...], **params: Any) -> RangeTotals:
    """The per-process totals of ``query`` for this database (a recreated database has a
    new oid and starts from zero)."""
    key = (scrape.db, query)
    if key not in _TOTALS:
        _TOTALS[key] = RangeTotals(query, keys, params)
    return _TOTALS[key]


Reader = Callable[[Conn, Scrape], Awaitable[list[Metric]]]


def _f(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, (int, float, Decimal)):
        return float(v)
    return float(v)


def _le(b: float) -> str:
    """A bucket bound written as prometheus-client writes its own ("5.0", "0.25")."""
    return str(floatToGoString(b))  # type: ignore[no-untyped-call]


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


async def _questions(conn: Conn, scrape: Scrape) -> list[Metric]:
    fam = _gauge("ai_worker_questions", "Questions by ai_commentary_status.", "status")
    for r in await _rows(conn, "ops_question_counts"):
        fam.add_metric([r["status"]], _f(r["n"]))
    p = (await _rows(conn, "ops_pending_summary"))[0]
    oldest = _gauge(
        "ai_worker_oldest_pending_age_seconds",
        "Age of the oldest pending question (0 when none is pending; at least the time"
        " since the install for rows queued before it).",
    )
    oldest.add_metric([], _f(p["oldest_pending_age_seconds"]))
    claimed = _gauge(
        "ai_worker_oldest_processing_age_seconds",
        "Age of the oldest claim of a processing question (0 when none; at least the time"
        " since the install for rows claimed before it).",
    )
    claimed.add_metric([], _f(p["oldest_processing_age_seconds"]))
    return [fam, oldest, claimed]


async def _queue(conn: Conn, scrape: Scrape) -> list[Metric]:
    jobs = _gauge("ai_worker_jobs", "Procrastinate jobs by queue and status.", "queue", "status")
    for r in await _rows(conn, "ops_jobs_by_queue"):
        jobs.add_metric([r["queue"], r["status"]], _f(r["n"]))
    depth = _gauge("ai_worker_queue_depth", "Jobs due now and not started, by queue.", "queue")
    age = _gauge(
        "ai_worker_queue_oldest_age_seconds",
        "How long the oldest due job of each queue has waited.",
        "queue",
    )
    for r in await _rows(conn, "ops_queue_due"):
        depth.add_metric([r["queue"]], _f(r["due"]))
        age.add_metric([r["queue"]], _f(r["oldest_age_seconds"]))
    return [jobs, depth, age]


def _histogram_rows(
    fam: HistogramMetricFamily,
    labels: list[str],
    per_bucket: dict[int, float],
    total: float,
    bounds: tuple[float, ...],
) -> None:
    """Add one series from width_bucket counts (index i: bounds[i-1] < x <= bounds[i])."""
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for i, b in enumerate(bounds):
        running += per_bucket.get(i, 0.0)
        buckets.append((_le(b), running))
    buckets.append(("+Inf", sum(per_bucket.values())))
    fam.add_metric(labels, buckets, total)


async def _realtime(conn: Conn, scrape: Scrape) -> list[Metric]:
    open_jobs = _gauge(
        "ai_worker_realtime_jobs",
        "The realtime lane's queue: open ai_jobs by provider and status"
        " (pending, retrying, processing).",
        "provider",
        "status",
    )
    for r in await _rows(conn, "ops_realtime_open"):
        open_jobs.add_metric([r["provider"], r["status"]], _f(r["n"]))
    due = (await _rows(conn, "ops_realtime_due"))[0]
    due_fam = _gauge(
        "ai_worker_realtime_due_jobs", "Realtime ai_jobs pending or retrying and due now."
    )
    due_fam.add_metric([], _f(due["due"]))
    due_age = _gauge(
        "ai_worker_realtime_oldest_due_age_seconds",
        "Age (since insert) of the oldest due realtime job (0 when none).",
    )
    due_age.add_metric([], _f(due["oldest_age_seconds"]))
    finished = _counter(
        "ai_worker_realtime_jobs_finished_total",
        "Realtime ai_jobs finished, by provider and status (completed, failed).",
        "provider",
        "status",
    )
    mkl = ("provider", "model", "kind")  # model: a configured one or "other" (schema 0025)
    requests = _counter(
        "ai_worker_realtime_requests_total",
        "Realtime and embedding requests (ai_jobs rows) finished, by provider, model, kind"
        " (chat, completion, embedding, a template) and status (completed, failed).",
        *mkl,
        "status",
    )
    tokens = _counter(
        "ai_worker_realtime_tokens_total",
        "Tokens stored on finished realtime and embedding requests (priced or not), by"
        " provider, model, kind and direction (input, output).",
        *mkl,
        "direction",
    )
    failed_calls = _counter(
        "ai_worker_realtime_failed_calls_total",
        "Failed realtime provider calls (the attempts of every job), by provider.",
        "provider",
    )
    throttled = _counter(
        "ai_worker_realtime_throttled_total",
        "Realtime calls delayed by a rate limit (provider 429 or our own limit), by provider.",
        "provider",
    )
    calls: dict[str, dict[str, float]] = {}
    for r in await totals(scrape, "ops_realtime_totals", mkl).read(conn, scrape.now):
        key = [r["provider"], r["model"], r["kind"]]
        for status in ("completed", "failed"):
            requests.add_metric([*key, status], _f(r[status]))
        tokens.add_metric([*key, "input"], _f(r["input_tokens"]))
        tokens.add_metric([*key, "output"], _f(r["output_tokens"]))
        c = calls.setdefault(r["provider"], {})
        for k in ("completed", "failed", "failed_calls", "throttled"):
            c[k] = c.get(k, 0.0) + _f(r[k])
    for provider, c in sorted(calls.items()):
        finished.add_metric([provider, "completed"], c["completed"])
        finished.add_metric([provider, "failed"], c["failed"])
    for r in await _rows(conn, "ops_realtime_open_calls"):
        c = calls.setdefault(r["provider"], {})
        c["failed_calls"] = c.get("failed_calls", 0.0) + _f(r["failed_calls"])
        c["throttled"] = c.get("throttled", 0.0) + _f(r["throttled"])
    for provider, c in sorted(calls.items()):
        failed_calls.add_metric([provider], c["failed_calls"])
        throttled.add_metric([provider], c["throttled"])
    failures = _counter(
        "ai_worker_realtime_job_failures_total",
        "Realtime ai_jobs that failed, by provider and error kind.",
        "provider",
        "error_kind",
    )
    fails = totals(scrape, "ops_realtime_failures", ("provider", "error_kind"))
    for r in await fails.read(conn, scrape.now):
        failures.add_metric([r["provider"], r["error_kind"]], _f(r["n"]))
    call = HistogramMetricFamily(
        "ai_worker_realtime_call_seconds",
        "Duration of the successful provider call of each completed realtime job.",
        labels=["provider"],
    )
    wait = HistogramMetricFamily(
        "ai_worker_realtime_turnaround_seconds",
        "Insert to completion of each completed realtime job (queue wait, retries and call).",
        labels=["provider"],
    )
    by_model = HistogramMetricFamily(
        "ai_worker_realtime_request_call_seconds",
        "Duration of the successful provider call of each completed realtime and embedding"
        " request, by provider, model and kind (an embedding request's is the grouped call's).",
        labels=list(mkl),
    )
    shifted = [b + 1e-9 for b in REALTIME_BUCKETS]
    latency = totals(scrape, "ops_realtime_latency", (*mkl, "what", "b"), bounds=shifted)
    series: dict[tuple[str, ...], tuple[dict[int, float], float]] = {}

    def add(key: tuple[str, ...], b: int, n: float, total: float) -> None:
        counts, sum_ = series.setdefault(key, ({}, 0.0))
        counts[b] = counts.get(b, 0.0) + n
        series[key] = (counts, sum_ + total)

    for r in await latency.read(conn, scrape.now):
        b, n, total = int(r["b"]), _f(r["n"]), _f(r["total"])
        add((r["what"], r["provider"]), b, n, total)
        if r["what"] == "call":
            add(("model", r["provider"], r["model"], r["kind"]), b, n, total)
    for (what, *labels), (counts, total) in sorted(series.items()):
        fam = {"call": call, "turnaround": wait, "model": by_model}[what]
        _histogram_rows(fam, labels, counts, total, REALTIME_BUCKETS)
    return [
        *(open_jobs, due_fam, due_age, finished, requests, tokens, failed_calls, throttled),
        *(failures, call, wait, by_model),
    ]


async def _batches(conn: Conn, scrape: Scrape) -> list[Metric]:
    labels = ("provider", "state", "provider_status")
    live = _gauge(
        "ai_worker_batches_in_flight",
        "Provider batches not finished, by provider, our state and the provider's state.",
        *labels,
    )
    live_age = _gauge(
        "ai_worker_batch_oldest_in_flight_age_seconds",
        "Age of the oldest unfinished batch by provider and state.",
        *labels,
    )
    for r in await _rows(conn, "ops_batches_live"):
        key = [r["provider"], r["state"], r["provider_status"] or ""]
        live.add_metric(key, _f(r["n"]))
        live_age.add_metric(key, _f(r["oldest_age_seconds"]))
    by_state = _gauge(
        "ai_worker_batches",
        "All provider batches by provider, stage and state.",
        "provider",
        "stage",
        "state",
    )
    subs = _counter(
        "ai_worker_batch_submissions_total",
        "Batches created at the provider.",
        "provider",
        "stage",
    )
    reqs = _counter(
        "ai_worker_batch_requests_submitted_total",
        "Requests sent in provider batches.",
        "provider",
        "stage",
    )
    results = _counter(
        "ai_worker_batch_results_total",
        "Batch result lines ingested, by outcome (succeeded, failed, missing).",
        "provider",
        "stage",
        "outcome",
    )
    tokens = _counter(
        "ai_worker_batch_tokens_total",
        "Tokens reported by ingested provider batches.",
        "provider",
        "stage",
        "direction",
    )
    agg: dict[tuple[str, str], dict[str, float]] = {}
    for r in await _rows(conn, "ops_batch_totals"):
        by_state.add_metric([r["provider"], r["stage"], r["state"]], _f(r["batches"]))
        a = agg.setdefault((r["provider"], r["stage"]), {})
        for k in ("submitted", "requests", "succeeded", "failed", "missing"):
            a[k] = a.get(k, 0.0) + _f(r[k])
        for k in ("input_tokens", "output_tokens"):
            a[k] = a.get(k, 0.0) + _f(r[k])
    for (provider, stage), a in sorted(agg.items()):
        subs.add_metric([provider, stage], a["submitted"])
        reqs.add_metric([provider, stage], a["requests"])
        for outcome in ("succeeded", "failed", "missing"):
            results.add_metric([provider, stage, outcome], a[outcome])
        tokens.add_metric([provider, stage, "input"], a["input_tokens"])
        tokens.add_metric([provider, stage, "output"], a["output_tokens"])
    hist = HistogramMetricFamily(
        "ai_worker_batch_turnaround_seconds",
        "Provider batch turnaround, submitted to finished.",
        labels=["provider", "stage"],
    )
    cumulative: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for r in await _rows(
        conn, "ops_batch_turnaround_buckets", {"buckets": list(BATCH_TURNAROUND_BUCKETS)}
    ):
        cumulative.setdefault((r["provider"], r["stage"]), []).append((_le(r["le"]), _f(r["n"])))
    for r in await _rows(conn, "ops_batch_turnaround_totals"):
        pair: tuple[str, str] = (r["provider"], r["stage"])
        buckets = [*cumulative.get(pair, []), ("+Inf", _f(r["n"]))]
        hist.add_metric(list(pair), buckets, _f(r["total_seconds"]))
    failures = _counter(
        "ai_worker_batch_failures_total",
        "Batches that ended without all their results, by cause (limit, provider, expired, "
        "cancelled, request, unknown; see ai_commentary_batch_jobs.failure_reason).",
        "provider",
        "stage",
        "cause",
    )
    for r in await _rows(conn, "ops_batch_failures"):
        failures.add_metric([r["provider"], r["stage"], r["cause"]], _f(r["batches"]))
    return [live, live_age, by_state, subs, reqs, results, tokens, failures, hist]


async def _errors(conn: Conn, scrape: Scrape) -> list[Metric]:
    fam = _counter(
        "ai_worker_errors_total",
        "Errors recorded in worker_errors (occurrences), by provider and kind.",
        "provider",
        "kind",
    )
    for r in await _rows(conn, "ops_errors_by_kind"):
        fam.add_metric([r["provider"], r["kind"]], _f(r["occurrences"]))
    alerts = _counter(
        "ai_worker_alerts_total",
        "Alerts recorded in worker_alerts, by delivery status (sent, rate_limited, ...).",
        "status",
    )
    for r in await _rows(conn, "ops_alerts_by_status"):
        alerts.add_metric([r["status"]], _f(r["n"]))
    return [fam, alerts]


async def _spend(conn: Conn, scrape: Scrape) -> list[Metric]:
    labels = ("provider", "model", "source", "pricing")
    tokens = _counter(
        "ai_worker_tokens_total",
        "Tokens of priced results by provider, model, source (commentary, ai_jobs), pricing"
        " (batch, realtime) and direction (input, output).",
        *labels,
        "direction",
    )
    cost = _counter("ai_worker_cost_usd_total", "Cost of priced results in USD.", *labels)
    reqs = _counter(
        "ai_worker_priced_requests_total", "Priced results (one per answered request).", *labels
    )
    ledger = totals(scrape, "ops_spend_range", ("provider", "model_name", "batch_priced"))
    rows = [
        {**r, "pricing": "batch" if r["batch_priced"] else "realtime", "source": "commentary"}
        for r in await ledger.read(conn, scrape.now)
    ]
    jobs = totals(scrape, "ops_realtime_spend", ("provider", "model_name"))
    rows += [
        {**r, "pricing": "realtime", "source": "ai_jobs"} for r in await jobs.read(conn, scrape.now)
    ]
    for r in rows:
        key = [r["provider"], r["model_name"] or "", r["source"], r["pricing"]]
        tokens.add_metric([*key, "input"], _f(r["input_tokens"]))
        tokens.add_metric([*key, "output"], _f(r["output_tokens"]))
        cost.add_metric(key, _f(r["cost_usd"]))
        reqs.add_metric(key, _f(r["requests"]))
    return [tokens, cost, reqs]


async def _providers(conn: Conn, scrape: Scrape) -> list[Metric]:
    out: list[Metric] = []
    breakers = await breaker_states(conn)
    if breakers is not None:
        state = _gauge(
            "ai_worker_breaker_state",
            "Circuit breaker state per provider (1 for the current state).",
            "provider",
            "state",
        )
        is_open = _gauge(
            "ai_worker_breaker_open",
            "1 while a provider's circuit breaker is open or half-open.",
            "provider",
        )
        for r in breakers:
            state.add_metric([r["provider"], str(r["state"])], 1.0)
            is_open.add_metric(
                [r["provider"]], 1.0 if str(r["state"]).lower() in OPEN_BREAKER_STATES else 0.0
            )
        out += [state, is_open]
    stops = await active_stops(conn)
    if stops is not None:
        fam = _gauge(
            "ai_worker_provider_stopped",
            "1 per provider with an active stop, by kind (quota, auth); the reason and the"
            " resume statement are in `status`.",
            "provider",
            "kind",
        )
        for r in stops:
            fam.add_metric([r["provider"], r.get("kind") or "stopped"], 1.0)
        out.append(fam)
    return out


async def _workers(conn: Conn, scrape: Scrape) -> list[Metric]:
    r = (await _rows(conn, "ops_workers", {"fresh_seconds": HEARTBEAT_FRESH_SECONDS}))[0]
    workers = _gauge(
        "ai_worker_workers", "Registered Procrastinate queue workers (one per queue per process)."
    )
    workers.add_metric([], _f(r["workers"]))
    fresh = _gauge("ai_worker_workers_fresh", "Queue workers with a heartbeat in the last 30 s.")
    fresh.add_metric([], _f(r["fresh"]))
    age = _gauge(
        "ai_worker_heartbeat_age_seconds",
        "Age of the newest worker heartbeat (-1 when no worker is registered).",
    )
    newest = r["newest_heartbeat_age_seconds"]
    age.add_metric([], -1.0 if newest is None else _f(newest))
    p = (await _rows(conn, "ops_processes", {"fresh_seconds": HEARTBEAT_FRESH_SECONDS}))[0]
    procs = _gauge(
        "ai_worker_processes", "Worker processes (`python -m worker run`) alive in the last 30 s."
    )
    procs.add_metric([], _f(p["fresh"]))
    return [workers, fresh, age, procs]


async def _credits(conn: Conn, scrape: Scrape) -> list[Metric]:
    rows = await _rows(conn, "ops_last_credit_check", {"provider": "openrouter"})
    if not rows:
        return []
    r = rows[0]
    out: list[Metric] = []
    if r["remaining_usd"] is not None:
        fam = _gauge(
            "ai_worker_openrouter_credits_remaining_usd",
            "OpenRouter credits left at the last check (total_credits - total_usage).",
        )
        fam.add_metric([], _f(r["remaining_usd"]))
        out.append(fam)
    if r["total_usage"] is not None:
        usage = _counter(
            "ai_worker_openrouter_usage_usd_total",
            "OpenRouter's cumulative usage (total_usage) at the last check.",
        )
        usage.add_metric([], _f(r["total_usage"]))
        out.append(usage)
    level = _gauge(
        "ai_worker_openrouter_credit_level",
        "Level of the last credit check (1 for the current level).",
        "level",
    )
    level.add_metric([r["level"]], 1.0)
    age = _gauge(
        "ai_worker_openrouter_credit_check_age_seconds",
        "Seconds since the last OpenRouter credit check.",
    )
    age.add_metric([], _f(r["age_seconds"]))
    return [*out, level, age]


READERS: dict[str, Reader] = {
    "questions": _questions,
    "queue": _queue,
    "realtime": _realtime,
    "batches": _batches,
    "errors": _errors,
    "spend": _spend,
    "providers": _providers,
    "workers": _workers,
    "credits": _credits,
}


async def read_database(url: str | None = None, timeout: float = 5.0) -> list[Metric]:
    """Run every reader on one connection; a failing reader is reported, not fatal."""
    up = _gauge("ai_worker_database_up", "1 when the database answered this scrape.")
    failures = _gauge(
        "ai_worker_collector_failed",
        "1 for each database reader that failed during this scrape.",
        "collector",
    )
    try:
        conn = await asyncio.wait_for(aconnect(url, autocommit=True), timeout)
    except Exception as exc:
        log.warning("metrics: database unreachable: %s", exc)
        up.add_metric([], 0.0)
        return [up, failures]
    out: list[Metric] = []
    async with conn:
        try:
            clock = (await _rows(conn, "ops_scrape_clock"))[0]
        except Exception as exc:
            log.warning("metrics: database unusable: %s", exc)
            up.add_metric([], 0.0)
            return [up, failures]
        scrape = Scrape(now=clock["now"], db=(url, int(clock["db"])))
        for name, reader in READERS.items():
            try:
                out += await asyncio.wait_for(reader(conn, scrape), timeout)
            except Exception as exc:
                log.warning("metrics reader %s failed: %s", name, exc)
                failures.add_metric([name], 1.0)
                if conn.closed:
                    break
        up.add_metric([], 0.0 if conn.closed else 1.0)
    return [up, failures, *out]


class Snapshot(Collector):
    """A custom collector serving families read beforehand (prometheus-client collectors are
    synchronous; the database is read asynchronously just before)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


async def render_metrics(url: str | None = None) -> bytes:
    """The full /metrics body: this process's registry, then the database's figures."""
    started = time.monotonic()
    SCRAPES.inc()
    families = await read_database(url)
    duration = _gauge(
        "ai_worker_scrape_duration_seconds", "Time this scrape spent reading the database."
    )
    duration.add_metric([], time.monotonic() - started)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot([*families, duration]))
    return generate_latest(PROCESS) + generate_latest(registry)
