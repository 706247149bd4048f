"""Alerts against a local fake Pushover (real HTTP on 127.0.0.1): recorded always, sent when
configured, deduplicated, rate-limited, and never breaking the worker when Pushover fails."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from tests.fixtures.settings import configure
from worker.config import get_settings
from worker.ops.alerts import AlertPolicy, Outcome, Priority, alert, flush_held, send_pushover


class FakePushover:
    """A Pushover stand-in: records every POSTed form; answers with ``status``/``body``,
    optionally after ``delay`` seconds."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.status = 200
        self.body: dict[str, Any] = {"status": 1, "request": "fake"}
        self.delay = 0.0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                with fake._lock:
                    fake.messages.append({k: v[0] for k, v in form.items()})
                if fake.delay:
                    time.sleep(fake.delay)
                payload = json.dumps(fake.body).encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/1/messages.json"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakePushover:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def configure_pushover(mp: pytest.MonkeyPatch, url: str | None) -> None:
    """Point the worker at ``url`` (None: Pushover off)."""
    if url is None:
        # empty, not unset: a developer's .env must not switch real Pushover on in tests
        mp.setenv("PUSHOVER_USER_KEY", "")
        mp.setenv("PUSHOVER_API_TOKEN", "")
    else:
        mp.setenv("PUSHOVER_USER_KEY", "user-key-1")
        mp.setenv("PUSHOVER_API_TOKEN", "app-token-1")
        mp.setenv("PUSHOVER_URL", url)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def pushover_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pushover is off unless a test asks for the fake one."""
    configure_pushover(monkeypatch, None)
    yield
    get_settings.cache_clear()


@pytest.fixture
def pushover(pushover_off: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePushover]:
    """A running fake Pushover with the worker configured to use it."""
    with FakePushover() as fake:
        configure_pushover(monkeypatch, fake.url)
        yield fake
    get_settings.cache_clear()


@pytest.fixture
async def aconn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


def alerts(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return db.execute("SELECT * FROM worker_alerts ORDER BY id").fetchall()


POLICY = AlertPolicy(dedup_seconds=3600, rate_limit=5, rate_window_seconds=600, http_timeout=2)


async def test_alert_is_sent_and_recorded(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    out = await alert(aconn, "k1", "Title", "Body text", priority=Priority.HIGH, policy=POLICY)
    assert out is Outcome.SENT
    assert pushover.messages == [
        {
            "token": "app-token-1",
            "user": "user-key-1",
            "title": "Title",
            "message": "Body text",
            "priority": "1",
        }
    ]
    [row] = alerts(db)
    assert (row["dedup_key"], row["status"], row["priority"], row["suppressed"]) == (
        "k1",
        "sent",
        1,
        0,
    )
    assert row["sent_at"] is not None and row["delivery_error"] is None


async def test_repeats_within_the_window_are_counted_not_sent(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    outcomes = [await alert(aconn, "same", "T", f"m{i}", policy=POLICY) for i in range(4)]
    assert outcomes == [Outcome.SENT] + [Outcome.DEDUPLICATED] * 3
    assert len(pushover.messages) == 1
    [row] = alerts(db)
    assert row["suppressed"] == 3 and row["last_suppressed_at"] is not None
    # another key is independent
    assert await alert(aconn, "other", "T", "m", policy=POLICY) is Outcome.SENT
    # after the window the key alerts again
    short = AlertPolicy(dedup_seconds=0.2, rate_limit=5, rate_window_seconds=600)
    await asyncio.sleep(0.3)
    assert await alert(aconn, "same", "T", "again", policy=short) is Outcome.SENT
    assert [m["message"] for m in pushover.messages] == ["m0", "m", "again"]


async def test_global_rate_limit_holds_back_and_reports(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    policy = AlertPolicy(dedup_seconds=3600, rate_limit=5, rate_window_seconds=1.0)
    outcomes = [await alert(aconn, f"key{i}", "T", f"m{i}", policy=policy) for i in range(8)]
    assert outcomes == [Outcome.SENT] * 5 + [Outcome.RATE_LIMITED] * 3
    assert len(pushover.messages) == 5
    # high priority (provider stopped) is never held back, and reports what was
    assert (
        await alert(aconn, "stop", "T", "stop", priority=Priority.HIGH, policy=policy)
        is Outcome.SENT
    )
    assert pushover.messages[-1]["message"].startswith("stop")
    # ... and carries them: their titles, in a digest
    assert "3 alert(s) held back by the rate limit:" in pushover.messages[-1]["message"]
    assert [m.split(" ", 2)[2] for m in pushover.messages[-1]["message"].splitlines()[-3:]] == [
        "T"
    ] * 3
    rows = alerts(db)
    assert [r["status"] for r in rows] == ["sent"] * 5 + ["rate_limited"] * 3 + ["sent"]
    assert [r["delivered_with"] for r in rows[5:8]] == [rows[8]["id"]] * 3
    # still over the limit for normal alerts; once the window has passed, they go out again
    assert await alert(aconn, "key9", "T", "m9", policy=policy) is Outcome.RATE_LIMITED
    await asyncio.sleep(1.1)
    assert await alert(aconn, "later", "T", "later", policy=policy) is Outcome.SENT
    assert "1 alert(s) held back by the rate limit:" in pushover.messages[-1]["message"]
    assert len(pushover.messages) == 7


async def test_pushover_off_records_without_sending(
    monkeypatch: pytest.MonkeyPatch,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
) -> None:
    with FakePushover() as fake:
        configure_pushover(monkeypatch, None)
        monkeypatch.setenv("PUSHOVER_URL", fake.url)  # even with a URL: no credentials, no call
        get_settings.cache_clear()
        assert await alert(aconn, "k", "T", "m", policy=POLICY) is Outcome.DISABLED
        assert fake.messages == []
    [row] = alerts(db)
    assert (row["status"], row["sent_at"]) == ("disabled", None)
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("status", "body", "delay", "error_part"),
    [
        (500, {"status": 0}, 0.0, "HTTP 500"),
        (400, {"status": 0, "errors": ["user key is invalid"]}, 0.0, "user key is invalid"),
        (200, {"status": 0, "errors": ["no"]}, 0.0, "rejected"),
        (200, {"status": 1}, 3.0, "Timeout"),
    ],
)
async def test_failing_pushover_never_breaks_the_caller(
    pushover: FakePushover,
    aconn: psycopg.AsyncConnection[Any],
    db: psycopg.Connection[Any],
    status: int,
    body: dict[str, Any],
    delay: float,
    error_part: str,
) -> None:
    pushover.status, pushover.body, pushover.delay = status, body, delay
    policy = AlertPolicy(http_timeout=0.5)
    async with aconn.transaction():  # the caller's own transaction survives
        await aconn.execute("CREATE TEMP TABLE caller_work (x int)")
        # A hanging Pushover (answers "ok" after 3 s) fails with "Timeout": the short
        # timeout gave up before the answer, with no wall-clock limit asserted here.
        assert await alert(aconn, "k", "T", "m", policy=policy) is Outcome.FAILED
        await aconn.execute("INSERT INTO caller_work VALUES (1)")
    [row] = alerts(db)
    assert row["status"] == "failed" and error_part in row["delivery_error"]
    cur = await aconn.execute("SELECT count(*) FROM caller_work")
    assert await cur.fetchone() == (1,)


async def test_unreachable_pushover(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakePushover() as fake:
        url = fake.url  # the port is closed once we leave the block
    configure_pushover(monkeypatch, url)
    error = await send_pushover("T", "m", 0, timeout=1)
    assert error is not None and "Connect" in error
    get_settings.cache_clear()


async def test_message_is_truncated_to_pushover_limits(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any]
) -> None:
    assert await alert(aconn, "long", "T" * 400, "x" * 5000, policy=POLICY) is Outcome.SENT
    [sent] = pushover.messages
    assert (len(sent["title"]), len(sent["message"])) == (250, 1024)


async def test_concurrent_processes_send_an_alert_once(
    pushover: FakePushover, db_url: str, db: psycopg.Connection[Any]
) -> None:
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(6)]
    try:
        outcomes = await asyncio.gather(
            *(alert(c, "shared", "T", "m", policy=POLICY) for c in conns)
        )
    finally:
        for c in conns:
            await c.close()
    assert sorted(outcomes) == sorted([Outcome.SENT] + [Outcome.DEDUPLICATED] * 5)
    assert len(pushover.messages) == 1
    row = db.execute("SELECT suppressed FROM worker_alerts").fetchone()
    assert row == {"suppressed": 5}


async def test_concurrent_distinct_alerts_respect_the_rate_limit(
    pushover: FakePushover, db_url: str
) -> None:
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(9)]
    try:
        outcomes = await asyncio.gather(
            *(alert(c, f"k{i}", "T", "m", policy=POLICY) for i, c in enumerate(conns))
        )
    finally:
        for c in conns:
            await c.close()
    assert outcomes.count(Outcome.SENT) == 5
    assert outcomes.count(Outcome.RATE_LIMITED) == 4
    assert len(pushover.messages) == 5


async def test_bookkeeping_failure_is_reported_not_raised(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await aconn.execute("DROP TABLE worker_alert_keys")
    assert await alert(aconn, "k", "T", "m", policy=POLICY) is Outcome.ERROR
    assert pushover.messages == []
    cur = await aconn.execute("SELECT 1")  # the connection is still usable
    assert await cur.fetchone() == (1,)


def test_policy_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        ALERT_DEDUP_SECONDS="10",
        ALERT_RATE_LIMIT="2",
        ALERT_RATE_WINDOW_SECONDS="30",
        ALERT_HTTP_TIMEOUT="",  # empty means unset: the default
    )
    assert AlertPolicy.current() == AlertPolicy(10, 2, 30, 5.0)
    # an invalid value is an error naming the variable, not a silent default
    configure(monkeypatch, ALERT_HTTP_TIMEOUT="bogus")
    with pytest.raises(ValidationError, match="alert_http_timeout"):
        AlertPolicy.current()


async def test_held_back_alert_is_delivered_later_in_a_digest_not_dropped(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    """Over the limit, an alert is held; its repeats fall in the dedup window; nothing else is
    ever sent. The maintenance tick's flush delivers it, with the repeats, once there is room."""
    policy = AlertPolicy(dedup_seconds=3600, rate_limit=2, rate_window_seconds=1.0)
    assert await alert(aconn, "a", "first", "m", policy=policy) is Outcome.SENT
    assert await alert(aconn, "b", "second", "m", policy=policy) is Outcome.SENT
    assert await alert(aconn, "gemini-down", "gemini unavailable", "m", policy=policy) is (
        Outcome.RATE_LIMITED
    )
    for _ in range(2):  # the same problem again, inside the one-hour dedup window
        assert await alert(aconn, "gemini-down", "gemini unavailable", "m", policy=policy) is (
            Outcome.DEDUPLICATED
        )
    # no room yet: it stays held (and is not sent twice later)
    assert await flush_held(aconn, policy) is None
    assert len(pushover.messages) == 2
    await asyncio.sleep(1.1)
    assert await flush_held(aconn, policy) is Outcome.SENT
    digest = pushover.messages[-1]
    assert digest["title"] == "ai-worker: 1 alert(s) held back"
    assert "gemini unavailable (x3)" in digest["message"]
    rows = alerts(db)
    held = next(r for r in rows if r["dedup_key"] == "gemini-down")
    sent = next(r for r in rows if r["dedup_key"] == "digest")
    assert (held["status"], held["delivered_with"]) == ("rate_limited", sent["id"])
    assert sent["status"] == "sent"
    # delivered once: nothing is held any more
    assert await flush_held(aconn, policy) is None
    assert len(pushover.messages) == 3


async def test_digest_without_pushover_is_recorded(
    aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    policy = AlertPolicy(dedup_seconds=3600, rate_limit=0, rate_window_seconds=600)
    assert await alert(aconn, "k", "T", "m", policy=policy) is Outcome.RATE_LIMITED
    room = AlertPolicy(dedup_seconds=3600, rate_limit=5, rate_window_seconds=600)
    assert await flush_held(aconn, room) is Outcome.DISABLED
    rows = alerts(db)
    assert [r["status"] for r in rows] == ["rate_limited", "disabled"]
    assert rows[0]["delivered_with"] == rows[1]["id"]


async def test_a_crashed_task_alerts(
    pushover: FakePushover, db_url: str, db: psycopg.Connection[Any]
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from worker.queue.task_runs import recorded_run

    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as pool:
        with pytest.raises(ZeroDivisionError):
            async with recorded_run(pool, "poll", 42):
                raise ZeroDivisionError("division by zero in the poll")
    [row] = alerts(db)
    assert row["dedup_key"] == "task:poll:ZeroDivisionError"
    assert row["title"] == "ai-worker task poll crashed: ZeroDivisionError"
    assert "division by zero in the poll" in row["message"]
    assert pushover.messages[0]["title"] == row["title"]


async def test_a_failed_batch_submission_alerts(
    pushover: FakePushover, aconn: psycopg.AsyncConnection[Any], db: psycopg.Connection[Any]
) -> None:
    import uuid

    from worker.commentary.submit import abandon_intent
    from worker.errors import ErrorKind, ProviderError

    err = ProviderError("upload failed", kind=ErrorKind.RETRYABLE, provider="gemini")
    await abandon_intent(aconn, uuid.uuid4(), "gemini", err)
    [row] = alerts(db)
    assert row["title"] == "gemini: batch submission failed (retryable)"
    assert "upload failed" in row["message"] and row["status"] == "sent"
    # A quota failure stops the provider, which raises its own (critical) alert instead.
    quota = ProviderError("no credit", kind=ErrorKind.QUOTA, provider="mistral")
    await abandon_intent(aconn, uuid.uuid4(), "mistral", quota)
    titles = [r["title"] for r in alerts(db)]
    assert not any("mistral: batch submission failed" in t for t in titles)
    assert any("mistral stopped" in t for t in titles), titles
