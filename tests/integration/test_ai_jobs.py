"""Realtime ai_jobs end to end: real Postgres, the real runner (in-process), real SDKs over
real HTTP to the emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import drain, point_env_at_emulator
from worker.config import get_settings
from worker.emulator import Emulator
from worker.providers.routing import reset_providers
from worker.realtime.drain import reset_clients


@pytest.fixture
def rt(db_url: str, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """Worker env pointed at the emulator; fast retries for tests."""
    point_env_at_emulator(monkeypatch, emulator)
    get_settings.cache_clear()
    reset_providers()
    reset_clients()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_realtime_settings SET backoff_base_seconds = 0.1, linger_seconds = 0.2"
        )
    yield emulator
    get_settings.cache_clear()
    reset_providers()
    reset_clients()


def counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    rows = db.execute("SELECT status, count(*) AS n FROM ai_jobs GROUP BY 1").fetchall()
    return {r["status"]: r["n"] for r in rows}


def test_mixed_500_jobs_all_complete_with_results(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    # 40 sessions x 5 chat questions (OpenAI, OpenRouter, Gemini, Mistral), answered in order
    providers = [
        ("openai", "gpt-4.1-mini"),
        ("openrouter", "openai/gpt-4.1-mini"),
        ("gemini", "gemini-2.5-flash"),
        ("mistral", "mistral-small-latest"),
    ]
    for turn in range(5):
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)"
            " SELECT 'chat', (%s::text[])[1 + s %% 4], (%s::text[])[1 + s %% 4],"
            "        'Frage ' || %s || ' von Sitzung ' || s, 'wa:' || s"
            " FROM generate_series(1, 40) s",
            ([p for p, _ in providers], [m for _, m in providers], turn),
        )
    # 150 sentiment jobs through the template (JSON with a schema), Perplexity and Gemini
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'sentiment', CASE WHEN g % 2 = 0 THEN 'perplexity' ELSE 'gemini' END,"
        "        CASE WHEN g % 2 = 0 THEN 'sonar' ELSE 'gemini-2.5-flash' END,"
        "        'Das Essen war ' || CASE WHEN g % 3 = 0 THEN 'schlecht' ELSE 'gut' END || ' #' || g"
        " FROM generate_series(1, 150) g"
    )
    # 150 embeddings: OpenAI, Mistral, Gemini, Ollama
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'embedding', (ARRAY['openai','mistral','gemini','ollama'])[1 + g % 4],"
        "        (ARRAY['text-embedding-3-small','mistral-embed','gemini-embedding-001',"
        "               'nomic-embed-text'])[1 + g % 4],"
        "        'Text Nummer ' || g FROM generate_series(1, 150) g"
    )
    assert drain(60) == 0  # how fast is a figure for `make bench`, not a test limit
    assert counts(db) == {"completed": 500}

    chats = db.execute(
        "SELECT count(*) AS n FROM ai_jobs WHERE kind = 'chat' AND result_text <> ''"
        " AND input_tokens > 0 AND output_tokens > 0 AND latency_ms IS NOT NULL"
        " AND called_at >= created_at"
    ).fetchone()
    assert chats == {"n": 200}
    # each session's fifth question was sent with the 8 messages before it
    fifth = db.execute(
        "SELECT DISTINCT context_messages FROM ai_jobs j WHERE kind = 'chat' AND id = ("
        "  SELECT max(id) FROM ai_jobs WHERE session_id = j.session_id)"
    ).fetchall()
    assert fifth == [{"context_messages": 8}]
    msgs = db.execute(
        "SELECT count(*) AS n, count(DISTINCT session_id) AS s FROM ai_chat_messages"
    ).fetchone()
    assert msgs == {"n": 400, "s": 40}
    # answered in order: every job's user message precedes its answer, jobs in id order
    order = db.execute(
        "SELECT bool_and(ok) AS ok FROM (SELECT session_id, job_id >= lag(job_id) OVER"
        " (PARTITION BY session_id ORDER BY id) OR lag(job_id) OVER"
        " (PARTITION BY session_id ORDER BY id) IS NULL AS ok FROM ai_chat_messages) x"
    ).fetchone()
    assert order == {"ok": True}

    sentiment = db.execute(
        "SELECT count(*) AS n FROM ai_jobs WHERE kind = 'sentiment'"
        " AND result_json->>'sentiment' IN ('positive', 'neutral', 'negative')"
        " AND (result_json->>'score')::numeric BETWEEN -1 AND 1"
    ).fetchone()
    assert sentiment == {"n": 150}

    emb = db.execute(
        "SELECT provider, count(*) AS n, min(cardinality(embedding)) AS dmin,"
        " max(cardinality(embedding)) AS dmax FROM ai_jobs WHERE kind = 'embedding'"
        " GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(r["provider"], r["n"]) for r in emb] == [
        ("gemini", 38),
        ("mistral", 38),
        ("ollama", 37),
        ("openai", 37),
    ]
    assert all(r["dmin"] == r["dmax"] and r["dmin"] >= 256 for r in emb)
    # grouped: far fewer embedding requests than texts
    stats = rt.stats()
    calls = sum(stats.get(p, {}).get("embedding_calls", 0) for p in ("openai", "mistral", "ollama"))
    assert 0 < calls <= 20
    # costs were computed for priced models
    priced = db.execute(
        "SELECT count(*) AS n FROM ai_jobs WHERE provider = 'openai' AND kind = 'chat'"
        " AND cost_usd > 0"
    ).fetchone()
    assert priced == {"n": 50}


# ---------------------------------------------------------------- validation and session cap


def test_session_cap_rejects_the_eleventh_question(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    for i in range(10):
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, input_text, session_id)"
            " VALUES ('chat', 'mock', %s, 'sess-1')",
            (f"Frage {i}",),
        )
    with pytest.raises(
        psycopg.errors.CheckViolation, match="session 'sess-1' has reached its limit of 10"
    ):
        db.execute(
            "INSERT INTO ai_jobs (kind, provider, input_text, session_id)"
            " VALUES ('chat', 'mock', 'eine zu viel', 'sess-1')"
        )
    # the rejected insert did not count; another session is unaffected; a raised cap works
    assert db.execute("SELECT jobs_total FROM ai_chat_sessions WHERE id = 'sess-1'").fetchone() == {
        "jobs_total": 10
    }
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, input_text, session_id)"
        " VALUES ('chat', 'mock', 'andere Sitzung', 'sess-2')"
    )
    db.execute("UPDATE ai_chat_sessions SET max_jobs = 11 WHERE id = 'sess-1'")
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, input_text, session_id)"
        " VALUES ('chat', 'mock', 'jetzt geht es', 'sess-1')"
    )
    stats = db.execute(
        "SELECT total, questions_left FROM ai_session_stats WHERE session_id = 'sess-1'"
    ).fetchone()
    assert stats == {"total": 11, "questions_left": 0}


INVALID_INSERTS: list[tuple[str, tuple[str, ...], str]] = [
    ("kind, provider, input_text", ("chat", "mock", ""), "input_text is empty"),
    ("kind, provider, input_text", ("chat", "mock", " \n\t "), "input_text is empty"),
    (
        "kind, provider, input_text",
        ("chat", "mock", "x" * 32001),
        "too long \\(32001 characters, the limit is 32000\\)",
    ),
    ("kind, provider, input_text", ("chat", "mock", "bell\x07"), "control characters"),
    ("kind, provider, input_text", ("chat", "mock", "esc\x1b[0m"), "control characters"),
    ("kind, provider", ("chat", "mock"), "input_text is required"),
    ("kind, provider, input_text", ("translate", "mock", "x"), "unknown kind 'translate'"),
    ("kind, provider, input_text", ("chat", "nope", "x"), "unknown provider 'nope'"),
    ("kind, input_text", ("chat", "x"), "provider \\(or a route\\) is required"),
    (
        "kind, provider, input_text",
        ("chat", "openai", "x"),
        "model \\(or a route\\) is required",
    ),
    ("kind, route, input_text", ("chat", "missing", "x"), "unknown route 'missing'"),
    (
        "kind, provider, input_text, session_id",
        ("embedding", "mock", "x", "s"),
        "session_id is only for chat",
    ),
]


def test_invalid_input_is_rejected_at_insert_with_a_readable_error(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    for columns, values, message in INVALID_INSERTS:
        placeholders = ", ".join(["%s"] * len(values))
        with pytest.raises(psycopg.errors.CheckViolation, match=message):
            db.execute(f"INSERT INTO ai_jobs ({columns}) VALUES ({placeholders})", values)  # type: ignore[arg-type]
    assert db.execute("SELECT count(*) AS n FROM ai_jobs").fetchone() == {"n": 0}


def test_valid_text_with_newlines_and_tabs_and_a_route_is_accepted(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO ai_routes (name, provider, model) VALUES ('support', 'openai', 'gpt-4.1-mini')"
    )
    row = db.execute(
        "INSERT INTO ai_jobs (kind, route, input_text) VALUES ('chat', 'support', %s)"
        " RETURNING provider, model, status",
        ("Zeile 1\n\tZeile 2\r\n",),
    ).fetchone()
    assert row == {"provider": "openai", "model": "gpt-4.1-mini", "status": "pending"}
    # the insert deferred a drain job through Procrastinate
    assert db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'drain' AND status = 'todo'"
    ).fetchone() == {"n": 1}


# ---------------------------------------------------------------- context-length fallback


class _ContextLimitedServer:
    """An OpenAI-compatible chat endpoint (served as "ollama") whose model accepts at most
    ``max_messages`` messages and answers 400 context_length_exceeded above that, exactly as
    OpenAI words it. Records the message count of every call."""

    def __init__(self, max_messages: int) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.max_messages = max_messages
        self.calls: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(body["messages"])
                outer.calls.append(n)
                if n > outer.max_messages:
                    status, payload = (
                        400,
                        {
                            "error": {
                                "message": "This model's maximum context length is 50 tokens."
                                f" However, your messages resulted in {n * 20} tokens.",
                                "type": "invalid_request_error",
                                "param": "messages",
                                "code": "context_length_exceeded",
                            }
                        },
                    )
                else:
                    status, payload = (
                        200,
                        {
                            "id": "chatcmpl-x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {
                                        "role": "assistant",
                                        "content": f"saw {n} messages",
                                    },
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": n * 20,
                                "completion_tokens": 3,
                                "total_tokens": n * 20 + 3,
                            },
                        },
                    )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _seed_history(db: psycopg.Connection[Any], session: str, turns: int) -> None:
    db.execute("INSERT INTO ai_chat_sessions (id, jobs_total) VALUES (%s, 0)", (session,))
    db.execute(
        "INSERT INTO ai_chat_messages (session_id, role, content)"
        " SELECT %s, CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END, 'Nachricht ' || g"
        " FROM generate_series(1, %s) g",
        (session, turns),
    )


def test_context_length_error_halves_history_then_fails_at_the_floor(
    rt: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _ContextLimitedServer(max_messages=4)  # system + 2 history + user fits
    try:
        monkeypatch.setenv("OLLAMA_BASE_URL", server.url)
        get_settings.cache_clear()
        reset_clients()
        db.execute("UPDATE ai_realtime_settings SET context_messages = 8, context_floor = 1")
        _seed_history(db, "long", 12)
        ok = db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, system_prompt, input_text, session_id)"
            " VALUES ('chat', 'ollama', 'llama3', 'Du bist ein Support-Bot.', 'Hilfe!', 'long')"
            " RETURNING id"
        ).fetchone()
        assert drain(30) == 0
        job = db.execute(
            "SELECT status, context_messages, result_text, attempts FROM ai_jobs WHERE id = %s",
            (ok["id"],),  # type: ignore[index]
        ).fetchone()
        # 8 history turns (+ system + user) = 10 -> 4 -> 2 history = 4 messages: answered
        assert server.calls == [10, 6, 4]
        assert job == {
            "status": "completed",
            "context_messages": 2,
            "result_text": "saw 4 messages",
            "attempts": 0,
        }

        server.calls.clear()
        server.max_messages = 2  # even system + 1 history + user is too long
        _seed_history(db, "longer", 12)
        bad = db.execute(
            "INSERT INTO ai_jobs (kind, provider, model, system_prompt, input_text, session_id)"
            " VALUES ('chat', 'ollama', 'llama3', 'Du bist ein Support-Bot.', 'Hilfe!', 'longer')"
            " RETURNING id"
        ).fetchone()
        assert drain(30) == 0
        job = db.execute(
            "SELECT status, error_kind, context_messages, error FROM ai_jobs WHERE id = %s",
            (bad["id"],),  # type: ignore[index]
        ).fetchone()
        assert server.calls == [10, 6, 4, 3]  # 8 -> 4 -> 2 -> 1 history turns, then fail
        assert job is not None
        assert (job["status"], job["error_kind"], job["context_messages"]) == (
            "failed",
            "context_too_long",
            1,
        )
        assert "maximum context length" in job["error"]
    finally:
        server.close()


# ---------------------------------------------------------------- retries and rate limits


def test_provider_rate_limit_delays_but_loses_nothing(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    rt.configure(
        http_faults=[{"kind": "rate_limit", "provider": "openai", "count": 3, "retry_after": 0.3}]
    )
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'Text ' || g FROM generate_series(1, 20) g"
    )
    assert drain(30) == 0
    assert counts(db) == {"completed": 20}
    row = db.execute("SELECT sum(throttled) AS t, sum(attempts) AS a FROM ai_jobs").fetchone()
    assert row == {"t": 3, "a": 0}  # three 429s, none used up an attempt
    waited = db.execute(
        "SELECT min(extract(epoch FROM completed_at - created_at)) AS s FROM ai_jobs WHERE throttled > 0"
    ).fetchone()
    assert waited is not None and waited["s"] >= 0.3  # retry-after was honoured


def test_shared_rate_limit_spreads_calls_and_fails_none(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO ai_rate_limits (provider, model, rps) VALUES ('openai', 'gpt-4.1-mini', 10)"
    )
    # Another model of the same provider has no limit and must not wait behind it.
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'openai', 'gpt-4.1-mini', 'limitiert ' || g FROM generate_series(1, 30) g"
    )
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'openai', 'gpt-4.1', 'frei ' || g FROM generate_series(1, 30) g"
    )
    t0 = time.monotonic()
    assert drain(30) == 0
    assert counts(db) == {"completed": 60}
    assert time.monotonic() - t0 >= 2.0  # 30 calls at 10/s need at least 3 windows
    per_second = db.execute(
        "SELECT date_trunc('second', called_at) AS s, count(*) AS n FROM ai_jobs"
        " WHERE model = 'gpt-4.1-mini' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert len(per_second) >= 3
    # Admission counts every call in a clock-aligned second window before it is made (the
    # design in worker/realtime/rate_limits.py): no window admitted more than the limit,
    # and every call was admitted. (Counting by called_at instead flaked: a call admitted
    # at the very end of one window can start a few ms into the next.)
    windows = db.execute(
        "SELECT requests FROM ai_rate_usage WHERE provider = 'openai'"
        " AND model = 'gpt-4.1-mini' AND unit = 'second'"
    ).fetchall()
    assert max(r["requests"] for r in windows) <= 10
    assert sum(r["requests"] for r in windows) == 30
    assert len(windows) >= 3
    free = db.execute(
        "SELECT max(extract(epoch FROM completed_at - created_at)) AS s, sum(throttled) AS t"
        " FROM ai_jobs WHERE model = 'gpt-4.1'"
    ).fetchone()
    assert free is not None and free["t"] == 0 and free["s"] < 1.5
    limited = db.execute(
        "SELECT sum(throttled) AS t, sum(attempts) AS a FROM ai_jobs WHERE model = 'gpt-4.1-mini'"
    ).fetchone()
    assert limited is not None and limited["t"] >= 20 and limited["a"] == 0
    usage = db.execute(
        "SELECT sum(requests) AS r FROM ai_rate_usage WHERE unit = 'second'"
    ).fetchone()
    assert usage == {"r": 30}


def test_minute_quota_makes_jobs_wait_for_the_next_window(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    # Not across a minute boundary: the next window would admit the waiting jobs mid-test.
    sec = db.execute("SELECT extract(second FROM clock_timestamp()) AS s").fetchone()
    if sec is not None and sec["s"] > 52:
        time.sleep(60.5 - float(sec["s"]))
    db.execute("INSERT INTO ai_rate_limits (provider, model, rpm) VALUES ('mistral', '*', 5)")
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'completion', 'mistral', 'mistral-small-latest', 'Text ' || g FROM generate_series(1, 8) g"
    )
    from tests.fixtures.pipeline import drain as run_until

    run_until(3)  # not idle: three jobs wait for the next minute
    rows = db.execute(
        "SELECT status, count(*) AS n, min(next_attempt_at) AS at FROM ai_jobs GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(r["status"], r["n"]) for r in rows] == [("completed", 5), ("pending", 3)]
    waiting = rows[1]["at"]
    minute = db.execute("SELECT date_trunc('minute', now()) + interval '1 minute' AS m").fetchone()
    assert minute is not None
    assert waiting.replace(second=0, microsecond=0) <= minute["m"]
    assert waiting.second == 0 and waiting.microsecond == 0  # due exactly when the window ends
    # a drain is scheduled for that moment
    sched = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'drain' AND status = 'todo'"
        " AND scheduled_at = %s",
        (waiting,),
    ).fetchone()
    assert sched == {"n": 1}


def test_server_errors_retry_with_backoff_then_fail_after_max_attempts(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    rt.configure(http_faults=[{"kind": "server", "provider": "perplexity", "count": 2}])
    db.execute("UPDATE ai_realtime_settings SET max_attempts = 3")
    a = db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('completion', 'perplexity', 'sonar', 'zweimal 500, dann gut') RETURNING id"
    ).fetchone()
    assert drain(30) == 0
    job = db.execute(
        "SELECT status, attempts, result_text FROM ai_jobs WHERE id = %s", (a["id"],)
    ).fetchone()  # type: ignore[index]
    assert job is not None and job["status"] == "completed" and job["attempts"] == 2

    rt.configure(http_faults=[{"kind": "server", "provider": "perplexity", "count": None}])
    b = db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('completion', 'perplexity', 'sonar', 'immer 500') RETURNING id"
    ).fetchone()
    assert drain(30) == 0
    job = db.execute(
        "SELECT status, attempts, error_kind FROM ai_jobs WHERE id = %s", (b["id"],)
    ).fetchone()  # type: ignore[index]
    assert job == {"status": "failed", "attempts": 3, "error_kind": "retryable"}
    err = db.execute(
        "SELECT kind, provider, occurrences FROM worker_errors WHERE kind = 'ai_job:retryable'"
        " AND fingerprint LIKE '%%failed'"
    ).fetchone()
    assert err is not None and err["provider"] == "perplexity"


def test_permanent_errors_fail_at_once_with_the_classified_reason(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text) VALUES"
        " ('embedding', 'deepseek', 'deepseek-chat', 'kein Embedding-API')"
    )
    assert drain(30) == 0
    job = db.execute("SELECT status, attempts, error_kind, error FROM ai_jobs").fetchone()
    assert job is not None
    assert (job["status"], job["attempts"], job["error_kind"]) == ("failed", 1, "invalid_request")
    assert "no embeddings API" in job["error"]


def test_views_show_queue_position_session_stats_and_throughput(
    rt: Emulator, db: psycopg.Connection[Any]
) -> None:
    db.execute(
        "INSERT INTO ai_jobs (kind, provider, input_text, session_id, priority)"
        " SELECT 'chat', 'mock', 'Frage ' || g, 'v1', 0 FROM generate_series(1, 3) g"
    )
    urgent = db.execute(
        "INSERT INTO ai_jobs (kind, provider, input_text, priority) VALUES ('completion', 'mock', 'eilig', 5)"
        " RETURNING id"
    ).fetchone()
    pos = db.execute(
        "SELECT id, queue_position, queue_length FROM ai_job_queue_position ORDER BY queue_position"
    ).fetchall()
    assert pos[0]["id"] == urgent["id"]  # type: ignore[index]
    assert [r["queue_position"] for r in pos] == [1, 2, 3, 4] and pos[0]["queue_length"] == 4
    assert drain(30) == 0
    stats = db.execute("SELECT * FROM ai_session_stats WHERE session_id = 'v1'").fetchone()
    assert stats is not None
    assert (stats["total"], stats["completed"], stats["failed"], stats["questions_left"]) == (
        3,
        3,
        0,
        7,
    )
    assert stats["avg_processing_seconds"] is not None and stats["avg_processing_seconds"] > 0
    tp = db.execute(
        "SELECT kind, total, completed, failed FROM ai_job_throughput ORDER BY kind"
    ).fetchall()
    assert tp == [
        {"kind": "chat", "total": 3, "completed": 3, "failed": 0},
        {"kind": "completion", "total": 1, "completed": 1, "failed": 0},
    ]
    assert db.execute("SELECT count(*) AS n FROM ai_job_queue_position").fetchone() == {"n": 0}
