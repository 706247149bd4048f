"""Database footprint of the work: what Postgres writes per question and per job, and the
connections a worker process holds, against the minimum a design must write.

Everything runs on a private Postgres cluster (``tests/fixtures/private_pg.py``, with
``full_page_writes`` back on as on a real server), so the WAL counted is ours alone even on a
shared machine.

- Pipeline: N questions × 3 batch models + summary on the emulator (zero batch delay), one
  `python -m worker run --until-idle` process. Measured on its own database
  (``pg_stat_database``: commits, rows inserted + updated + deleted) and on the cluster
  (``pg_current_wal_lsn()`` before and after: WAL bytes).
- Realtime: M chat jobs on the ``mock`` provider, same measures.
- Minimum: the rows the work must leave behind written directly, in the same database
  right after: a copy of every comment and summary row into tables of the same shape and
  indexes, one status update per question (or one result update per job), 500 rows a
  transaction. The ratio ours / minimum is what the queue, the ledger and the bookkeeping
  cost on top of the results themselves.
- Connections: ``pg_stat_activity`` rows of the worker's database, sampled busy (during the
  pipeline run) and idle (an idle process, after its pool settled).

Statements per question need ``pg_stat_statements`` in ``shared_preload_libraries``; the
figure is reported when the server has it, and skipped otherwise (the shared server here
does not, and is never restarted by a benchmark).

Budgets below make the benchmark fail (listed under "Benchmarks that failed" in
BENCHMARKS.md) when the footprint grows past them unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg

from tests.bench.common import (
    ENABLED,
    MODELS,
    emit,
    emulator_env,
    emulator_process,
    fresh_database,
    median,
    set_settings,
    worker_env,
)
from tests.fixtures.private_pg import PrivateCluster

N = int(os.environ.get("BENCH_FOOTPRINT_QUESTIONS", "2000"))
M = int(os.environ.get("BENCH_FOOTPRINT_JOBS", "5000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))

# Budgets (ratio to the minimum, absolute connection counts). Measured at introduction:
# see BENCHMARKS.md; each budget leaves room for noise, not for a new write per row.
BUDGET_WAL_RATIO_PIPELINE = 4.0
BUDGET_WAL_RATIO_REALTIME = 4.0
BUDGET_IDLE_CONNECTIONS = 4
BUDGET_BUSY_CONNECTIONS = 6

QUESTIONS = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
    " correct_answer, subject, ai_commentary_status)"
    " SELECT 'Frage ' || g || ': Welches Enzym spaltet Stärke im Mund?', 'Pepsin',"
    " 'Ptyalin (alpha-Amylase)', 'Lipase', 'Trypsin', 'Laktase', 'B', 'Biochemie', %s"
    " FROM generate_series(1, %s) g"
)
JOBS = (
    "INSERT INTO ai_jobs (kind, provider, model, input_text)"
    " SELECT 'chat', 'mock', 'mock-1', 'Frage ' || g FROM generate_series(1, %s) g"
)


class Counters:
    """Commits, rows written and WAL between two readings (and statements when available)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        out = {"commits": float(row[0]), "rows": float(row[1]), "wal": float(row[2])}
        try:
            with self.conn.transaction():
                st = self.conn.execute(
                    "SELECT sum(calls) FROM pg_stat_statements"
                    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
            out["statements"] = float(st[0]) if st and st[0] is not None else float("nan")
        except psycopg.Error:
            out["statements"] = float("nan")
        return out

    def delta(self) -> dict[str, float]:
        # Stats of other backends reach pg_stat_database when they go idle or exit: wait
        # until two readings agree.
        prev = self._read()
        for _ in range(20):
            time.sleep(0.6)
            now = self._read()
            if now["commits"] == prev["commits"] and now["rows"] == prev["rows"]:
                break
            prev = now
        return {k: prev[k] - self.start[k] for k in prev}


def _connections(conn: psycopg.Connection[Any], me: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> %s",
        (me,),
    ).fetchone()
    return int(row[0]) if row else 0


class Sampler:
    """Samples the worker's connections every 50 ms in a thread, on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            me = conn.info.backend_pid
            while not self._stop.is_set():
                self.samples.append(_connections(conn, me) - 1)  # minus the measuring one
                time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _copy_minimum(conn: psycopg.Connection[Any], table: str, key: str) -> None:
    """Write the rows of ``table`` again into a same-shaped table, 500 keys a transaction."""
    conn.execute(f"CREATE TABLE bench_min_{table} (LIKE {table} INCLUDING ALL)")
    keys = [r[0] for r in conn.execute(f"SELECT DISTINCT {key} FROM {table}").fetchall()]
    for i in range(0, len(keys), 500):
        with conn.transaction():
            conn.execute(
                f"INSERT INTO bench_min_{table} SELECT * FROM {table} WHERE {key} = ANY(%s)",
                (keys[i : i + 500],),
            )


def _update_minimum(conn: psycopg.Connection[Any], sql_text: str, ids: list[Any]) -> None:
    for i in range(0, len(ids), 500):
        with conn.transaction():
            conn.execute(sql_text, (ids[i : i + 500],))


def pipeline_once(base: str) -> dict[str, float]:
    with fresh_database("foot") as url:
        set_settings(
            url, models=MODELS, models_enabled=ENABLED, batch_size=N, processing_delay_minutes=0
        )
        env = worker_env(
            url,
            **emulator_env(base),
            POLL_MIN_SECONDS="0.05",
            POLL_MAX_SECONDS="0.5",
            FETCH_JOB_POLLING_INTERVAL="0.5",
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # full-page images after a checkpoint hit both sides
            counters = Counters(conn)
            conn.execute(QUESTIONS, ("pending", N))
            with Sampler(url) as sampler:
                proc = subprocess.run(
                    [sys.executable, "-m", "worker", "run", "--until-idle", "--timeout", "600"],
                    env=env,
                    capture_output=True,
                )
            ours = counters.delta()
            done = conn.execute(
                "SELECT count(*) FROM questions WHERE ai_commentary_status = 'completed'"
            ).fetchone()
            if proc.returncode != 0 or not done or done[0] != N:
                raise RuntimeError(f"pipeline failed: {done} {proc.stderr.decode()[-1500:]}")
            conn.execute("CHECKPOINT")
            minimum = Counters(conn)
            conn.execute(QUESTIONS, ("pending", N))  # the questions themselves, both sides
            _copy_minimum(conn, "ai_answer_comments", "question_id")
            _copy_minimum(conn, "ai_commentary_summaries", "question_id")
            ids = [r[0] for r in conn.execute("SELECT id FROM questions").fetchall()]
            _update_minimum(
                conn,
                "UPDATE questions SET ai_commentary_status = 'completed' WHERE id = ANY(%s)",
                ids[:N],
            )
            floor = minimum.delta()
        return {
            **{f"ours_{k}": v for k, v in ours.items()},
            **{f"min_{k}": v for k, v in floor.items()},
            "busy_max": float(max(sampler.samples or [0])),
        }


def realtime_once() -> dict[str, float]:
    with fresh_database("footrt") as url:
        env = worker_env(url, FETCH_JOB_POLLING_INTERVAL="0.5")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            counters = Counters(conn)
            conn.execute(JOBS, (M,))
            proc = subprocess.run(
                [sys.executable, "-m", "worker", "run", "--until-idle", "--timeout", "600"],
                env=env,
                capture_output=True,
            )
            ours = counters.delta()
            done = conn.execute(
                "SELECT count(*) FROM ai_jobs WHERE status = 'completed'"
            ).fetchone()
            if proc.returncode != 0 or not done or done[0] != M:
                raise RuntimeError(f"realtime failed: {done} {proc.stderr.decode()[-1500:]}")
            conn.execute("CHECKPOINT")
            minimum = Counters(conn)
            conn.execute(JOBS, (M,))
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM ai_jobs WHERE status <> 'completed' ORDER BY id"
                ).fetchall()
            ]
            _update_minimum(
                conn,
                "UPDATE ai_jobs j SET result_text = d.result_text, status = 'completed',"
                " input_tokens = d.input_tokens, output_tokens = d.output_tokens,"
                " cost_usd = d.cost_usd, completed_at = d.completed_at"
                " FROM ai_jobs d WHERE j.id = ANY(%s) AND d.id = j.id - " + str(M),
                ids,
            )
            floor = minimum.delta()
        return {
            **{f"ours_{k}": v for k, v in ours.items()},
            **{f"min_{k}": v for k, v in floor.items()},
        }


def idle_connections() -> float:
    """Connections of an idle `worker run` process once its pool has settled."""
    with fresh_database("footidle") as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=worker_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(35)  # start-up burst given back: one connection per 10 s idle
            with Sampler(url) as sampler:
                time.sleep(10)
            return float(max(sampler.samples or [0]))
        finally:
            proc.terminate()
            proc.wait(60)


def _per(d: list[dict[str, float]], key: str, n: int) -> float:
    return median([r[key] / n for r in d])


def _emit_writes(
    runs: list[dict[str, float]],
    n: int,
    *,
    what: str,
    title: str,
    minimum: tuple[str, str, str],
    budget: float,
) -> bool:
    """WAL, commits and rows written per unit against the minimum; False when WAL is over
    ``budget`` times the minimum."""
    wal, min_wal = _per(runs, "ours_wal", n), _per(runs, "min_wal", n)
    emit(
        f"WAL per {what} ({title})",
        wal,
        "bytes",
        baseline=min_wal,
        baseline_label=f"minimum: {minimum[0]}",
        target=f"≤ {budget:g}× minimum",
        better="lower",
    )
    for key, unit, label in (("commits", "commits", minimum[1]), ("rows", "rows", minimum[2])):
        emit(
            f"{unit} per {what}" + (" (inserted + updated + deleted)" if key == "rows" else ""),
            _per(runs, f"ours_{key}", n),
            unit,
            baseline=_per(runs, f"min_{key}", n),
            baseline_label=f"minimum: {label}",
            better="lower",
        )
    return wal <= budget * min_wal


def main() -> int:
    with PrivateCluster() as pg:
        with open(pg.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("full_page_writes = on\n")  # as on a real server (WAL volume)
        pg.restart()
        os.environ["DATABASE_URL"] = pg.url("postgres")
        return measure()


def measure() -> int:
    with emulator_process("--state-seconds", "0") as base:
        pipe = [pipeline_once(base) for _ in range(RUNS)]
    rt = [realtime_once() for _ in range(RUNS)]
    idle = idle_connections()
    busy = median([r["busy_max"] for r in pipe])
    print(f"pipeline runs: {pipe}\nrealtime runs: {rt}", flush=True)
    over: list[str] = []

    if not _emit_writes(
        pipe,
        N,
        what="question",
        title=f"{N} questions × 3 models + summary",
        minimum=(
            "the comment, summary and status rows written directly",
            "500 questions a transaction",
            "question, 3 comments, summary, 1 status update",
        ),
        budget=BUDGET_WAL_RATIO_PIPELINE,
    ):
        over.append("pipeline WAL")
    stmts = _per(pipe, "ours_statements", N)
    if stmts == stmts:  # not NaN: pg_stat_statements is loaded
        emit("statements per question", stmts, "statements", better="lower")
    else:
        print("statements per question: skipped (pg_stat_statements not preloaded)")
    if not _emit_writes(
        rt,
        M,
        what="realtime job",
        title=f"{M} chat jobs, mock provider",
        minimum=(
            "the job row and one result update",
            "500 jobs a transaction",
            "job insert + one result update",
        ),
        budget=BUDGET_WAL_RATIO_REALTIME,
    ):
        over.append("realtime WAL")
    emit(
        "connections held by an idle worker process (default settings)",
        idle,
        "connections",
        target=f"≤ {BUDGET_IDLE_CONNECTIONS}",
        better="lower",
    )
    emit(
        "connections held by a busy worker process (pipeline run, max sampled)",
        busy,
        "connections",
        target=f"≤ {BUDGET_BUSY_CONNECTIONS}",
        better="lower",
    )
    if idle > BUDGET_IDLE_CONNECTIONS:
        over.append("idle connections")
    if busy > BUDGET_BUSY_CONNECTIONS:
        over.append("busy connections")
    if over:
        print(f"OVER BUDGET: {', '.join(over)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
