"""Wake-up latency: commit of a pending insert → `submit` task start, through the trigger,
NOTIFY and a real worker process. Compared in the same run with a plain
`procrastinate worker --concurrency=4`, which loses wake-ups (see procrastinate.md); both
run at once and the samples alternate between them (see main)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import psycopg

from tests.bench.common import emit, fresh_database, median, percentile, set_settings, worker_env

N = 220
POLL = 5.0


def start(url: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    set_settings(url, feature_enabled=False)  # submit returns at once: we time the wake-up
    env = worker_env(url, FETCH_JOB_POLLING_INTERVAL=str(POLL))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT 1 FROM procrastinate_workers").fetchone():
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("worker did not start")
            time.sleep(0.05)
    return proc


def sample(conn: psycopg.Connection[tuple[object, ...]], i: int) -> float:
    """One wake-up: commit a pending question, wait for the first submit run after it."""
    # The first submit run after this insert (other tasks, or a submit woken by the tick,
    # must not be taken for it nor make the wait miss it).
    before = conn.execute("SELECT coalesce(max(id), 0) FROM worker_task_runs").fetchone()
    last_id = before[0] if before else 0
    conn.execute(
        "INSERT INTO questions (question, option_a, option_b, option_c, option_d,"
        " ai_commentary_status) VALUES (%s, 'a', 'b', 'c', 'd', 'pending')",
        (f"W{i}",),
    )
    committed = time.time()
    while True:
        row = conn.execute(
            "SELECT started_at FROM worker_task_runs WHERE task_name = 'submit'"
            " AND id > %s ORDER BY id LIMIT 1",
            (last_id,),
        ).fetchone()
        if row:
            started = row[0]
            assert isinstance(started, datetime)
            latency = (started.timestamp() - committed) * 1000
            break
        time.sleep(0.0005)
    conn.execute("UPDATE questions SET ai_commentary_status = 'completed'")
    return latency


def main() -> None:
    """Both workers run at once, each on a database of its own, and the samples alternate
    between them (ours first on even samples, the bare worker first on odd ones): load from
    anything else on the machine hits both sides alike. (Timed one after the other, a
    shared 2-core machine put the same code anywhere between 0.5x and 1.7x of the bare
    worker from run to run: tests/bench/trace_wakeup.py.)"""
    bare = [
        sys.executable,
        "-m",
        "procrastinate",
        # as ours (worker/logs.py): at INFO it would log every job, ~0.15-0.2 ms each
        "--log-level=warning",
        "--app=worker.app",
        "worker",
        "--queues=submit",
        "--concurrency=4",
        f"--fetch-job-polling-interval={POLL}",
    ]
    with fresh_database("wake") as url_ours, fresh_database("wake4") as url_base:
        procs = [
            start(url_ours, [sys.executable, "-m", "worker", "run"]),
            start(url_base, bare),
        ]
        try:
            time.sleep(0.5)
            with (
                psycopg.connect(url_ours, autocommit=True) as c_ours,
                psycopg.connect(url_base, autocommit=True) as c_base,
            ):
                for c in (c_ours, c_base):
                    c.execute("DELETE FROM worker_task_runs")
                ours: list[float] = []
                base: list[float] = []
                for i in range(N):
                    sides = [(c_ours, ours), (c_base, base)]
                    for conn, out in sides if i % 2 == 0 else reversed(sides):
                        out.append(sample(conn, i))
                        time.sleep(0.01)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)
    for name, xs in (("ours", ours), ("procrastinate concurrency=4", base)):
        waited = sum(1 for x in xs if x > 1000)
        print(
            f"{name}: n={len(xs)} p50={median(xs):.1f}ms p99={percentile(xs, 99):.1f}ms "
            f"max={max(xs):.1f}ms waited_for_polling={waited}"
        )
    emit(
        "wake-up latency p50 (commit → submit start)",
        median(ours),
        "ms",
        baseline=median(base),
        baseline_label="procrastinate worker, concurrency=4",
        target="≤ 10 ms",
        better="lower",
    )
    emit(
        "wake-up latency p99",
        percentile(ours, 99),
        "ms",
        baseline=percentile(base, 99),
        baseline_label="procrastinate worker, concurrency=4",
        target="≤ 50 ms",
        better="lower",
    )
    emit(
        f"wake-ups that waited for polling (of {N})",
        float(sum(1 for x in ours if x > 1000)),
        "count",
        baseline=float(sum(1 for x in base if x > 1000)),
        baseline_label="procrastinate worker, concurrency=4",
        target="0",
        better="lower",
    )


if __name__ == "__main__":
    main()
