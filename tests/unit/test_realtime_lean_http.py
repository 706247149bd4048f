"""The realtime lane's lean HTTP/1.1 client (worker.providers.lean_http) against a scripted
local server: keep-alive reuse, the answer framings, stale and dropped connections."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from worker.errors import ErrorKind, ProviderError
from worker.providers.error_policy import classify
from worker.providers.lean_http import LeanClient, Response, TransportError
from worker.providers.openai import lean_reply as _lean_reply


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted connection carried it (1-based)


#: A script step: given the request, the raw bytes to answer (None: answer nothing) and
#: whether to close the connection afterwards.
Step = Callable[[Seen], tuple[bytes | None, bool]]


def answer(
    body: bytes = b'{"ok": true}',
    status: str = "200 OK",
    headers: tuple[str, ...] = ("Content-Type: application/json",),
    close: bool = False,
) -> Step:
    def step(seen: Seen) -> tuple[bytes | None, bool]:
        head = [f"HTTP/1.1 {status}", *headers]
        if not any(h.lower().startswith("transfer-encoding") for h in headers):
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body, close

    return step


def echo(seen: Seen) -> tuple[bytes | None, bool]:
    return answer(json.dumps({"path": seen.path, "n": seen.connection}).encode())(seen)


@dataclass
class Server:
    steps: list[Step]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, path, headers, body, number)
                self.seen.append(seen)
                step = self.steps.pop(0) if self.steps else echo
                data, close = step(seen)
                if data is not None:
                    writer.write(data)
                    await writer.drain()
                if close:
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(steps=[])
    s = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = s.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        s.close()


async def test_keep_alive_reuses_one_connection_and_sends_json(server: Server) -> None:
    client = LeanClient(server.url, {"Authorization": "Bearer k-1"})
    payload = {"model": "m", "messages": [{"role": "user", "content": "Grüße {x}"}]}
    for _ in range(3):
        resp = await client.post_json("/chat/completions", payload)
        assert resp.status == 200
        assert resp.json() == {"path": "/v1/chat/completions", "n": 1}
    assert client.connects == 1 and server.connections == 1
    seen = server.seen[0]
    assert seen.method == "POST"
    assert json.loads(seen.body) == payload
    assert seen.headers["authorization"] == "Bearer k-1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    await client.aclose()


async def test_concurrent_requests_use_separate_connections(server: Server) -> None:
    client = LeanClient(server.url, {})
    resps = await asyncio.gather(*(client.post_json("/x", {"i": i}) for i in range(5)))
    assert all(r.status == 200 for r in resps)
    assert client.connects == 5
    # afterwards they are all pooled: five more sequential calls open nothing new
    for i in range(5):
        await client.post_json("/x", {"i": i})
    assert client.connects == 5
    await client.aclose()


async def test_chunked_and_gzip_answers_are_decoded(server: Server) -> None:
    body = json.dumps({"text": "x" * 5000}).encode()
    packed = gzip.compress(body)
    chunks = b"".join(
        f"{len(packed[i : i + 1000]):x}\r\n".encode() + packed[i : i + 1000] + b"\r\n"
        for i in range(0, len(packed), 1000)
    )
    server.steps = [
        answer(
            chunks + b"0\r\nX-Trailer: 1\r\n\r\n",
            headers=("Transfer-Encoding: chunked", "Content-Encoding: gzip"),
        )
    ]
    client = LeanClient(server.url, {})
    resp = await client.post_json("/x", {})
    assert resp.json() == {"text": "x" * 5000}
    # the chunked answer was read to its end: the connection is reused cleanly
    assert (await client.post_json("/y", {})).json()["path"] == "/v1/y"
    assert client.connects == 1
    await client.aclose()


async def test_connection_close_answer_is_not_reused(server: Server) -> None:
    server.steps = [answer(headers=("Connection: close",))]
    client = LeanClient(server.url, {})
    assert (await client.post_json("/x", {})).status == 200
    assert (await client.post_json("/x", {})).status == 200
    assert client.connects == 2 and server.connections == 2
    await client.aclose()


async def test_idle_connection_closed_by_the_server_is_not_reused(server: Server) -> None:
    # The server answers without "Connection: close" and then closes the idle connection.
    server.steps = [answer(close=True)]
    client = LeanClient(server.url, {})
    assert (await client.post_json("/x", {})).status == 200
    await asyncio.sleep(0.05)
    resp = await client.post_json("/x", {"again": 1})
    assert resp.status == 200
    assert client.connects == 2
    assert len(server.seen) == 2  # sent once per call: nothing was duplicated
    await client.aclose()


async def test_reused_connection_closing_before_any_answer_is_retried_once(
    server: Server,
) -> None:
    # The race a keep-alive client cannot avoid: the server closes an idle connection just
    # as a request goes out on it. Nothing of an answer arrived, so the request is sent
    # again on a fresh connection - once.
    server.steps = [answer(), lambda seen: (None, True)]
    client = LeanClient(server.url, {})
    assert (await client.post_json("/x", {})).status == 200
    resp = await client.post_json("/y", {})
    assert resp.json() == {"path": "/v1/y", "n": 2}
    assert client.connects == 2
    # and a fresh connection that ends without an answer is not retried
    server.steps = [lambda seen: (None, True), lambda seen: (None, True)]
    await client.aclose()
    with pytest.raises(TransportError):
        await client.post_json("/z", {})
    assert [s.path for s in server.seen] == ["/v1/x", "/v1/y", "/v1/y", "/v1/z"]
    await client.aclose()


async def test_no_answer_on_a_fresh_connection_is_a_retryable_connection_error(
    server: Server,
) -> None:
    server.steps = [lambda seen: (None, True)]
    client = LeanClient(server.url, {})
    with pytest.raises(TransportError) as info:
        await client.post_json("/x", {})
    assert isinstance(info.value, ConnectionError)
    err = classify(info.value, "openai")
    assert (err.kind, err.code) == (ErrorKind.RETRYABLE, "connection")
    assert len(server.seen) == 1  # not retried: the request may have been processed
    await client.aclose()


async def test_refused_connection_is_a_transport_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = LeanClient(f"http://127.0.0.1:{port}/v1", {})
    with pytest.raises(TransportError):
        await client.post_json("/x", {})


async def test_cancelled_request_drops_its_connection(server: Server) -> None:
    def never(seen: Seen) -> tuple[bytes | None, bool]:
        return None, False  # keep the connection open, answer nothing

    server.steps = [never]
    client = LeanClient(server.url, {})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post_json("/slow", {}), 0.2)
    # The late connection is never reused: the next request's answer is its own.
    resp = await client.post_json("/next", {})
    assert resp.json()["path"] == "/v1/next"
    assert client.connects == 2
    await client.aclose()


async def test_error_status_and_headers_are_returned(server: Server) -> None:
    server.steps = [
        answer(
            b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}',
            status="429 Too Many Requests",
            headers=("Content-Type: application/json", "Retry-After: 7"),
        )
    ]
    client = LeanClient(server.url, {})
    resp = await client.post_json("/x", {})
    assert resp.status == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    await client.aclose()


async def test_malformed_answer_is_a_transport_error(server: Server) -> None:
    server.steps = [lambda seen: (b"SSH-2.0-OpenSSH\r\n\r\n", True)]
    client = LeanClient(server.url, {})
    with pytest.raises(TransportError, match="not an HTTP"):
        await client.post_json("/x", {})
    await client.aclose()


def test_header_injection_and_bad_urls_are_rejected() -> None:
    with pytest.raises(ValueError):
        LeanClient("http://127.0.0.1:1/v1", {"Authorization": "Bearer a\r\nX-Evil: 1"})
    with pytest.raises(ValueError):
        LeanClient("ftp://example.com/v1", {})


def _reply_error(status: int, body: bytes) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        _lean_reply("openrouter", Response(status, {}, body), [{"role": "user", "content": "x"}])
    return info.value


def test_lean_replies_are_read_like_the_sdk_reads_them() -> None:
    ok = _lean_reply(
        "openai",
        Response(
            200,
            {},
            b'{"choices": [{"message": {"content": "Hallo"}, "finish_reason": "stop"}],'
            b' "usage": {"prompt_tokens": 7, "completion_tokens": 2}}',
        ),
        [{"role": "user", "content": "x"}],
    )
    assert (ok.text, ok.input_tokens, ok.output_tokens) == ("Hallo", 7, 2)
    # an error inside a 200 envelope is classified by the code it carries
    err = _reply_error(200, b'{"error": {"message": "Rate limit exceeded", "code": 429}}')
    assert (err.kind, err.status_code) == (ErrorKind.RETRYABLE, 429)
    err = _reply_error(200, b'{"error": {"message": "upstream failed", "code": "boom"}}')
    assert (err.kind, err.status_code) == (ErrorKind.RETRYABLE, 502)
    err = _reply_error(200, b"<html>gateway</html>")
    assert (err.kind, err.code) == (ErrorKind.UNKNOWN, "response_validation")
    err = _reply_error(200, b'{"choices": [{"message": {"content": null}}]}')
    assert (err.kind, err.code) == (ErrorKind.UNKNOWN, "empty_response")
    err = _reply_error(
        200, b'{"choices": [{"message": {"content": "x"}, "finish_reason": "content_filter"}]}'
    )
    assert err.kind is ErrorKind.CONTENT_REFUSED
    err = _reply_error(401, b'{"error": {"message": "bad key", "code": "invalid_api_key"}}')
    assert (err.kind, err.status_code) == (ErrorKind.AUTH, 401)
