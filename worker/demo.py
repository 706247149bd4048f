"""``make demo`` / ``python -m worker demo``: the whole pipeline on ~50 sample questions.

Finds or starts a database (DATABASE_URL, else 127.0.0.1:5432, else an embedded Postgres
under .data/), uses a database of its own (``ai_worker_demo``), migrates it, starts the
built-in provider emulator when no provider key is set, inserts the sample questions
(German exam-style questions written for this project), runs a real worker process until
idle and prints, per question, each model's chosen answer against the correct one and the
summary. With real keys (OPENAI_API_KEY, GEMINI_API_KEY, MISTRAL_API_KEY, ...) the same
command uses the real providers — Batch APIs can take hours then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from worker.config import get_settings
from worker.database import connect, resolve_database_url, with_database
from worker.migrate import migrate

DEMO_DB = "ai_worker_demo"
FILENAME = "demo-sample.json"
BATCH_MODELS = {"chatgpt": "openai", "gemini": "gemini", "mistral": "mistral"}
INSTANT_MODELS = {"perplexity": "perplexity", "deepseek": "deepseek"}


def load_questions() -> list[dict[str, Any]]:
    text = resources.files("worker").joinpath("data/sample_questions.json").read_text("utf-8")
    data: list[dict[str, Any]] = json.loads(text)
    return data


def _ensure_database(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    return with_database(server_url, DEMO_DB)


def _start_emulator() -> Any:
    from worker.emulator import Emulator, EmulatorConfig

    emu = Emulator(host="127.0.0.1", port=0, config=EmulatorConfig(state_seconds=0.5))
    emu.start()
    env = {
        "OPENAI_BASE_URL": emu.openai_base_url,
        "GEMINI_BASE_URL": emu.gemini_base_url,
        "MISTRAL_BASE_URL": emu.mistral_base_url,
        "PERPLEXITY_BASE_URL": emu.compat_base_url("perplexity"),
        "DEEPSEEK_BASE_URL": emu.compat_base_url("deepseek"),
        "OPENROUTER_BASE_URL": emu.compat_base_url("openrouter"),
    }
    for p in ("OPENAI", "GEMINI", "MISTRAL", "PERPLEXITY", "DEEPSEEK", "OPENROUTER"):
        env[f"{p}_API_KEY"] = "emulator"
    os.environ.update(env)
    get_settings.cache_clear()
    return emu


def main(n: int | None = None) -> int:
    settings = get_settings()
    keys = {
        p: settings.api_key(p) for p in ("openai", "gemini", "mistral", "perplexity", "deepseek")
    }
    have_keys = any(k is not None and k.get_secret_value() for p, k in keys.items())
    server = resolve_database_url()
    url = os.environ.get("DEMO_DATABASE_URL") or _ensure_database(server)
    os.environ["DATABASE_URL"] = url
    print(
        f"database: {psycopg.conninfo.conninfo_to_dict(url).get('dbname')} "
        f"on {'embedded postgres' if 'host=/' in url or '?host=/' in url else 'local server'}"
    )
    for name in migrate(url):
        print(f"  applied {name}")
    emu = None
    if not have_keys:
        emu = _start_emulator()
        print(f"providers: built-in emulator at {emu.base_url} (no API keys set)")
    else:
        print("providers: real APIs (keys found in the environment)")
    settings = get_settings()
    enabled = {
        m: settings.api_key(p) is not None for m, p in {**BATCH_MODELS, **INSTANT_MODELS}.items()
    }
    if emu is not None:
        enabled["deepseek"] = False  # one instant model keeps the demo table readable
    questions = load_questions()[: n or None]
    with connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_commentary_settings SET feature_enabled = true, batch_size = 100,"
            " processing_delay_minutes = 0, models_enabled = %s",
            (json.dumps(enabled),),
        )
        conn.execute("DELETE FROM questions WHERE filename = %s", (FILENAME,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
                " correct_answer, comment, subject, filename, ai_commentary_status)"
                " VALUES (%(question)s, %(option_a)s, %(option_b)s, %(option_c)s, %(option_d)s,"
                " %(option_e)s, %(correct_answer)s, %(comment)s, %(subject)s, %(filename)s, 'pending')",
                [{**q, "filename": FILENAME} for q in questions],
            )
    print(
        f"inserted {len(questions)} questions; models: "
        + ", ".join(m for m, on in enabled.items() if on)
    )
    started = time.monotonic()
    env = dict(os.environ)
    env.setdefault("POLL_MIN_SECONDS", "0.5" if emu else "30")
    env.setdefault("POLL_MAX_SECONDS", "2" if emu else "600")
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--until-idle"], env=env)
    elapsed = time.monotonic() - started
    if emu is not None:
        emu.stop()
    if proc.returncode != 0:
        print("worker did not finish cleanly", file=sys.stderr)
        return proc.returncode
    report(url, elapsed)
    return 0


def report(url: str, elapsed: float) -> None:
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT q.id, q.subject, q.question, q.correct_answer, q.ai_commentary_status AS status,"
            " q.ai_commentary_error AS error, s.summary_general_comment AS summary,"
            " coalesce(jsonb_object_agg(c.model_key, c.chosen_answer)"
            "   FILTER (WHERE c.model_key IS NOT NULL), '{}') AS chosen"
            " FROM questions q"
            " LEFT JOIN ai_answer_comments c ON c.question_id = q.id"
            " LEFT JOIN ai_commentary_summaries s ON s.question_id = q.id"
            " WHERE q.filename = %s GROUP BY q.id, s.summary_general_comment"
            " ORDER BY q.created_at, q.id",
            (FILENAME,),
        ).fetchall()
        models = sorted({m for r in rows for m in r["chosen"]})
        spend = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0) AS usd, coalesce(sum(input_tokens + output_tokens), 0) AS tok"
            " FROM ai_answer_comments c JOIN questions q ON q.id = c.question_id WHERE q.filename = %s",
            (FILENAME,),
        ).fetchone()
        batches = conn.execute(
            "SELECT provider, count(*) AS n FROM ai_commentary_batch_jobs GROUP BY 1 ORDER BY 1"
        ).fetchall()
    head = f"{'#':>3} {'Fach':<18} {'Frage':<44} {'Lsg':^3} " + " ".join(
        f"{m[:8]:^8}" for m in models
    )
    print()
    print(head)
    print("-" * len(head))
    right = dict.fromkeys(models, 0)
    for i, r in enumerate(rows, 1):
        cells = []
        for m in models:
            a = r["chosen"].get(m)
            ok = a == r["correct_answer"]
            right[m] += ok
            cells.append(f"{(a or '-') + (' ✓' if ok else ' ✗' if a else ''):^8}")
        question = textwrap.shorten(r["question"], 44, placeholder="…")
        print(
            f"{i:>3} {(r['subject'] or '')[:18]:<18} {question:<44} {r['correct_answer'] or '?':^3} "
            + " ".join(cells)
        )
        if r["summary"]:
            print(f"    Zusammenfassung: {textwrap.shorten(r['summary'], 100, placeholder='…')}")
        elif r["status"] != "completed":
            print(f"    status: {r['status']} {r['error'] or ''}")
    print("-" * len(head))
    print("    correct answers: " + ", ".join(f"{m} {right[m]}/{len(rows)}" for m in models))
    done = sum(1 for r in rows if r["status"] == "completed")
    print(
        f"    {done}/{len(rows)} questions completed in {elapsed:.1f}s; "
        f"batches: "
        + ", ".join(f"{b['provider']} {b['n']}" for b in batches)
        + f"; tokens {spend['tok'] if spend else 0}, cost ${float(spend['usd'] if spend else 0):.4f}"
    )
    print("    (emulator answers are deterministic filler, not medicine: expect ~20% correct)")
