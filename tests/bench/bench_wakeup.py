"""Wake-up latency: commit of a pending insert → `submit` task start, through the trigger,
NOTIFY and a real worker process. Compared in the same run with a plain
`procrastinate worker --concurrency=4`, which loses wake-ups (see procrastinate.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import psycopg

from tests.bench.common import emit, fresh_database, median, percentile, set_settings, worker_env

N = 220
POLL = 5.0


def measure(url: str, cmd: list[str]) -> list[float]:
    set_settings(url, feature_enabled=False)  # submit returns at once: we time the wake-up
    env = worker_env(url, FETCH_JOB_POLLING_INTERVAL=str(POLL))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lat: list[float] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while not conn.execute("SELECT 1 FROM procrastinate_workers").fetchone():
                if time.monotonic() > deadline:
                    raise RuntimeError("worker did not start")
                time.sleep(0.05)
            time.sleep(0.5)
            conn.execute("DELETE FROM worker_task_runs")
            for i in range(N):
                # The first submit run after this insert (other tasks, or a submit woken by
                # the tick, must not be taken for it nor make the wait miss it).
                before = conn.execute(
                    "SELECT coalesce(max(id), 0) FROM worker_task_runs"
                ).fetchone()
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
                        started: datetime = row[0]
                        lat.append((started.timestamp() - committed) * 1000)
                        break
                    time.sleep(0.0005)
                conn.execute("UPDATE questions SET ai_commentary_status = 'completed'")
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(20)
    return lat


def main() -> None:
    with fresh_database("wake") as url:
        ours = measure(url, [sys.executable, "-m", "worker", "run"])
    with fresh_database("wake4") as url:
        base = measure(
            url,
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app=worker.app",
                "worker",
                "--queues=submit",
                "--concurrency=4",
                f"--fetch-job-polling-interval={POLL}",
            ],
        )
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
