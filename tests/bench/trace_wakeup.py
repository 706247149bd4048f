"""Where the wake-up time goes: the bench_wakeup loop, with the worker process stamping each
step (time.time_ns, the clock the bench's commit stamp uses) from the NOTIFY received to the
task entered. Ours (`python -m worker run`) and a bare `procrastinate worker
--concurrency=4` on the same app, in the same run.

    python -m tests.bench.trace_wakeup [samples per side]

Both workers run at once (each on its own database) and the samples alternate between
them, so the machine's load hits both alike: on a shared 2-core machine a single
bench_wakeup run (ours, then the bare worker) puts the same code anywhere between 0.5x
and 1.7x of the bare worker. Prints per side the bench latency, each step's median offset
from the commit, and the pool's statistics. Runs in a tree from before the restructure
too (bisecting: copy it there). WAKE_TRACE_RAW=<file> keeps every stamp.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import psycopg

from tests.bench.common import fresh_database, median, percentile, set_settings, worker_env

N = 200
POLL = 5.0

_events: list[tuple[str, int]] = []
_pool_stats: dict[str, int] = {}
_in_fetch: contextvars.ContextVar[bool] = contextvars.ContextVar("in_fetch", default=False)


def _stamp(name: str) -> None:
    _events.append((name, time.time_ns()))


def _wrap_async(owner: Any, attr: str, before: str, after: str | None = None) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _stamp(before)
        try:
            return await original(*args, **kwargs)
        finally:
            if after:
                _stamp(after)

    setattr(owner, attr, wrapper)


def install() -> None:
    """Patch the worker process (called in the child before the worker starts)."""
    from procrastinate import manager, worker

    out = os.environ["WAKE_TRACE_FILE"]

    def dump() -> None:
        with open(out, "w") as f:
            json.dump({"events": _events, "pool": _pool_stats}, f)

    atexit.register(dump)

    # psycopg's notifies() generator yields: wrap it to stamp each notification received
    import psycopg as _pg

    orig_notifies = _pg.AsyncConnection.notifies

    async def notifies(self: Any, *args: Any, **kwargs: Any) -> Any:
        async for n in orig_notifies(self, *args, **kwargs):
            if n.channel.startswith("procrastinate_queue_v1#submit"):
                _stamp("notify_received")
            yield n

    _pg.AsyncConnection.notifies = notifies  # type: ignore[method-assign]

    orig_handle = worker.Worker._handle_notification

    async def handle(self: Any, **kwargs: Any) -> Any:
        if "submit" in self.queues:
            _stamp("worker_woken")
        return await orig_handle(self, **kwargs)

    worker.Worker._handle_notification = handle  # type: ignore[method-assign]

    orig_fetch = manager.JobManager.fetch_job

    async def fetch(self: Any, queues: Any, worker_id: Any) -> Any:
        is_submit = queues and "submit" in queues
        if is_submit:
            _stamp("fetch_start")
            token = _in_fetch.set(True)
        try:
            job = await orig_fetch(self, queues=queues, worker_id=worker_id)
        finally:
            if is_submit:
                _in_fetch.reset(token)
        if is_submit and job is not None:
            _stamp("fetch_got_job")
        return job

    # inside a submit fetch: the pool's getconn (waiting for a connection) and the query
    import psycopg_pool

    orig_getconn = psycopg_pool.AsyncConnectionPool.getconn

    async def getconn(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _in_fetch.get():
            _stamp("fetch_getconn")
        conn = await orig_getconn(self, *args, **kwargs)
        if _in_fetch.get():
            _stamp("fetch_got_conn")
        return conn

    psycopg_pool.AsyncConnectionPool.getconn = getconn  # type: ignore[method-assign]

    orig_close = psycopg_pool.AsyncConnectionPool.close

    async def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        _pool_stats.update(self.get_stats())
        return await orig_close(self, *args, **kwargs)

    psycopg_pool.AsyncConnectionPool.close = close  # type: ignore[method-assign]

    manager.JobManager.fetch_job = fetch  # type: ignore[method-assign]

    orig_process = worker.Worker._process_job

    async def process(self: Any, context: Any) -> Any:
        if context.job.task_name == "submit":
            _stamp("process_job")
        return await orig_process(self, context)

    worker.Worker._process_job = process  # type: ignore[method-assign]

    try:
        from worker.commentary import submit as submit_stage
    except ImportError:  # a tree from before the restructure (bisecting)
        submit_stage = importlib.import_module("worker.submit")

    orig_submit = submit_stage.run_submit

    async def run_submit(pool: Any) -> Any:
        _stamp("task_entered")
        return await orig_submit(pool)

    submit_stage.run_submit = run_submit

    for name in ("worker.queue.runner", "worker.runner"):  # the module moved; bisecting
        try:
            runner = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(runner, "PoolSizer"):
            _wrap_async(runner.PoolSizer, "_resize", "resize_start", "resize_end")
        break


def _child(cmd: str) -> None:
    install()
    if cmd == "ours":
        from worker.cli import main

        sys.argv = ["worker", "run"]
        sys.exit(main())
    from procrastinate.cli import main as pmain

    sys.argv = [
        "procrastinate",
        "--app=worker.app",
        "worker",
        "--queues=submit",
        "--concurrency=4",
        f"--fetch-job-polling-interval={POLL}",
    ]
    pmain()


class Side:
    """One worker process on its own database, stamping into its trace file."""

    def __init__(self, name: str, url: str, trace_file: str) -> None:
        set_settings(url, feature_enabled=False)  # submit returns at once
        env = worker_env(url, FETCH_JOB_POLLING_INTERVAL=str(POLL), WAKE_TRACE_FILE=trace_file)
        cmd = [
            sys.executable,
            "-c",
            f"from tests.bench.trace_wakeup import _child; _child({name!r})",
        ]
        self.name, self.trace_file = name, trace_file
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.conn = psycopg.connect(url, autocommit=True)
        self.commits: list[int] = []
        self.latencies: list[float] = []  # as bench_wakeup measures them, ms

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while not self.conn.execute("SELECT 1 FROM procrastinate_workers").fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} worker did not start")
            time.sleep(0.05)

    def sample(self, i: int) -> None:
        conn = self.conn
        before = conn.execute("SELECT coalesce(max(id), 0) FROM worker_task_runs").fetchone()
        last_id = before[0] if before else 0
        conn.execute(
            "INSERT INTO questions (question, option_a, option_b, option_c, option_d,"
            " ai_commentary_status) VALUES (%s, 'a', 'b', 'c', 'd', 'pending')",
            (f"W{i}",),
        )
        committed = time.time()
        self.commits.append(time.time_ns())
        while True:
            row = conn.execute(
                "SELECT started_at FROM worker_task_runs WHERE task_name = 'submit'"
                " AND id > %s ORDER BY id LIMIT 1",
                (last_id,),
            ).fetchone()
            if row:
                self.latencies.append((row[0].timestamp() - committed) * 1000)
                break
            time.sleep(0.0005)
        conn.execute("UPDATE questions SET ai_commentary_status = 'completed'")

    def stop(self) -> list[tuple[str, int]]:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(20)
        with open(self.trace_file) as f:
            got = json.load(f)
        self.pool_stats = got["pool"]
        return [(str(n), int(t)) for n, t in got["events"]]


STEPS = [
    "notify_received",
    "worker_woken",
    "fetch_start",
    "fetch_getconn",
    "fetch_got_conn",
    "fetch_got_job",
    "process_job",
    "resize_start",
    "resize_end",
    "task_entered",
]


def offsets(commits: list[int], events: list[tuple[str, int]]) -> dict[str, list[float]]:
    """For each commit, the first stamp of each step after it (and before the next commit),
    in ms from the commit."""
    events.sort(key=lambda e: e[1])
    out: dict[str, list[float]] = defaultdict(list)
    for i, c in enumerate(commits):
        end = commits[i + 1] if i + 1 < len(commits) else None
        seen: set[str] = set()
        for name, t in events:
            if t < c or (end is not None and t >= end) or name in seen:
                continue
            seen.add(name)
            out[name].append((t - c) / 1e6)
    return out


def main() -> None:
    """Both workers run at once, each on its own database; samples alternate between them
    (ours, bare, bare, ours, ...) so the machine's load drifts over both alike."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    with (
        tempfile.TemporaryDirectory() as tmp,
        fresh_database("trours") as url_ours,
        fresh_database("trbare") as url_bare,
    ):
        sides = [
            Side("ours", url_ours, os.path.join(tmp, "ours.json")),
            Side("procrastinate", url_bare, os.path.join(tmp, "bare.json")),
        ]
        try:
            for s in sides:
                s.wait_ready()
            time.sleep(0.5)
            for s in sides:
                s.conn.execute("DELETE FROM worker_task_runs")
            for i in range(n):
                for s in sides if i % 2 == 0 else sides[::-1]:
                    s.sample(i)
                    time.sleep(0.01)
        finally:
            traces = {s.name: (s.commits, s.latencies, s.stop()) for s in sides}
            pools = {s.name: s.pool_stats for s in sides}
    if os.environ.get("WAKE_TRACE_RAW"):  # the raw stamps, for a closer look at the tail
        with open(os.environ["WAKE_TRACE_RAW"], "w") as f:
            json.dump(traces, f)
    for name, (commits, lat, events) in traces.items():
        offs = offsets(commits, events)
        print(
            f"{name}: n={len(lat)} bench latency p50={median(lat):.3f} ms"
            f" p90={percentile(lat, 90):.3f} p99={percentile(lat, 99):.3f}"
        )
        prev = 0.0
        for step in STEPS:
            if step not in offs:
                continue
            m = median(offs[step])
            print(
                f"  {step:16s} p50 {m:7.3f} ms after commit (+{m - prev:6.3f})"
                f"  p90 {percentile(offs[step], 90):7.3f}"
            )
            prev = m
        print(f"  pool: {pools[name]}")
    ours, bare = (median(traces[k][1]) for k in ("ours", "procrastinate"))
    print(f"p50 ratio ours/bare: {ours / bare:.3f}")


if __name__ == "__main__":
    main()
