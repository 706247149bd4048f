"""Shared pieces of the benchmarks: a fresh migrated database, an emulator process, worker
processes, and the `BENCH {json}` line every benchmark prints for run_all to collect."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from worker.database import resolve_database_url, with_database
from worker.migrate import migrate

# The three batch models every pipeline benchmark runs (comments + a summary by chatgpt).
MODELS = {
    "chatgpt": {"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"},
    "gemini": {"provider": "gemini", "model": "gemini-2.5-flash", "mode": "batch"},
    "mistral": {"provider": "mistral", "model": "mistral-small-latest", "mode": "batch"},
}
ENABLED = {"chatgpt": True, "gemini": True, "mistral": True}


def emit(
    figure: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_label: str = "",
    target: str = "",
    better: str = "higher",
) -> None:
    ratio = None
    if baseline:
        ratio = value / baseline
    print(
        "BENCH "
        + json.dumps(
            {
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                "baseline": None if baseline is None else round(baseline, 3),
                "baseline_label": baseline_label,
                "ratio": None if ratio is None else round(ratio, 3),
                "target": target,
                "better": better,
            },
            ensure_ascii=False,
        ),
        flush=True,
    )


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


@contextmanager
def fresh_database(prefix: str = "bench") -> Iterator[str]:
    server = resolve_database_url()
    name = f"aiw_{os.getpid()}_{prefix}_{uuid.uuid4().hex[:6]}"
    admin = with_database(server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """Run `python -m worker emulator` in its own process; yield its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "emulator", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(base + "/_emulator/health", timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise RuntimeError("emulator process exited") from None
                time.sleep(0.1)
        else:
            raise RuntimeError("emulator did not answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def emulator_env(base: str) -> dict[str, str]:
    env = {
        "OPENAI_BASE_URL": f"{base}/openai/v1",
        "GEMINI_BASE_URL": f"{base}/gemini",
        "MISTRAL_BASE_URL": f"{base}/mistral",
    }
    for p in ("perplexity", "deepseek", "openrouter", "ollama"):
        env[f"{p.upper()}_BASE_URL"] = f"{base}/{p}/v1"
    for p in ("OPENAI", "GEMINI", "MISTRAL", "PERPLEXITY", "DEEPSEEK", "OPENROUTER"):
        env[f"{p}_API_KEY"] = "bench"
    return env


def worker_env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = url
    env["LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def set_settings(url: str, **values: Any) -> None:
    """One UPDATE of the settings row (the row is validated as a whole by its trigger)."""
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE ai_commentary_settings SET {}").format(assignments),
            [json.dumps(v) if isinstance(v, dict) else v for v in values.values()],
        )
