"""Where our pickup latency goes: insert commit -> ``called_at``, stage by stage.

``python -m tests.bench.trace_pickup [--inserts 200] [--runs 1] [--before TREE]``

Per run: a fresh database (migrated, ``provider_concurrency = {"mock": 10}`` as in the peers
benchmark), our worker started as users run it (``python -m worker run``) but with
``time.perf_counter_ns`` stamps hooked onto the realtime path, one warm-up job, then
``--inserts`` single-row inserts 25 ms apart (autocommit), as tests/bench/peers/queues.py
times them. ``perf_counter_ns`` is CLOCK_MONOTONIC on Linux, shared by both processes, so
the inserter's commit stamp and the worker's stamps are on one clock.

Stages (each from the previous stamp; medians over the jobs):

* ``commit``: the INSERT's autocommit returned to the inserting client;
* ``notify``: the ``worker_ai_jobs`` NOTIFY handed to the hub's subscribers
  (:mod:`worker.wakeups`; may come before the commit's reply reaches the client);
* ``woken``: the drain's ``wake`` event wait returned;
* ``round``: the claim loop resumed and started a claim round;
* ``conn``: a pool connection acquired (the provider gates are read next);
* ``sent``: the ``rt_claim`` statement sent;
* ``returned``: its result back;
* ``claimed``: :func:`worker.realtime.claim.claim` returned the jobs;
* ``start``: the job handed to its task (rate limits, the connection given back);
* ``run``: the task running the job (provider slot taken);
* ``called_at``: ``called_at`` stamped, just before the provider call.

The hooks replace functions by wrappers (a few microseconds per stamp, not counted out).
Prints one line per stage with its median and the total, and the benchmark's own figure
(``called_at`` minus the commit's wall time, as bench_peers computes it).
"""

from __future__ import annotations

import argparse
import contextvars
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

# The worker process imports the traced tree's `worker` (TRACE_TREE, see --before).
sys.path.insert(0, os.environ.get("TRACE_TREE") or str(Path(__file__).resolve().parents[2]))

STAGES = [
    "notify",
    "woken",
    "round",
    "conn",
    "sent",
    "returned",
    "claimed",
    "start",
    "run",
    "called_at",
]
GAP = 0.025


# ------------------------------------------------------------------ in the worker process


def _install_hooks(out_path: str) -> None:
    """Wrap the realtime path's steps with stamps; records go to ``out_path`` (JSON lines,
    one per job, written by a background thread and at exit)."""
    import asyncio
    import atexit
    from datetime import datetime

    try:
        from worker.queue import wakeups
    except ImportError:  # a tree from before worker/queue/ (--before)
        from worker import wakeups  # type: ignore[no-redef]
    from worker.queries import q
    from worker.realtime import drain as d
    from worker.realtime import execute

    ns = time.perf_counter_ns
    state: dict[str, int] = {}
    records: dict[int, dict[str, int]] = {}
    done: list[dict[str, int]] = []
    lock = threading.Lock()
    current_job: contextvars.ContextVar[int] = contextvars.ContextVar("job", default=0)
    claim_sqls: dict[str, int] = {}  # SQL -> 1 for rt_claim_fast (trees that have it)
    for name in ("rt_claim", "rt_claim_fast"):
        try:
            claim_sqls[q(name)] = int(name == "rt_claim_fast")
        except KeyError:
            pass

    orig_dispatch = wakeups.Wakeups._dispatch

    def dispatch(self: Any, channel: str, payload: str) -> None:
        if channel == wakeups.DRAIN_CHANNEL:
            state["notify"] = ns()
        orig_dispatch(self, channel, payload)

    wakeups.Wakeups._dispatch = dispatch  # type: ignore[method-assign]

    class TracedEvent(asyncio.Event):
        async def wait(self) -> bool:  # type: ignore[override]
            r = await super().wait()
            state["woken"] = ns()
            return r

    orig_init = d.Drain.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        orig_init(self, *a, **kw)
        self.wake = TracedEvent()

    d.Drain.__init__ = init  # type: ignore[method-assign]

    orig_round = d.Drain._claim_round

    async def claim_round(self: Any, asked: int) -> int:
        state["round"] = ns()
        return await orig_round(self, asked)

    d.Drain._claim_round = claim_round  # type: ignore[method-assign]

    orig_gates = d.Drain._gates

    async def gates(self: Any, conn: Any) -> Any:
        state["conn"] = ns()
        return await orig_gates(self, conn)

    d.Drain._gates = gates  # type: ignore[method-assign]

    orig_execute = psycopg.AsyncCursor.execute

    async def execute_(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
        if isinstance(query, str) and query in claim_sqls:
            state["fast"] = claim_sqls[query]
            state["sent"] = ns()
            r = await orig_execute(self, query, *a, **kw)
            state["returned"] = ns()
            return r
        return await orig_execute(self, query, *a, **kw)

    psycopg.AsyncCursor.execute = execute_  # type: ignore[method-assign]

    orig_claim = d.claim

    async def claim(*a: Any, **kw: Any) -> Any:
        jobs = await orig_claim(*a, **kw)
        t = ns()
        for j in jobs:
            records[j.id] = {**state, "claimed": t, "job": j.id}
        return jobs

    d.claim = claim

    orig_start = d.Drain._start

    def start(self: Any, lane: str, jobs: Any, provider: str, coro: Any) -> None:
        t = ns()
        for j in jobs:
            if j.id in records:
                records[j.id]["start"] = t
        orig_start(self, lane, jobs, provider, coro)

    d.Drain._start = start  # type: ignore[method-assign]

    orig_run_chat = d.Drain._run_chat

    async def run_chat(self: Any, job: Any) -> Any:
        if job.id in records:
            records[job.id]["run"] = ns()
        current_job.set(job.id)
        return await orig_run_chat(self, job)

    d.Drain._run_chat = run_chat  # type: ignore[method-assign]

    class StampedNow(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            t = ns()
            rec = records.get(current_job.get())
            if rec is not None and "called_at" not in rec:
                rec["called_at"] = t
                with lock:
                    done.append(rec)
            return datetime.now(tz)

    execute.datetime = StampedNow  # type: ignore[misc]

    def flush() -> None:
        with lock:
            batch = done[:]
            del done[:]
        if batch:
            with open(out_path, "a") as f:
                for rec in batch:
                    f.write(json.dumps(rec) + "\n")

    def flusher() -> None:
        while True:
            time.sleep(0.5)
            flush()

    threading.Thread(target=flusher, daemon=True).start()
    atexit.register(flush)


def worker_main(out_path: str) -> int:
    _install_hooks(out_path)
    from worker.cli import main

    return main(["run"])


# ------------------------------------------------------------------ the measuring process


def one_run(
    server: str, inserts: int, label: str, tree: Path
) -> tuple[dict[str, list[float]], list[float]]:
    """(stage -> per-job ms, bench-style commit->called_at ms) for one fresh database, the
    worker running the source tree ``tree``."""
    from tests.bench.peers import queues as qs

    system = qs.ours()
    with qs.own_database(server, "trace") as url, tempfile.TemporaryDirectory() as tmp:
        system.setup(url)
        out = os.path.join(tmp, "stamps.jsonl")
        w = qs.WorkerProcess(
            [sys.executable, str(Path(__file__).resolve()), "--worker", out],
            qs._env(
                DATABASE_URL=url, LOG_LEVEL="WARNING", PYTHONPATH=str(tree), TRACE_TREE=str(tree)
            ),
            tree,
            label,
        )
        commits: dict[int, int] = {}
        walls: dict[int, float] = {}
        try:
            qs._ready_when_registered(w, url)
            w.wait_ready()
            qs.warm_up(system, url)
            with psycopg.connect(url, autocommit=True) as conn:
                for i in range(inserts):
                    cur = conn.execute(system.single_insert + " RETURNING id", (f"lat {i}",))
                    t = time.perf_counter_ns()
                    wall = time.time()
                    row = cur.fetchone()
                    assert row is not None
                    commits[int(row[0])] = t
                    walls[int(row[0])] = wall
                    time.sleep(GAP)
            _, left = qs._wait_empty(url, system.remaining, timeout=60)
            if left:
                raise RuntimeError(f"{left} jobs not done after 60 s: {w.tail()}")
            time.sleep(1.0)  # the stamp flusher
        finally:
            w.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            called = {
                int(k): float(v)
                for k, v in conn.execute(
                    "SELECT id, extract(epoch FROM called_at)::float8 FROM ai_jobs"
                )
            }
        recs = {}
        if os.path.exists(out):
            with open(out) as f:
                for line in f:
                    r = json.loads(line)
                    recs[r["job"]] = r
    stages: dict[str, list[float]] = {s: [] for s in ["commit->notify", *STAGES[1:], "total"]}
    for job, t_commit in commits.items():
        r = recs.get(job)
        if r is None or any(s not in r for s in STAGES):
            continue
        stages["commit->notify"].append((r["notify"] - t_commit) / 1e6)
        for prev, s in itertools.pairwise(STAGES):
            stages[s].append((r[s] - r[prev]) / 1e6)
        stages["total"].append((r["called_at"] - t_commit) / 1e6)
    bench = [(called[j] - walls[j]) * 1000 for j in walls if j in called]
    fast = [r.get("fast", 0) for j, r in recs.items() if j in commits]
    if fast:
        print(f"{label}: {sum(fast)} of {len(fast)} jobs claimed by rt_claim_fast", flush=True)
    return stages, bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--inserts", type=int, default=200)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument(
        "--before",
        metavar="TREE",
        help="also trace this source tree (e.g. `git archive <commit>` unpacked), "
        "interleaved run by run, as its own column",
    )
    p.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    from tests.bench.peers.env import ROOT
    from worker.database import resolve_database_url

    server = resolve_database_url()
    trees = {"now": ROOT, **({"before": Path(args.before).resolve()} if args.before else {})}
    meds: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for run in range(args.runs):
        for name, tree in trees.items():
            stages, bench = one_run(server, args.inserts, f"trace-{name}-{run}", tree)
            for s, xs in [*stages.items(), ("bench figure p50", bench)]:
                if xs:
                    meds[name].setdefault(s, []).append(statistics.median(xs))
            print(
                f"run {run + 1} {name}: {len(stages['total'])} of {args.inserts} jobs traced;"
                f" commit->called_at p50 {statistics.median(bench):.3f} ms (wall clocks,"
                " as bench_peers)",
                flush=True,
            )
    print(
        f"\nper stage, ms: median over {args.runs} run(s) of the per-job medians"
        " (each stage from the previous stamp)"
    )
    print(f"  {'stage':<18}" + "".join(f"{t:>10}" for t in trees))
    for s in meds["now"]:
        print(
            f"  {s:<18}"
            + "".join(
                f"{statistics.median(meds[t][s]):10.3f}" if meds[t].get(s) else f"{'-':>10}"
                for t in trees
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
