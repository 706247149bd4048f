"""Queue figures beside the peers: graphile-worker, pgqueuer, Procrastinate and our realtime
lane (``ai_jobs``, ``mock`` provider), same run, same server, each on a database of its own.

Per system and run: a fresh database; its worker started in its own process at concurrency
``CONCURRENCY``; then

* throughput: ``N_JOBS`` no-op jobs inserted in one statement, clock from just before the
  INSERT to the moment a poller (every 20 ms, own connection) sees none left;
* latency: ``N_LATENCY`` single-row inserts ``GAP`` s apart (autocommit), each timed from
  the return of its commit (``time.time()``) to its job's start as the worker stamps it
  (``time.time()`` / ``performance.timeOrigin + now()`` printed by the task; for our lane
  the row's ``called_at``, stamped by the worker just before the provider call).

Our lane runs as users run it (``python -m worker run``, the realtime drain woken by the
insert trigger's NOTIFY), with ``provider_concurrency = {"mock": CONCURRENCY}``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.bench.peers.env import PEERS_DIR, ROOT, graphile_dir, python_peer
from worker.database import with_database
from worker.migrate import migrate

CONCURRENCY = 10
N_JOBS = 20_000
N_LATENCY = 200
GAP = 0.025
THROUGHPUT_CAP_S = 60.0
HERE = Path(__file__).resolve().parent


@contextmanager
def own_database(server: str, label: str) -> Iterator[str]:
    """A database of this run's own (unique name), dropped afterwards."""
    name = f"aiw_{os.getpid()}_peers_{label}_{uuid.uuid4().hex[:6]}"
    admin = with_database(server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield as_url(with_database(server, name))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def as_url(conninfo: str) -> str:
    """A ``postgresql://`` URL for a conninfo string (node's pg takes URLs only)."""
    if "://" in conninfo:
        return conninfo
    d = conninfo_to_dict(conninfo)
    auth = quote(str(d.get("user", "postgres")))
    if d.get("password"):
        auth += ":" + quote(str(d["password"]))
    host = d.get("host", "127.0.0.1")
    return f"postgresql://{auth}@{host}:{d.get('port', 5432)}/{quote(str(d['dbname']))}"


class WorkerProcess:
    """A peer's worker process: stdout lines ``READY`` and ``S <key> <epoch s>`` collected
    by a reader thread; stderr kept in a log file under .bench-peers/logs/."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, label: str) -> None:
        logs = PEERS_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{label}.log"
        self._log = open(self.log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.ready = threading.Event()
        self.starts: dict[str, float] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("S "):
                _, key, ts = line.split()
                self.starts.setdefault(key, float(ts))
            elif line.startswith("READY"):
                self.ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.ready.wait(timeout):
            raise RuntimeError(f"worker not ready; see {self.log_path}: {self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-1500:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _ready_when_registered(worker: WorkerProcess, url: str, timeout: float = 60.0) -> None:
    """For Procrastinate-based workers: ready once a row in procrastinate_workers exists."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline and worker.alive():
                if conn.execute("SELECT 1 FROM procrastinate_workers").fetchone():
                    worker.ready.set()
                    return
                time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


@dataclass
class QueueSystem:
    name: str
    version: str
    setup: Callable[[str], None]
    start: Callable[[str, bool, str], WorkerProcess]
    bulk_insert: str  # one statement, parameter: n
    single_insert: str  # parameter: key (text)
    remaining: str  # jobs not yet done
    starts_from_db: str | None = None  # (key, epoch start) rows, if not printed by the worker
    check: str | None = None  # rows that did not succeed
    extra: dict[str, Any] = field(default_factory=dict)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


# ------------------------------------------------------------------ the systems


def graphile() -> QueueSystem:
    where, version = graphile_dir()

    def start(url: str, trace: bool, label: str) -> WorkerProcess:
        return WorkerProcess(
            [
                "node",
                str(HERE / "graphile_worker.js"),
                url,
                str(CONCURRENCY),
                "1" if trace else "0",
            ],
            _env(NODE_PATH=str(where / "node_modules")),
            where,
            label,
        )

    def setup(url: str) -> None:
        # graphile-worker migrates its schema when its worker starts
        w = start(url, False, "graphile-setup")
        try:
            w.wait_ready()
        finally:
            w.stop()

    spec = "ROW('noop', json_build_object('k', {}), NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec"
    return QueueSystem(
        "graphile-worker",
        version,
        setup,
        start,
        "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(SELECT "
        + spec.format("g")
        + " FROM generate_series(1, %s) g))",
        "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY[" + spec.format("%s::text") + "])",
        "SELECT count(*) FROM graphile_worker._private_jobs",
        check="SELECT count(*) FROM graphile_worker._private_jobs WHERE last_error IS NOT NULL",
    )


def pgqueuer() -> QueueSystem:
    peer = python_peer("pgqueuer")
    script = str(HERE / "pgqueuer_worker.py")

    def setup(url: str) -> None:
        subprocess.run([str(peer.python), script, "install", url], check=True, capture_output=True)

    def start(url: str, trace: bool, label: str) -> WorkerProcess:
        return WorkerProcess(
            [str(peer.python), script, "run", url, str(CONCURRENCY), "1" if trace else "0"],
            _env(),
            ROOT,
            label,
        )

    # pgqueuer's own enqueue writes the queue rows and their 'queued' log rows in one
    # statement; this is that statement's shape without the UNNEST of client arrays.
    insert = (
        "WITH ins AS (INSERT INTO pgqueuer (priority, entrypoint, payload, status)"
        " SELECT 0, 'noop', {}, 'queued' FROM generate_series(1, {}) g"
        " RETURNING id, entrypoint, priority)"
        " INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)"
        " SELECT id, 'queued', entrypoint, priority FROM ins"
    )
    return QueueSystem(
        "pgqueuer",
        peer.version,
        setup,
        start,
        insert.format("NULL", "%s"),
        insert.format("convert_to(%s::text, 'UTF8')", "1"),
        "SELECT count(*) FROM pgqueuer",
        check="SELECT count(*) FROM pgqueuer_log WHERE status NOT IN ('queued', 'picked', 'successful')",
    )


def procrastinate_peer() -> QueueSystem:
    import importlib.metadata

    def setup(url: str) -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app=tests.bench.peers.procrastinate_app.app",
                "schema",
                "--apply",
            ],
            env=_env(PEER_DSN=url),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )

    def start(url: str, trace: bool, label: str) -> WorkerProcess:
        w = WorkerProcess(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app=tests.bench.peers.procrastinate_app.app",
                "--log-level=warning",
                "worker",
                "--queues=peers",
                f"--concurrency={CONCURRENCY}",
                "--delete-jobs=successful",
            ],
            _env(PEER_DSN=url, PEER_TRACE="1" if trace else "0"),
            ROOT,
            label,
        )
        _ready_when_registered(w, url)
        return w

    job = "ROW('peers', 'noop', 0, NULL, NULL, jsonb_build_object('k', {}), NULL)::procrastinate_job_to_defer_v1"
    return QueueSystem(
        "Procrastinate",
        importlib.metadata.version("procrastinate"),
        setup,
        start,
        "SELECT count(*) FROM procrastinate_defer_jobs_v1(ARRAY(SELECT "
        + job.format("g")
        + " FROM generate_series(1, %s) g))",
        "SELECT procrastinate_defer_jobs_v1(ARRAY[" + job.format("%s::text") + "])",
        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
        check="SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
    )


def ours() -> QueueSystem:
    def setup(url: str) -> None:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE ai_realtime_settings SET provider_concurrency = %s",
                (f'{{"mock": {CONCURRENCY}}}',),
            )

    def start(url: str, trace: bool, label: str) -> WorkerProcess:
        w = WorkerProcess(
            [sys.executable, "-m", "worker", "run"],
            _env(DATABASE_URL=url, LOG_LEVEL="WARNING"),
            ROOT,
            label,
        )
        _ready_when_registered(w, url)
        return w

    return QueueSystem(
        "ours (ai_jobs realtime, mock)",
        "this branch",
        setup,
        start,
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'mock', 'mock', 'noop ' || g FROM generate_series(1, %s) g",
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES ('completion', 'mock', 'mock', %s)",
        "SELECT count(*) FROM ai_jobs WHERE status NOT IN ('completed', 'failed')",
        starts_from_db="SELECT input_text, extract(epoch FROM called_at)::float8 FROM ai_jobs",
        check="SELECT count(*) FROM ai_jobs WHERE status <> 'completed'",
    )


# ------------------------------------------------------------------ measurements


def _wait_empty(url: str, query: str, timeout: float) -> tuple[float, int]:
    """(when, jobs left): the first sample with none left, or the last one at ``timeout``."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        left = -1
        while time.monotonic() < deadline:
            row = conn.execute(query).fetchone()
            left = int(row[0]) if row else 0
            if left == 0:
                break
            time.sleep(0.02)
        return time.monotonic(), left


def warm_up(system: QueueSystem, url: str) -> None:
    """One job through the started worker, waited for, before anything is timed: a worker
    process registers before all of its parts listen (ours: ~2 s from the first
    ``procrastinate_workers`` row to the realtime queue's LISTEN), and users' workers are
    long running."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(system.single_insert, ("warm-up",))
    _, left = _wait_empty(url, system.remaining, timeout=30)
    if left:
        raise RuntimeError(f"{system.name}: the warm-up job was not done within 30 s")
    time.sleep(0.2)


@dataclass
class Throughput:
    jobs_per_s: float
    done: int  # < N_JOBS when the run hit THROUGHPUT_CAP_S


def throughput(system: QueueSystem, url: str, label: str) -> Throughput:
    """Jobs/s draining N_JOBS inserted in one statement; a system that has not drained
    them after THROUGHPUT_CAP_S is measured on the jobs it finished by then."""
    w = system.start(url, False, label)
    try:
        w.wait_ready()
        warm_up(system, url)
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.monotonic()
            conn.execute(system.bulk_insert, (N_JOBS,))
        t1, left = _wait_empty(url, system.remaining, timeout=THROUGHPUT_CAP_S)
        if not w.alive():
            raise RuntimeError(f"{system.name} worker died: {w.tail()}")
    finally:
        w.stop()
    if system.check and left == 0:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(system.check).fetchone()
            if row and row[0]:
                raise RuntimeError(f"{system.name}: {row[0]} jobs did not succeed")
    done = N_JOBS - left
    return Throughput(done / (t1 - t0), done)


def latency(system: QueueSystem, url: str, label: str) -> list[float]:
    w = system.start(url, True, label)
    committed: dict[str, float] = {}
    try:
        w.wait_ready()
        warm_up(system, url)
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(N_LATENCY):
                key = f"{i}" if system.starts_from_db is None else f"lat {i}"
                conn.execute(system.single_insert, (key,))
                committed[key] = time.time()
                time.sleep(GAP)
        _, left = _wait_empty(url, system.remaining, timeout=60)
        if left:
            raise RuntimeError(f"{system.name}: {left} latency jobs not done after 60 s")
        time.sleep(0.1)  # the last S lines
    finally:
        w.stop()
    starts = w.starts
    if system.starts_from_db:
        with psycopg.connect(url, autocommit=True) as conn:
            starts = {str(k): float(v) for k, v in conn.execute(system.starts_from_db) if v}
    missing = [k for k in committed if k not in starts]
    if missing:
        raise RuntimeError(f"{system.name}: {len(missing)} jobs without a start stamp")
    return [(starts[k] - committed[k]) * 1000 for k in committed]


SYSTEMS: list[tuple[str, Callable[[], QueueSystem]]] = [
    ("ours", ours),
    ("graphile-worker", graphile),
    ("pgqueuer", pgqueuer),
    ("Procrastinate", procrastinate_peer),
]
