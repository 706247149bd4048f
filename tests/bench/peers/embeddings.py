"""Embeddings beside the pgai vectorizer worker, same emulator, same Postgres.

pgai needs the ``vector`` extension, which the shared server lacks, so both sides run on a
private cluster from the ``pgserver`` wheel (tests/fixtures/private_pg.py), each run on a
database of its own with ``CREATE EXTENSION vector``. One emulator process (its
OpenAI-compatible ``/openai/v1/embeddings``, ``EMBED_LATENCY_MS`` per request) serves both.

* pgai: ``pgai install``, a table ``docs(id, body)``, ``ai.create_vectorizer`` (column
  loading, ``ai.embedding_openai('text-embedding-3-small', 1536, base_url => emulator)``,
  default chunking, ``processing_default(concurrency => EMBED_CONCURRENCY)``), and the
  documented ``pgai vectorizer worker`` in polling mode (``--poll-interval 1s``; its default
  is 5 minutes) with ``OPENAI_API_KEY`` set to a dummy key. Vectors stored = rows of the
  vectorizer's destination table.
* ours: ``python -m worker run`` with ``provider_concurrency = {"openai": EMBED_CONCURRENCY}``;
  ``N_TEXTS`` ``ai_jobs`` rows of kind ``embedding``. Vectors stored = rows with
  ``embedding`` set.

Both: the same ``N_TEXTS`` texts inserted in one statement; the clock starts just before
the INSERT; a poller (own connection, every 20 ms) notes the first sample with a vector
stored and the first with all ``N_TEXTS``. Provider requests = the emulator's count of
embeddings calls during the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tests.bench.peers.env import ROOT, PythonPeer, python_peer
from tests.bench.peers.queues import WorkerProcess, _env, _ready_when_registered
from worker.migrate import migrate

N_TEXTS = 10_000
EMBED_LATENCY_MS = 300.0
EMBED_CONCURRENCY = 10
MODEL = "text-embedding-3-small"
TEXT_SQL = (
    "'Frage ' || g || ': Welche Struktur wird bei der Appendektomie nach McBurney"
    " typischerweise durchtrennt, und warum ist das wichtig?'"
)


@dataclass
class EmbedResult:
    texts_per_s: float
    first_s: float
    last_s: float
    requests: int


class Emulator:
    """``python -m worker emulator`` in its own process, on a free port."""

    def __init__(self) -> None:
        from tests.bench.common import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "emulator", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/_emulator/health")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("emulator did not start") from None
                time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def embedding_calls(self) -> int:
        return int(self.call("GET", "/_emulator/stats").get("openai", {}).get("embedding_calls", 0))

    def env(self) -> dict[str, str]:
        return {"OPENAI_BASE_URL": f"{self.base}/openai/v1", "OPENAI_API_KEY": "emulator-dummy"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def vector_database(admin_url: str, label: str) -> Iterator[str]:
    name = f"aiw_{os.getpid()}_peers_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _watch(url: str, count_sql: str, t0: float, timeout: float = 600) -> tuple[float, float]:
    first: float | None = None
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute(count_sql).fetchone()
            n = int(row[0]) if row else 0
            now = time.monotonic()
            if n and first is None:
                first = now - t0
            if n >= N_TEXTS:
                return first or now - t0, now - t0
            time.sleep(0.02)
    raise TimeoutError(f"not all {N_TEXTS} vectors stored after {timeout:.0f}s")


def run_ours(emu: Emulator, admin_url: str, label: str) -> EmbedResult:
    with vector_database(admin_url, "ours_emb") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE ai_realtime_settings SET provider_concurrency = %s",
                (json.dumps({"openai": EMBED_CONCURRENCY}),),
            )
        env = _env(DATABASE_URL=url, LOG_LEVEL="WARNING", PROVIDER_TIMEOUT_SECONDS="60")
        env.update(emu.env())
        w = WorkerProcess([sys.executable, "-m", "worker", "run"], env, ROOT, label)
        _ready_when_registered(w, url)
        try:
            w.wait_ready()
            time.sleep(0.5)
            calls0 = emu.embedding_calls()
            with psycopg.connect(url, autocommit=True) as conn:
                t0 = time.monotonic()
                conn.execute(
                    "INSERT INTO ai_jobs (kind, provider, model, input_text)"
                    f" SELECT 'embedding', 'openai', %s, {TEXT_SQL}"
                    " FROM generate_series(1, %s) g",
                    (MODEL, N_TEXTS),
                )
            first, last = _watch(
                url, "SELECT count(*) FROM ai_jobs WHERE embedding IS NOT NULL", t0
            )
            calls = emu.embedding_calls() - calls0
        finally:
            w.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM ai_jobs WHERE status <> 'completed'"
            ).fetchone()
            if row and row[0]:
                raise RuntimeError(f"ours: {row[0]} embedding jobs not completed")
    return EmbedResult(N_TEXTS / last, first, last, calls)


def pgai_peer() -> PythonPeer:
    return python_peer("pgai")


def tiktoken_cache(peer: PythonPeer) -> str:
    """pgai ships tiktoken's encoding files (``pgai/vectorizer/tiktoken_cache``) but leaves
    ``TIKTOKEN_CACHE_DIR`` to its container image; without it tiktoken downloads
    cl100k_base from the internet, which fails here (every batch: 'embedding provider
    failed ... openaipublic.blob.core.windows.net ... Name or service not known')."""
    out = subprocess.run(
        [
            str(peer.python),
            "-c",
            "import os, pgai.vectorizer as v; print(os.path.dirname(v.__file__))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return os.path.join(out.stdout.strip(), "tiktoken_cache")


def run_pgai(peer: PythonPeer, emu: Emulator, admin_url: str, label: str) -> EmbedResult:
    pgai = str(peer.python.parent / "pgai")
    with vector_database(admin_url, "pgai") as url:
        subprocess.run([pgai, "install", "-d", url], check=True, capture_output=True, text=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE docs (id integer PRIMARY KEY, body text NOT NULL)")
            conn.execute(
                "SELECT ai.create_vectorizer('docs'::regclass, name => 'docs',"
                " loading => ai.loading_column('body'),"
                " embedding => ai.embedding_openai(%s, 1536, base_url => %s),"
                " destination => ai.destination_table('docs_embeddings'),"
                " processing => ai.processing_default(concurrency => %s))",
                (MODEL, f"{emu.base}/openai/v1", EMBED_CONCURRENCY),
            )
            row = conn.execute(
                "SELECT format('%I.%I', config->'destination'->>'target_schema',"
                " config->'destination'->>'target_table') FROM ai.vectorizer"
            ).fetchone()
            assert row is not None
            target = row[0]
        env = _env(OPENAI_API_KEY="emulator-dummy", TIKTOKEN_CACHE_DIR=tiktoken_cache(peer))
        w = WorkerProcess(
            [
                pgai,
                "vectorizer",
                "worker",
                "-d",
                url,
                "--poll-interval",
                "1s",
                "--concurrency",
                str(EMBED_CONCURRENCY),
                "--log-level",
                "WARN",
            ],
            env,
            ROOT,
            label,
        )
        try:
            time.sleep(3.0)  # start-up (imports, catalog check), then its first idle poll
            if not w.alive():
                raise RuntimeError(f"pgai vectorizer worker exited: {w.tail()}")
            calls0 = emu.embedding_calls()
            with psycopg.connect(url, autocommit=True) as conn:
                t0 = time.monotonic()
                conn.execute(
                    f"INSERT INTO docs (id, body) SELECT g, {TEXT_SQL} FROM generate_series(1, %s) g",
                    (N_TEXTS,),
                )
            try:
                first, last = _watch(url, f"SELECT count(*) FROM {target}", t0, timeout=300)
            except TimeoutError as exc:
                raise RuntimeError(f"pgai: {exc}; worker log: {w.tail()}") from exc
            calls = emu.embedding_calls() - calls0
        finally:
            w.stop()
    return EmbedResult(N_TEXTS / last, first, last, calls)
