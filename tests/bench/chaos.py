"""Chaos suite (`make chaos`): the worker keeps every question through killed workers, a
Postgres restart, terminated connections and a misbehaving provider.

Everything is real: a private Postgres cluster (tests/fixtures/private_pg.py; the shared
server is never touched), the provider emulator in its own process (batches stay in each
state for 0.5 s), and `python -m worker run --processes 2` as a process group. Each scenario
gets a fresh database with CHAOS_QUESTIONS questions (default 2,000) and runs its fault
while the worker works; then faults are switched off and the worker runs until the
database is settled. The audit afterwards:

  completed / failed  every question must be one of the two, failed only with a reason
  lost                anything else (pending, processing, failed without a reason)
  duplicates          comment rows beyond one per (question, model), summaries beyond one
                      per question (impossible by the unique keys; counted anyway)
  paid twice          custom_ids the emulator saw in two batches that both succeeded

"queue full" and "lost responses" (issue 12) model real provider limits: an OpenAI
enqueued-token limit at a tenth of the backlog, and 30% of creates and uploads losing their
answer after the side effect.

Prints the scenario table and `BENCH {json}` lines; exits 1 if anything is lost, duplicated
or paid twice.  CHAOS_SCENARIOS=sigkill,pg_restart limits the run to some scenarios.
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.bench.common import emit, emulator_env, emulator_process, set_settings, worker_env
from tests.fixtures.private_pg import PrivateCluster
from tests.fixtures.worker_proc import (
    OPEN_WORK,
    WorkerProcess,
    audit,
    query_one,
    terminate_worker_backends,
)
from worker.migrate import migrate

N = int(os.environ.get("CHAOS_QUESTIONS", "2000"))
FAULT_SECONDS = float(os.environ.get("CHAOS_FAULT_SECONDS", "40"))
SETTLE_TIMEOUT = float(os.environ.get("CHAOS_SETTLE_TIMEOUT", "240"))
SEED = int(os.environ.get("CHAOS_SEED", "5"))

MODELS = {
    "chatgpt": {"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"},
    "gemini": {"provider": "gemini", "model": "gemini-2.5-flash", "mode": "batch"},
    "mistral": {"provider": "mistral", "model": "mistral-small-latest", "mode": "batch"},
    "perplexity": {"provider": "perplexity", "model": "sonar", "mode": "instant"},
}
ENABLED = {"chatgpt": True, "gemini": True, "mistral": True, "perplexity": True}

INSERT = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
    " correct_answer, subject, ai_commentary_status)"
    " SELECT 'Chaos ' || g || ': Welches Organ produziert Insulin?', 'Leber', 'Pankreas',"
    " 'Milz', 'Niere', 'Herz', 'B', 'Physiologie', 'pending' FROM generate_series(1, %s) g"
)

WORKER_EXTRA = {
    "TICK_SECONDS": "2",
    "WORKER_STALLED_SECONDS": "6",
    "SHUTDOWN_GRACEFUL_SECONDS": "20",
    "POLL_MIN_SECONDS": "0.3",
    "POLL_MAX_SECONDS": "2",
    "FETCH_JOB_POLLING_INTERVAL": "0.5",
    "PROVIDER_TIMEOUT_SECONDS": "10",
    "INSTANT_CONCURRENCY": "16",
    "LOG_LEVEL": "WARNING",
    "TOKEN_LIMIT_HOLD_SECONDS": "2",
}


@dataclass
class Ctx:
    cluster: PrivateCluster
    url: str
    emulator: str
    env: dict[str, str]
    log: Path
    rng: random.Random
    worker: WorkerProcess
    events: list[str]

    def start_worker(self) -> None:
        self.worker = WorkerProcess(self.env, self.log, "--processes", "2")

    def configure(self, **fields: Any) -> None:
        httpx.post(f"{self.emulator}/_emulator/config", json=fields, timeout=10).raise_for_status()

    def open_work(self) -> int:
        try:
            return int(query_one(self.url, OPEN_WORK)["open"])
        except psycopg.OperationalError:
            return -1


def _fault_window(ctx: Ctx, seconds: float) -> None:
    """Let the worker run for ``seconds`` or until the work is done, whichever is first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and ctx.open_work() != 0:
        time.sleep(0.5)


def sigkill(ctx: Ctx) -> None:
    """SIGKILL 20 times at random moments: odd kills hit one worker child (its supervisor
    restarts it), even kills the whole process group (restarted here)."""
    import signal

    import psutil

    for i in range(20):
        time.sleep(ctx.rng.uniform(0.5, 3.0))
        if i % 2 == 0:
            kids = psutil.Process(ctx.worker.pid).children()
            if kids:
                victim = ctx.rng.choice(kids)
                os.kill(victim.pid, signal.SIGKILL)
                ctx.events.append(f"kill child {victim.pid}")
                continue
        ctx.worker.kill()
        ctx.events.append("kill group")
        ctx.start_worker()


def pg_restart(ctx: Ctx) -> None:
    """Postgres stopped (fast shutdown: every connection cut) for 5 s, twice; then an
    immediate (crash-like) stop with recovery."""
    for mode, down in (("fast", 5.0), ("fast", 5.0), ("immediate", 3.0)):
        time.sleep(ctx.rng.uniform(3.0, 6.0))
        ctx.cluster.restart(down_seconds=down, mode=mode)
        ctx.events.append(f"restart {mode} {down:.0f}s")


def terminate(ctx: Ctx) -> None:
    """pg_terminate_backend of every worker connection, 15 times, 0.5-2 s apart."""
    for _ in range(15):
        time.sleep(ctx.rng.uniform(0.5, 2.0))
        ctx.events.append(f"terminated {terminate_worker_backends(ctx.url)}")


def line_failures(ctx: Ctx) -> None:
    ctx.configure(line_failure_rate=0.2)
    _fault_window(ctx, FAULT_SECONDS)


def rate_limits(ctx: Ctx) -> None:
    ctx.configure(
        http_faults=[{"kind": "rate_limit", "provider": "*", "count": None, "probability": 0.3}]
    )
    _fault_window(ctx, FAULT_SECONDS / 2)


def server_errors(ctx: Ctx) -> None:
    ctx.configure(
        http_faults=[{"kind": "server", "provider": "*", "count": None, "probability": 0.3}]
    )
    _fault_window(ctx, FAULT_SECONDS / 2)


def emulator_down(ctx: Ctx) -> None:
    time.sleep(3)
    ctx.configure(down=True)
    ctx.events.append("emulator down")
    time.sleep(30)
    ctx.configure(down=False)
    ctx.events.append("emulator up")


def _backlog_tokens_per_model() -> int:
    """The emulator's queue count of one model's comment requests for all N questions."""
    import json as _json

    from worker.commentary import prompts
    from worker.commentary.schemas import COMMENTARY_SCHEMA
    from worker.emulator.limits import estimate_openai_line_tokens
    from worker.providers.base import ChatRequest
    from worker.providers.jsonl import request_line_encoder

    q = prompts.QuestionText(
        question=f"Chaos {N}: Welches Organ produziert Insulin?",
        option_a="Leber",
        option_b="Pankreas",
        option_c="Milz",
        option_d="Niere",
        option_e="Herz",
        subject="Physiologie",
        correct_answer="B",
    )
    req = ChatRequest(
        custom_id="x",
        system_prompt=prompts.SYSTEM_DE_V1,
        user_prompt=prompts.user_prompt(q, None),
        schema_name="commentary",
        json_schema=COMMENTARY_SCHEMA,
    )
    body = _json.loads(request_line_encoder("openai", "gpt-4.1-mini")(req))["body"]
    return N * estimate_openai_line_tokens(body)


def queue_full(ctx: Ctx) -> None:
    """The OpenAI enqueued-token limit at a tenth of the backlog (comments alone; the
    summaries on the same model add more), left on until the end; the worker's limits table
    keeps its tier-1 default (2,000,000), so it must learn the real limit from the
    token_limit_exceeded failures."""
    limit = max(1000, _backlog_tokens_per_model() // 10)
    ctx.configure(openai_enqueued_tokens_per_model=limit, openai_failed_tokens_hold_seconds=2.0)
    ctx.events.append(f"openai enqueued-token limit {limit}")
    _fault_window(ctx, FAULT_SECONDS)


def lost_responses(ctx: Ctx) -> None:
    """30% of batch creates and file uploads lose their answer (500 or dropped connection)
    after the batch or file was created."""
    ctx.configure(lost_response_rate=0.3)
    _fault_window(ctx, FAULT_SECONDS)


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "sigkill x20": sigkill,
    "postgres restart": pg_restart,
    "terminate connections": terminate,
    "20% failed lines": line_failures,
    "429 rate limits": rate_limits,
    "500 server errors": server_errors,
    "emulator down 30s": emulator_down,
    "queue full": queue_full,
    "lost responses": lost_responses,
}
HEALTHY = {"line_failure_rate": 0.0, "http_faults": [], "down": False, "lost_response_rate": 0.0}


def run_scenario(
    name: str, fault: Callable[[Ctx], None], cluster: PrivateCluster, base: str, logdir: Path
) -> dict[str, Any]:
    db = f"chaos_{name.split()[0].strip('%').lower()}_{uuid.uuid4().hex[:6]}"
    url = cluster.create_database(db, template="chaos_tmpl")
    set_settings(
        url,
        models=MODELS,
        models_enabled=ENABLED,
        batch_size=500,
        processing_delay_minutes=0,
    )
    httpx.post(f"{base}/_emulator/reset", timeout=10).raise_for_status()
    httpx.post(
        f"{base}/_emulator/config", json={"state_seconds": 0.5, "seed": SEED}, timeout=10
    ).raise_for_status()
    env = worker_env(url, **emulator_env(base), **WORKER_EXTRA)
    log = logdir / f"{db}.log"
    ctx = Ctx(cluster, url, base, env, log, random.Random(SEED), None, [])  # type: ignore[arg-type]
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(INSERT, (N,))
    ctx.start_worker()
    try:
        fault(ctx)
        ctx.configure(**HEALTHY)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline and ctx.open_work() != 0:
            if not ctx.worker.alive():
                ctx.events.append(f"worker exited {ctx.worker.proc.returncode}; restarted")
                ctx.start_worker()
            time.sleep(1.0)
        settled = time.monotonic() - started
    finally:
        code = ctx.worker.terminate(40) if ctx.worker.alive() else ctx.worker.proc.returncode
    stats = httpx.get(f"{base}/_emulator/stats", timeout=30).json()
    row = audit(url, stats)
    row.update(scenario=name, seconds=round(settled), exit_code=code, log=str(log))
    row["responses_lost"] = sum(int(s.get("responses_lost", 0)) for s in stats.values())
    with psycopg.connect(url, autocommit=True) as conn:
        reasons = conn.execute(
            "SELECT left(ai_commentary_error, 90), count(*) FROM questions"
            " WHERE ai_commentary_status = 'failed' GROUP BY 1 ORDER BY 2 DESC LIMIT 3"
        ).fetchall()
    row["top_reasons"] = [f"{n} x {r}" for r, n in reasons]
    row["events"] = len(ctx.events)
    return row


def main() -> int:
    only = {s.strip() for s in os.environ.get("CHAOS_SCENARIOS", "").split(",") if s.strip()}
    chosen = {k: v for k, v in SCENARIOS.items() if not only or k.split()[0].lower() in only}
    logdir = Path(os.environ.get("CHAOS_LOG_DIR", "/tmp/aiw-chaos"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {N} questions per scenario, {len(chosen)} scenarios, logs in {logdir}")
    rows: list[dict[str, Any]] = []
    with PrivateCluster() as cluster, emulator_process("--state-seconds", "0.5") as base:
        migrate(cluster.create_database("chaos_tmpl"))
        for name, fault in chosen.items():
            t = time.monotonic()
            row = run_scenario(name, fault, cluster, base, logdir)
            rows.append(row)
            print(
                f"  {name}: {row['completed']} completed, {row['failed']} failed,"
                f" {row['lost']} lost in {time.monotonic() - t:.0f}s;"
                f" {row['responses_lost']} provider answers lost by the emulator;"
                f" failure reasons: {row['top_reasons']}",
                flush=True,
            )
    header = ("scenario", "questions", "completed", "failed", "lost", "duplicates", "paid twice")
    print()
    print(f"{header[0]:<24}" + "".join(f"{h:>12}" for h in header[1:]))
    for r in rows:
        cells = (r["questions"], r["completed"], r["failed"], r["lost"], r["duplicates"])
        print(
            f"{r['scenario']:<24}" + "".join(f"{c:>12}" for c in cells) + f"{r['paid_twice']:>12}"
        )
    lost = sum(r["lost"] for r in rows)
    paid_twice = sum(r["paid_twice"] for r in rows)
    duplicates = sum(r["duplicates"] for r in rows)
    emit("chaos: questions lost", lost, "questions", target="0", better="lower")
    emit("chaos: paid twice", paid_twice, "requests", target="0", better="lower")
    bad = lost or paid_twice or duplicates or any(r["completed_unfinished"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
