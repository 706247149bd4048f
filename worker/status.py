"""``python -m worker status [--json]``: what the worker is doing, read from the database.

Sections: questions by status (with the oldest pending), queue jobs, workers' heartbeat,
realtime ai_jobs (when that lane is installed), provider batches in flight (age and raw
provider state), providers stopped or with an open breaker (when the resilience tables
exist), spend today, the last OpenRouter credit check and the last errors.

Exit code 0; 2 when the database cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg

from worker.database import aconnect, resolve_database_url
from worker.metrics import (
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
        "stopped": None if stops is None else stops,
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
            "registered": int(workers["workers"]),
            "fresh": int(workers["fresh"]),
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


def _usd(v: Any) -> str:
    return f"${float(v or 0):,.4f}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


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
        lines.append(f"               oldest pending {_age(qs['oldest_pending_age_seconds'])}")
    if qs["processing"]:
        lines.append(f"               oldest claim {_age(qs['oldest_processing_age_seconds'])}")

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
    if w["registered"]:
        lines.append(
            f"Workers        {w['fresh']} alive of {w['registered']} registered"
            f" (last heartbeat {_age(w['newest_heartbeat_age_seconds'])} ago)"
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
        issues = [
            f"{r['provider']} STOPPED ({r['reason'] or 'no reason'}"
            + (f", since {str(r['since'])[:16].replace('T', ' ')}" if r.get("since") else "")
            + ")"
            for r in p["stopped"] or []
        ]
        issues += [
            f"{r['provider']} breaker {r['state'].upper()}" for r in p["breakers_open"] or []
        ]
        lines.append("Providers      " + ("; ".join(issues) if issues else "all running"))

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
        print(f"error: database not reachable: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(redact(json.dumps(data, indent=2, ensure_ascii=False)))
    else:
        sys.stdout.write(redact(render_text(data)))
    return 0
