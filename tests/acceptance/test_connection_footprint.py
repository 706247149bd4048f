"""A worker process's connection footprint, counted in pg_stat_activity, and the refusal to
run behind a pooler where LISTEN never delivers (issue: light on a small database).

The targets at default settings: at most 4 connections for an idle process, at most 6 for a
busy one, whatever the number of queues (one LISTEN connection for all of them plus a pool
of at most DB_POOL_MAX = 5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import DEFAULT_MODELS, insert_questions, point_env_at_emulator
from tests.fixtures.worker_proc import WorkerProcess, wait_for
from worker.emulator import Emulator
from worker.queue.wakeups import check_delivery, looks_like_transaction_pooler

IDLE_LIMIT = 4
BUSY_LIMIT = 6


def _held(admin: psycopg.Connection[Any], dbname: str, pid_of_test: int) -> int:
    """Client backends on the worker's database, except the test's own connection."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend' AND pid <> %s",
        (dbname, pid_of_test),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def worker_env(db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    point_env_at_emulator(monkeypatch, emulator)
    emulator.configure(state_seconds=0)
    env = dict(os.environ)
    env["DATABASE_URL"] = db_url
    env["LOG_LEVEL"] = "WARNING"
    # Default worker settings otherwise (pool, queues, processes): that is what is counted.
    for name in ("DB_POOL_MAX", "DB_POOL_IDLE_SECONDS", "WORKER_PROCESSES"):
        env.pop(name, None)
    return env


def test_idle_and_busy_process_stay_within_the_connection_budget(
    db_url: str, worker_env: dict[str, str], tmp_path: Path, emulator: Emulator
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(db_url, autocommit=True) as admin:
        me = admin.info.backend_pid
        proc = WorkerProcess(worker_env, tmp_path / "worker.log")
        try:
            # Idle: all four queues' workers registered, then sampled for a while.
            wait_for(
                lambda: (
                    admin.execute("SELECT count(*) = 4 FROM procrastinate_workers").fetchone()[0]  # type: ignore[index]
                    or None
                ),
                30,
                "four queue workers registered",
            )
            # Start-up opens a few pooled connections at once; an idle pool gives one back
            # every DB_POOL_IDLE_SECONDS (10 s) until one is left.
            settled = time.monotonic() + 60
            while time.monotonic() < settled and _held(admin, dbname, me) > IDLE_LIMIT:
                time.sleep(0.5)
            idle = []
            for _ in range(40):  # 10 s: heartbeats, fetch and abort polls of all 4 queues
                idle.append(_held(admin, dbname, me))
                time.sleep(0.25)
            assert max(idle) <= IDLE_LIMIT, (idle, proc.log_tail())
            listeners = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND application_name = 'ai-worker-listen'",
                (dbname,),
            ).fetchone()
            assert listeners is not None and listeners[0] == 1

            # Busy: both lanes at once (batch commentary through the emulator, realtime
            # jobs on the mock provider), sampled while work is open.
            admin.execute(
                "UPDATE ai_commentary_settings SET processing_delay_minutes = 0,"
                " batch_size = 50, models = %s, models_enabled = %s",
                (
                    json.dumps(DEFAULT_MODELS),
                    json.dumps({k: k in ("chatgpt", "gemini", "mistral") for k in DEFAULT_MODELS}),
                ),
            )
            insert_questions(admin, 200)
            admin.execute(
                "INSERT INTO ai_jobs (kind, provider, model, input_text)"
                " SELECT 'chat', 'mock', 'mock-1', 'hello ' || g FROM generate_series(1, 3000) g"
            )
            busy = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                busy.append(_held(admin, dbname, me))
                row = admin.execute(
                    "SELECT (SELECT count(*) FROM ai_jobs WHERE status <> 'completed')"
                    " + (SELECT count(*) FROM questions WHERE ai_commentary_status <> 'completed')"
                ).fetchone()
                assert row is not None
                if row[0] == 0:
                    break
                time.sleep(0.05)
            assert row[0] == 0, ("work not finished", proc.log_tail())
            assert len(busy) >= 5
            assert max(busy) <= BUSY_LIMIT, (busy, proc.log_tail())
            print(f"connections: idle max {max(idle)}, busy max {max(busy)} ({len(busy)} samples)")
        finally:
            proc.terminate(60)


# ---------------------------------------------------------------- pooler refusal


class NotifyDroppingProxy:
    """A TCP proxy to Postgres that forwards everything except NotificationResponse ('A')
    messages: LISTEN is accepted but nothing is ever delivered, as behind a
    transaction-mode pooler. Clients must use sslmode=disable (the stream is parsed)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.dropped = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._filter, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _filter(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                buf += data
                out = b""
                while len(buf) >= 5:
                    (length,) = struct.unpack("!I", buf[1:5])
                    if len(buf) < 1 + length:
                        break
                    msg, buf = buf[: 1 + length], buf[1 + length :]
                    if msg[:1] == b"A":
                        self.dropped += 1
                        continue
                    out += msg
                if out:
                    dst.sendall(out)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def deaf_url(db_url: str) -> Iterator[str]:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    proxy = NotifyDroppingProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    info.update(host="127.0.0.1", port=str(proxy.port), sslmode="disable")
    yield psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    proxy.close()


def test_delivery_check_passes_on_a_direct_connection(db_url: str) -> None:
    asyncio.run(check_delivery(db_url, timeout=5))


def test_run_refuses_a_server_where_listen_never_delivers(deaf_url: str, tmp_path: Path) -> None:
    with psycopg.connect(deaf_url, autocommit=True) as conn:  # the proxy forwards queries
        assert conn.execute("SELECT 1").fetchone() == (1,)
    env = dict(os.environ, DATABASE_URL=deaf_url, LOG_LEVEL="WARNING")
    out = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert any("did not arrive" in line and "session-mode" in line for line in err), out.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@aws-0-eu-central-1.pooler.supabase.com:6543/postgres", True),
        ("host=aws-0-eu-central-1.pooler.supabase.com port=6543 dbname=postgres", True),
        ("postgresql://u:p@aws-0-eu-central-1.pooler.supabase.com:5432/postgres", False),
        ("postgresql://u:p@db.abcdefgh.supabase.co:5432/postgres", False),
        ("postgresql://postgres@127.0.0.1/postgres", False),
    ],
)
def test_supabase_transaction_pooler_is_recognised_by_address(url: str, expected: bool) -> None:
    assert looks_like_transaction_pooler(url) is expected


def test_sigterm_while_the_database_is_gone_still_exits(db_url: str, tmp_path: Path) -> None:
    """A worker told to stop while its database has vanished must exit, not restart its
    queue workers forever (Procrastinate's shutdown fails on the missing database and does
    not re-raise the cancellation)."""
    env = dict(os.environ, DATABASE_URL=db_url, LOG_LEVEL="WARNING", SHUTDOWN_GRACEFUL_SECONDS="5")
    proc = WorkerProcess(env, tmp_path / "worker.log")
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            wait_for(
                lambda: (
                    conn.execute("SELECT count(*) = 4 FROM procrastinate_workers").fetchone()[0]  # type: ignore[index]
                    or None
                ),
                60,
                "four queue workers registered",
            )
        name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        admin = psycopg.conninfo.make_conninfo(db_url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(str(name))
                )
            )
        time.sleep(1.0)
        # A liveness bound, not a timing target: shutdown waits for the pool's 30 s
        # connection timeout once; before the fix the process never exited.
        code = proc.terminate(180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the worker did not exit after SIGTERM: " + proc.log_tail()) from None
    assert code is not None, proc.log_tail()
    assert "restarting in" not in proc.log_tail(20000).split("stopped while shutting down")[-1]
