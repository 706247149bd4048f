"""``make demo`` / ``python -m worker demo``: the whole pipeline on ~50 sample questions.

Finds or starts a database (DATABASE_URL, else 127.0.0.1:5432, else an embedded Postgres
under .data/), uses a database of its own (``ai_worker_demo``, or ``DEMO_DATABASE_URL``),
migrates it, starts the built-in provider emulator when no provider key is set, inserts the
sample questions (German exam-style questions written for this project), runs a real worker
process until idle and shows the product: first one question in full (each model's answer,
general comment and comments A–E, and the summary), then a compact table of the rest in the
sample file's order, what this run sent and what it cost (on the emulator: what it would
cost), and the command that opens the results with psql. With real keys (OPENAI_API_KEY,
GEMINI_API_KEY, MISTRAL_API_KEY, ...) the same command uses the real providers — Batch APIs
can take hours then.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from worker.config import get_settings
from worker.database import connect, resolve_database_url, with_database
from worker.migrate import migrate
from worker.queries import q

DEMO_DB = "ai_worker_demo"
FILENAME = "demo-sample.json"
BATCH_MODELS = {"chatgpt": "openai", "gemini": "gemini", "mistral": "mistral"}
INSTANT_MODELS = {"perplexity": "perplexity", "deepseek": "deepseek"}
WIDTH = 100


def load_questions() -> list[dict[str, Any]]:
    text = resources.files("worker").joinpath("data/sample_questions.json").read_text("utf-8")
    data: list[dict[str, Any]] = json.loads(text)
    return data


def _ensure_database(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(q("demo_database_exists"), (DEMO_DB,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    return with_database(server_url, DEMO_DB)


def _start_emulator() -> Any:
    from worker.emulator import Emulator, EmulatorConfig

    emu = Emulator(host="127.0.0.1", port=0, config=EmulatorConfig(state_seconds=0.5))
    emu.start()
    os.environ.update(emu.env())
    get_settings.cache_clear()
    return emu


def _server_kind(url: str) -> str:
    host = str(psycopg.conninfo.conninfo_to_dict(url).get("host") or "")
    return "the embedded Postgres (.data/pg)" if host.startswith("/") else f"the server {host}"


def _wrap(text: str | None, indent: str) -> str:
    return textwrap.fill(
        " ".join((text or "—").split()),
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
    )


def main(n: int | None = None) -> int:
    settings = get_settings()
    keys = {
        p: settings.api_key(p) for p in ("openai", "gemini", "mistral", "perplexity", "deepseek")
    }
    have_keys = any(k is not None and k.get_secret_value() for k in keys.values())
    demo_url = settings.demo_database_url
    url = demo_url or _ensure_database(resolve_database_url())
    os.environ["DATABASE_URL"] = url
    dbname = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    emu = None if have_keys else _start_emulator()
    print("=" * WIDTH)
    if emu is not None:
        print("pg-ai-worker demo — providers: the BUILT-IN EMULATOR (no API keys are set)")
        print(
            _wrap(
                "The emulator speaks the OpenAI, Gemini and Mistral APIs so the real pipeline "
                "runs end to end without cost, but its answers are deterministic filler, not "
                "medicine: the chosen letters are right by chance (~20%) and the comments are "
                "placeholder German. What the demo shows is the product — every question "
                "reviewed by every model, comments per option, a summary, costs, all in "
                "Postgres. Set OPENAI_API_KEY (and the others) for real answers.",
                "  ",
            )
        )
    else:
        print("pg-ai-worker demo — providers: the REAL APIs (keys found in the environment)")
        print(
            _wrap(
                "Answers are the models' own; this costs money (Batch APIs at half price) and "
                "batches can take minutes to hours.",
                "  ",
            )
        )
    print(f"  database: {dbname} on {_server_kind(url)}")
    print("=" * WIDTH)
    for name in migrate(url):
        print(f"  applied {name}")
    settings = get_settings()
    enabled = {
        m: settings.api_key(p) is not None for m, p in {**BATCH_MODELS, **INSTANT_MODELS}.items()
    }
    if emu is not None:
        enabled["deepseek"] = False  # one instant model keeps the demo table readable
    questions = load_questions()[: n or None]
    with connect(url, autocommit=True) as conn:
        conn.execute(q("demo_settings"), (json.dumps(enabled),))
        conn.execute(q("demo_clear"), (FILENAME,))
        row = conn.execute(q("demo_now")).fetchone()
        run_started: datetime = row["t"] if row else datetime.now()
        ids: list[Any] = []
        with conn.cursor() as cur:
            for question in questions:  # one by one: the ids keep the sample file's order
                cur.execute(q("demo_insert_question"), {**question, "filename": FILENAME})
                got = cur.fetchone()
                ids.append(got["id"] if got else None)
    models_on = [m for m, on in enabled.items() if on]
    print(
        f"inserted {len(questions)} questions; models: {', '.join(models_on)} "
        "(+ a summary per question); running a worker until everything is done…"
    )
    started = time.monotonic()
    env = dict(os.environ)
    env.setdefault("POLL_MIN_SECONDS", "0.5" if emu else "30")
    env.setdefault("POLL_MAX_SECONDS", "2" if emu else "600")
    env.setdefault("LOG_LEVEL", "WARNING")
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--until-idle"], env=env)
    elapsed = time.monotonic() - started
    if emu is not None:
        emu.stop()
    if proc.returncode != 0:
        print("worker did not finish cleanly", file=sys.stderr)
        return proc.returncode
    report(url, ids, elapsed, run_started, emulated=emu is not None, server=_server_kind(url))
    return 0


def _open_command(url: str) -> list[str]:
    """How to open the demo database with psql, from a new shell."""
    d = psycopg.conninfo.conninfo_to_dict(url)
    host = str(d.get("host") or "")
    lines = []
    if not host.startswith("/") and shutil.which("psql"):
        user = f"{d['user']}@" if d.get("user") else ""
        lines.append(
            f"  psql 'postgresql://{user}{host}:{d.get('port') or 5432}/{d.get('dbname')}'"
        )
    # works for every server, the embedded one included (it starts it again, with the
    # psql binary shipped in the pgserver wheel when none is installed)
    lines.append(f"  .venv/bin/python -m worker db psql {d.get('dbname')}")
    return lines


def report(
    url: str,
    ids: list[Any],
    elapsed: float,
    run_started: datetime,
    *,
    emulated: bool,
    server: str = "",
) -> None:
    order = {qid: i for i, qid in enumerate(ids)}
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(q("demo_questions"), (ids,)).fetchall()
        comments = conn.execute(q("demo_comments"), (ids,)).fetchall()
        summaries = {
            s["question_id"]: s for s in conn.execute(q("demo_summaries"), (ids,)).fetchall()
        }
        spend = conn.execute(q("demo_spend"), (ids,)).fetchone()
        batches = conn.execute(q("demo_batches"), (run_started,)).fetchall()
    rows.sort(key=lambda r: order.get(r["id"], 0))
    by_q: dict[Any, dict[str, dict[str, Any]]] = {}
    for c in comments:
        by_q.setdefault(c["question_id"], {})[c["model_key"]] = c
    models = sorted({c["model_key"] for c in comments})
    if rows:
        print()
        _show_one(rows[0], by_q.get(rows[0]["id"], {}), summaries.get(rows[0]["id"]))
    _table(rows, by_q, summaries, models)
    done = sum(1 for r in rows if r["status"] == "completed")
    print(f"  {done}/{len(rows)} questions completed in {elapsed:.1f}s.")
    if batches:
        sent = ", ".join(
            f"{b['n']} {b['provider']} batch{'es' if b['n'] != 1 else ''}" for b in batches
        )
        print(
            _wrap(
                f"This run sent {sent} (comments, then summaries); instant models were "
                "called directly.",
                "  ",
            )
        )
    if spend:
        tokens, cost, list_cost = int(spend["tokens"]), spend["cost"], spend["list_cost"]
        if emulated:
            text = (
                f"{spend['requests']} answers, {tokens:,} tokens: nothing was spent (emulator);"
                f" with the real APIs this would cost ${float(cost):.4f} at the batch prices"
                f" used (${float(list_cost):.4f} at list price)."
            )
        else:
            text = (
                f"{spend['requests']} answers, {tokens:,} tokens: cost ${float(cost):.4f}"
                f" (${float(list_cost):.4f} at list price; the Batch APIs halve it)."
            )
        print(_wrap(text, "  "))
    print()
    print(f"Open the results (questions, ai_answer_comments, ai_commentary_summaries, {server}):")
    for line in _open_command(url):
        print(line)
    print("  then e.g.: SELECT * FROM ai_answer_comments_wide LIMIT 3;")


def _show_one(row: dict[str, Any], comments: dict[str, dict[str, Any]], summary: Any) -> None:
    letters = "ABCDE" if (row["option_e"] or "").strip() else "ABCD"
    print("-" * WIDTH)
    print(
        f"Question 1 in full ({row['subject'] or 'no subject'}; official answer "
        f"{row['correct_answer'] or '?'}; status {row['status']})"
    )
    print(_wrap(row["question"], "  "))
    for letter in letters:
        print(_wrap(f"{letter}) {row['option_' + letter.lower()]}", "    "))
    for key, c in comments.items():
        mark = "✓" if c["chosen_answer"] == row["correct_answer"] else "✗"
        how = "batch" if c["batch_priced"] else "instant"
        print()
        print(
            f"  {key} ({c['provider']} {c['model_name']}, {how}): chose {c['chosen_answer']} {mark}"
        )
        print(_wrap(c["general_comment"], "      "))
        for letter in letters:
            print(_wrap(f"{letter}: {c['comment_' + letter.lower()]}", "      "))
    if summary is not None:
        print()
        print("  Summary (Zusammenfassung):")
        print(_wrap(summary["summary_general_comment"], "      "))
        for letter in letters:
            print(_wrap(f"{letter}: {summary['summary_comment_' + letter.lower()]}", "      "))
        print(_wrap(f"Models: {summary['model_agreement_analysis']}", "      "))
    print("-" * WIDTH)


def _table(
    rows: list[dict[str, Any]],
    by_q: dict[Any, dict[str, dict[str, Any]]],
    summaries: dict[Any, Any],
    models: list[str],
) -> None:
    widths = [max(len(m), 5) for m in models]
    head = f"{'#':>3} {'Fach':<16} {'Frage':<40} {'Lsg':^3} " + " ".join(
        f"{m:^{w}}" for m, w in zip(models, widths, strict=True)
    )
    print()
    print("All questions in the sample file's order: each model's chosen answer (✓ = official)")
    print(head)
    print("-" * len(head))
    right = dict.fromkeys(models, 0)
    for i, r in enumerate(rows, 1):
        cells = []
        for m, w in zip(models, widths, strict=True):
            a = by_q.get(r["id"], {}).get(m, {}).get("chosen_answer")
            ok = a is not None and a == r["correct_answer"]
            right[m] += ok
            cells.append(f"{(a or '-') + (' ✓' if ok else ' ✗' if a else ''):^{w}}")
        question = textwrap.shorten(r["question"], 40, placeholder="…")
        line = (
            f"{i:>3} {(r['subject'] or '')[:16]:<16} {question:<40} "
            f"{r['correct_answer'] or '?':^3} " + " ".join(cells)
        )
        print(line.rstrip())
        if r["status"] != "completed":
            print(f"      status: {r['status']} {r['error'] or ''}")
        elif r["id"] not in summaries:
            print("      (no summary)")
    print("-" * len(head))
    print("  correct answers: " + ", ".join(f"{m} {right[m]}/{len(rows)}" for m in models))
