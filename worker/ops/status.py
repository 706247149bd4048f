"""``python -m worker status [--json]``: what the worker is doing, read from the database.

Sections: questions by status (with the oldest pending), queue jobs, worker processes
(``worker_processes``; Procrastinate's own table has one row per queue worker), realtime
ai_jobs, provider batches in flight (age and raw provider state), providers stopped (with
the reason and the exact statement that resumes them) or with an open breaker, spend today,
the last OpenRouter credit check, and an operator's day: alerts of the last 24 h (how each
was delivered), failed questions with the reason of their last failed request, failed
realtime jobs and failed/expired/cancelled/abandoned batches of the last 24 h with the
provider's reason, and the last errors.

Everything printed passes the one redaction step (:mod:`worker.redact`). A closed pipe
(``status | head``) ends the command quietly. Exit code 0; 2 when the database cannot be
reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors

from worker import rights
from worker.database import aconnect, resolve_database_url
from worker.ops.metrics import HEARTBEAT_FRESH_SECONDS
from worker.ops.reads import (
    OPEN_BREAKER_STATES,
    active_stops,
    ai_job_counts,
    ai_job_due,
    ai_job_spend_since,
    breaker_states,
)
from worker.queries import q
from worker.redact import redact

LAST_ERRORS = 5
BATCH_LIMIT = 20
DAY_LIMIT = 10  # alerts, failed questions, jobs and batches listed (counts are complete)


def resume_statement(provider: str) -> str:
    """The exact SQL that lifts a provider stop (schema 0011)."""
    quoted = provider.replace("'", "''")
    return f"SELECT worker_resume_provider('{quoted}');"


async def _rows(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    cur = await conn.execute(q(name), params or {})
    return list(await cur.fetchall())


def _plain(v: Any) -> Any:
    """JSON-ready values: numbers as float/int, times as ISO text, ids as text."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, UUID):
        return str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


async def snapshot(url: str | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as plain JSON-ready data."""
    async with await aconnect(url, autocommit=True) as conn:
        questions = {r["status"]: int(r["n"]) for r in await _rows(conn, "ops_question_counts")}
        pending = (await _rows(conn, "ops_pending_summary"))[0]
        jobs: dict[str, dict[str, int]] = {}
        for r in await _rows(conn, "ops_jobs_by_queue"):
            jobs.setdefault(r["queue"], {})[r["status"]] = int(r["n"])
        due = {r["queue"]: r for r in await _rows(conn, "ops_queue_due")}
        workers = (await _rows(conn, "ops_workers", {"fresh_seconds": 30.0}))[0]
        batches = await _rows(conn, "ops_batches_in_flight_list", {"limit": BATCH_LIMIT})
        live = await _rows(conn, "ops_batches_live")
        since = (await _rows(conn, "ops_today_start"))[0]["since"]
        spend = await _rows(conn, "ops_spend_since", {"since": since})
        job_spend = await ai_job_spend_since(conn, since)
        errors = await _rows(conn, "ops_last_errors", {"limit": LAST_ERRORS})
        errors_24h = await _rows(conn, "ops_errors_24h_summary")
        credit = await _rows(conn, "ops_last_credit_check", {"provider": "openrouter"})
        ai_jobs = await ai_job_counts(conn)
        ai_due = await ai_job_due(conn)
        breakers = await breaker_states(conn)
        stops = await active_stops(conn)
        db = (await _rows(conn, "ops_database"))[0]
        processes = await _rows(conn, "ops_process_list")
        alerts = await _rows(conn, "ops_alerts_24h", {"limit": DAY_LIMIT})
        failed_q = await _rows(conn, "ops_failed_questions", {"limit": DAY_LIMIT})
        failed_q_n = (await _rows(conn, "ops_failed_questions_count"))[0]["n"]
        failed_jobs = await _rows(conn, "ops_failed_jobs", {"limit": DAY_LIMIT})
        failed_jobs_n = (await _rows(conn, "ops_failed_jobs_count"))[0]["n"]
        failed_batches = await _rows(conn, "ops_failed_batches", {"limit": DAY_LIMIT})

    spend_rows = [
        {
            "source": "commentary",
            "provider": r["provider"],
            "model": r["model_name"],
            "pricing": "batch" if r["batch_priced"] else "realtime",
            "requests": int(r["requests"]),
            "input_tokens": int(r["input_tokens"]),
            "output_tokens": int(r["output_tokens"]),
            "cost_usd": r["cost_usd"],
        }
        for r in spend
    ] + [
        {
            "source": "ai_jobs",
            "provider": r["provider"],
            "model": r["model_name"],
            "pricing": "realtime",
            "requests": int(r["requests"]),
            "input_tokens": int(r["input_tokens"]),
            "output_tokens": int(r["output_tokens"]),
            "cost_usd": r["cost_usd"],
        }
        for r in job_spend or []
    ]
    providers: dict[str, Any] = {
        "stopped": None
        if stops is None
        else [{**r, "resume": resume_statement(r["provider"])} for r in stops],
        "breakers_open": None
        if breakers is None
        else [b for b in breakers if str(b["state"]).lower() in OPEN_BREAKER_STATES],
        "breakers": None if breakers is None else breakers,
    }
    out = {
        "database": db,
        "checked_at": db["now"],
        "questions": {
            "by_status": questions,
            "pending": int(pending["pending"]),
            "oldest_pending_at": pending["oldest_pending_at"],
            "oldest_pending_age_seconds": pending["oldest_pending_age_seconds"],
            "processing": int(pending["processing"]),
            "oldest_processing_age_seconds": pending["oldest_processing_age_seconds"],
            # rows from before the install: their queue (claim) time is unknown, and the
            # oldest age above is a lower bound (schema/0015)
            "pending_without_queued_at": int(pending["pending_without_queued_at"]),
            "processing_without_claimed_at": int(pending["processing_without_claimed_at"]),
        },
        "queue": {
            name: {
                "by_status": counts,
                "due": int(due[name]["due"]) if name in due else 0,
                "oldest_due_age_seconds": due[name]["oldest_age_seconds"] if name in due else 0,
            }
            for name, counts in sorted(jobs.items())
        },
        "workers": {
            "processes": sum(
                1 for p in processes if p["heartbeat_age_seconds"] <= HEARTBEAT_FRESH_SECONDS
            ),
            "process_list": processes,
            "queue_workers_registered": int(workers["workers"]),
            "queue_workers_fresh": int(workers["fresh"]),
            "newest_heartbeat_age_seconds": workers["newest_heartbeat_age_seconds"],
        },
        "ai_jobs": None
        if ai_jobs is None
        else {
            "by_status": {r["status"]: int(r["n"]) for r in ai_jobs},
            "due": int(ai_due["due"]) if ai_due else None,
            "oldest_due_age_seconds": ai_due["oldest_age_seconds"] if ai_due else None,
        },
        "batches_in_flight": {
            "total": sum(int(r["n"]) for r in live),
            "by_provider_state": live,
            "oldest": batches,
        },
        "providers": providers,
        "spend_today": {
            "since": since,
            "total_usd": sum((Decimal(r["cost_usd"]) for r in spend_rows), Decimal(0)),
            "by_model": spend_rows,
        },
        "openrouter_credits": credit[0] if credit else None,
        "errors": {"last": errors, "last_24h_by_kind": errors_24h},
        "alerts_24h": alerts,
        "failed": {
            "questions": int(failed_q_n),
            "question_list": failed_q,
            "jobs_24h": int(failed_jobs_n),
            "job_list": failed_jobs,
            "batches_24h": failed_batches,
        },
    }
    plain: dict[str, Any] = _plain(out)
    return plain


# --------------------------------------------------------------------------- text


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _age_at_least(seconds: float | None, unknown: int) -> str:
    """An age; with rows of unknown time (from before the install) a lower bound."""
    if not unknown:
        return _age(seconds)
    return f">= {_age(seconds)} ({unknown:,} from before the install, time unknown)"


def _usd(v: Any) -> str:
    return f"${float(v or 0):,.4f}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _short(text: Any, limit: int = 100) -> str:
    msg = " ".join(str(text or "").split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _day_section(s: dict[str, Any]) -> list[str]:
    """Alerts of the last 24 h, failed questions, jobs and batches with their reasons."""
    lines: list[str] = []
    alerts = s["alerts_24h"]
    lines.append(f"Alerts (24 h)  {len(alerts) if alerts else 'none'}")
    for a in alerts:
        how = a["status"]
        if a["status"] == "rate_limited":
            how = "held back, sent in a digest" if a["delivered_with"] else "held back"
        extra = f" ×{1 + a['suppressed']}" if a["suppressed"] else ""
        lines.append(f"  {_age(a['age_seconds']):>8} ago  [{how}]{extra} {_short(a['title'], 90)}")
    f = s["failed"]
    if f["questions"]:
        lines.append(f"Failed questions {f['questions']:,}")
        for r in f["question_list"]:
            reason = r["last_error"] or "no reason recorded"
            where = f"{r['model_key']}: " if r["model_key"] else ""
            lines.append(f"  {r['id']}  {where}{_short(reason, 90)}")
        if f["questions"] > len(f["question_list"]):
            lines.append(f"  … and {f['questions'] - len(f['question_list']):,} more")
    if f["jobs_24h"]:
        lines.append(f"Failed realtime jobs (24 h) {f['jobs_24h']:,}")
        for r in f["job_list"]:
            lines.append(
                f"  #{r['id']} {r['kind']} {r['provider'] or '-'}/{r['model'] or '-'}"
                f" ({r['error_kind'] or 'error'}, {r['attempts']} failed calls):"
                f" {_short(r['error'], 80)}"
            )
        if f["jobs_24h"] > len(f["job_list"]):
            lines.append(f"  … and {f['jobs_24h'] - len(f['job_list']):,} more")
    if f["batches_24h"]:
        lines.append("Failed batches (24 h)")
        for r in f["batches_24h"]:
            state = r["state"]
            if r["provider_status"] and r["provider_status"] != state:
                state += f"/{r['provider_status']}"
            lines.append(
                f"  {_age(r['age_seconds']):>8} ago  {r['provider']} {r['stage']}"
                f" {r['model_key'] or ''} {state}"
                + (f" [{r['failure_cause']}]" if r.get("failure_cause") else "")
                + f" ({r['request_count']} requests,"
                f" {r['batch_id'] or 'never created'}): {_short(r['error'] or 'no reason given', 80)}"
            )
    lines.append("")
    return lines


def render_text(s: dict[str, Any]) -> str:
    lines: list[str] = []
    db = s["database"]
    lines.append(f"ai-worker status — database {db['name']} at {s['checked_at']}")
    lines.append("")

    qs = s["questions"]
    order = ["pending", "processing", "completed", "failed"]
    counts = [f"{k} {qs['by_status'].get(k, 0):,}" for k in order]
    counts += [f"{k} {v:,}" for k, v in sorted(qs["by_status"].items()) if k not in order]
    lines.append("Questions      " + "   ".join(counts))
    if qs["pending"]:
        lines.append(
            "               oldest pending "
            + _age_at_least(qs["oldest_pending_age_seconds"], qs["pending_without_queued_at"])
        )
    if qs["processing"]:
        lines.append(
            "               oldest claim "
            + _age_at_least(
                qs["oldest_processing_age_seconds"], qs["processing_without_claimed_at"]
            )
        )

    if s["ai_jobs"] is not None:
        aj = s["ai_jobs"]
        parts = [f"{k} {v:,}" for k, v in sorted(aj["by_status"].items())] or ["none"]
        line = "Realtime jobs  " + "   ".join(parts)
        if aj.get("due"):
            line += f"   (due {aj['due']:,}, oldest {_age(aj['oldest_due_age_seconds'])})"
        lines.append(line)

    queue_parts = []
    for name, qd in s["queue"].items():
        st = qd["by_status"]
        bit = f"{name}: {st.get('todo', 0)} todo, {st.get('doing', 0)} running"
        if qd["due"]:
            bit += f", {qd['due']} due (oldest {_age(qd['oldest_due_age_seconds'])})"
        if st.get("failed"):
            bit += f", {st['failed']} failed"
        queue_parts.append(bit)
    lines.append("Queue          " + ("; ".join(queue_parts) if queue_parts else "empty"))
    w = s["workers"]
    if w["processes"]:
        lines.append(
            f"Workers        {w['processes']} process{'es' if w['processes'] != 1 else ''}"
            f" alive ({w['queue_workers_fresh']} queue workers;"
            f" last heartbeat {_age(w['newest_heartbeat_age_seconds'])} ago)"
        )
        for p in w["process_list"]:
            if p["heartbeat_age_seconds"] > HEARTBEAT_FRESH_SECONDS:
                continue
            lines.append(f"               {p['hostname']} pid {p['pid']}: {', '.join(p['queues'])}")
    elif w["queue_workers_registered"]:
        lines.append(
            f"Workers        no process alive ({w['queue_workers_fresh']} of"
            f" {w['queue_workers_registered']} queue workers beat;"
            f" last heartbeat {_age(w['newest_heartbeat_age_seconds'])} ago)"
        )
    else:
        lines.append("Workers        none running")
    lines.append("")

    b = s["batches_in_flight"]
    lines.append(f"Batches in flight: {b['total']}")
    if b["oldest"]:
        rows = [
            [
                r["provider"],
                r["stage"],
                r["model_name"] or r["model_key"] or "",
                r["state"],
                r["provider_status"] or "",
                str(r["request_count"]),
                _age(r["age_seconds"]),
                str(r["poll_count"]),
                r["batch_id"] or "",
            ]
            for r in b["oldest"]
        ]
        lines += _table(
            [
                "PROVIDER",
                "STAGE",
                "MODEL",
                "STATE",
                "PROVIDER STATE",
                "REQS",
                "AGE",
                "POLLS",
                "BATCH",
            ],
            rows,
        )
        if b["total"] > len(b["oldest"]):
            lines.append(f"  … and {b['total'] - len(b['oldest'])} more")
    lines.append("")

    p = s["providers"]
    if p["stopped"] is None and p["breakers"] is None:
        lines.append("Providers      (resilience tables not installed)")
    else:
        issues = [f"{r['provider']} breaker {r['state'].upper()}" for r in p["breakers_open"] or []]
        stopped = p["stopped"] or []
        if not stopped:
            lines.append("Providers      " + ("; ".join(issues) if issues else "all running"))
        else:
            lines.append(
                f"Providers      {len(stopped)} STOPPED"
                + ("; " + "; ".join(issues) if issues else "")
            )
            for r in stopped:
                since = str(r["since"])[:16].replace("T", " ") if r.get("since") else "-"
                lines.append(
                    f"  {r['provider']} stopped ({r.get('kind') or 'stop'}) since {since}:"
                    f" {_short(r['reason'] or 'no reason', 110)}"
                )
                lines.append(f'    resume with: psql -c "{r["resume"]}"')

    sp = s["spend_today"]
    lines.append(f"Spend today    {_usd(sp['total_usd'])}")
    if sp["by_model"]:
        rows = [
            [
                r["provider"],
                r["model"] or "",
                r["pricing"],
                f"{r['requests']:,}",
                f"{r['input_tokens']:,}",
                f"{r['output_tokens']:,}",
                _usd(r["cost_usd"]),
            ]
            for r in sp["by_model"]
        ]
        lines += _table(
            ["PROVIDER", "MODEL", "PRICING", "RESULTS", "IN TOKENS", "OUT TOKENS", "COST"], rows
        )
    c = s["openrouter_credits"]
    if c is None:
        lines.append("OpenRouter     no credit check yet")
    elif c["level"] == "error":
        lines.append(
            f"OpenRouter     credit check failed {_age(c['age_seconds'])} ago: {c['error']}"
        )
    else:
        lines.append(
            f"OpenRouter     {_usd(c['remaining_usd'])} left, {_usd(c['usage_today_usd'])} used"
            f" today — {c['level']} (checked {_age(c['age_seconds'])} ago)"
        )
    lines.append("")

    lines += _day_section(s)
    e = s["errors"]
    if e["last_24h_by_kind"]:
        kinds = ", ".join(
            f"{r['kind']}{'/' + r['provider'] if r['provider'] else ''} ×{r['occurrences']}"
            for r in e["last_24h_by_kind"]
        )
        lines.append(f"Errors (24 h)  {kinds}")
    else:
        lines.append("Errors (24 h)  none")
    if e["last"]:
        lines.append("Last errors")
        for r in e["last"]:
            msg = " ".join(str(r["message"]).split())
            if len(msg) > 100:
                msg = msg[:99] + "…"
            where = r["provider"] or "-"
            lines.append(
                f"  {_age(r['age_seconds']):>8} ago  {where:<10} {r['kind']:<18}"
                f" ×{r['occurrences']:<4} {msg}"
            )
    return "\n".join(lines) + "\n"


def main(as_json: bool = False) -> int:
    try:
        url = resolve_database_url()
        data = asyncio.run(snapshot(url))
    except (psycopg.OperationalError, OSError) as exc:
        print(redact(f"error: database not reachable: {exc}"), file=sys.stderr)
        return 2
    except psycopg.errors.InsufficientPrivilege as exc:
        role = psycopg.conninfo.conninfo_to_dict(url).get("user") or "?"
        print(redact(f"error: {rights.explain(exc, str(role))}"), file=sys.stderr)
        return 2
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n" if as_json else render_text(data)
    return write_out(redact(text))


def write_out(text: str) -> int:
    """Print ``text``; a reader that went away (``status | head``) is not an error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
