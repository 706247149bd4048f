"""The emulator's own HTTP/1.1 layer, on raw sockets: keep-alive and pipelining, bodies
that arrive in pieces or chunked, Expect: 100-continue, Connection: close and HTTP/1.0,
malformed requests, large answers to slow readers, and slow requests that must not hold up
quick ones."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from worker.emulator import Emulator

CHAT_PATH = "/openai/v1/chat/completions"


def connect(emu: Emulator) -> socket.socket:
    return socket.create_connection(("127.0.0.1", emu.port), timeout=10)


def request(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = {"Host": "emu", "Authorization": "Bearer k", "Content-Length": str(len(data))}
    head.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    return "\r\n".join(lines).encode() + data


def chat(i: int) -> bytes:
    return request("POST", CHAT_PATH, {"messages": [{"role": "user", "content": f"Frage {i}"}]})


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.f = sock.makefile("rb")

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = self.f.readline()
        assert status.startswith(b"HTTP/1.1 "), status
        headers: dict[str, str] = {}
        while (line := self.f.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = self.f.read(int(headers.get("content-length", "0")))
        return int(status.split()[1]), headers, body

    def closed(self) -> bool:
        return self.f.read(1) == b""


def test_keep_alive_and_pipelining(emulator: Emulator) -> None:
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(chat(1) + chat(2))  # two requests in one packet
        first, second = r.response(), r.response()
        s.sendall(chat(1))
        third = r.response()
    assert [x[0] for x in (first, second, third)] == [200, 200, 200]
    answers = [json.loads(x[2])["choices"][0]["message"]["content"] for x in (first, second, third)]
    assert answers[0] == answers[2] != answers[1]
    ids = {x[1]["x-request-id"] for x in (first, second, third)}
    assert len(ids) == 3 and all(i.startswith("req_") for i in ids)
    assert first[1]["content-type"] == "application/json" and "date" in first[1]


def test_request_arriving_in_pieces(emulator: Emulator) -> None:
    data = chat(5)
    with connect(emulator) as s:
        r = Reader(s)
        for i in range(0, len(data), 7):
            s.sendall(data[i : i + 7])
            time.sleep(0.002)
        status, _, body = r.response()
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


def test_chunked_body_with_expect_continue_then_keep_alive(emulator: Emulator) -> None:
    payload = json.dumps({"latency_ms": 0, "seed": 3}).encode()
    head = (
        b"POST /_emulator/config HTTP/1.1\r\nHost: emu\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(head)
        assert r.f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert r.f.readline() == b"\r\n"
        for part in (payload[:5], payload[5:]):
            s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        status, _, body = r.response()
        assert status == 200 and json.loads(body)["seed"] == 3
        s.sendall(chat(1))  # the connection is still usable afterwards
        assert r.response()[0] == 200
    assert emulator.config.seed == 3


def test_connection_close_and_http_1_0(emulator: Emulator) -> None:
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(request("GET", "/_emulator/health", headers={"Connection": "close"}))
        status, headers, _ = r.response()
        assert status == 200 and headers["connection"] == "close" and r.closed()
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(b"GET /_emulator/health HTTP/1.0\r\n\r\n")
        assert r.response()[0] == 200 and r.closed()
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(b"GET /_emulator/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert r.response()[0] == 200
        s.sendall(b"GET /_emulator/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert r.response()[0] == 200


def test_malformed_requests(emulator: Emulator) -> None:
    cases = [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"OPTIONS /_emulator/health HTTP/1.1\r\n\r\n", 501),
        (b"GET /_emulator/health HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST /_emulator/config HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /_emulator/health HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ]
    for raw, expected in cases:
        with connect(emulator) as s:
            r = Reader(s)
            s.sendall(raw)
            status, headers, _ = r.response()
            assert (status, headers.get("connection")) == (expected, "close"), raw[:40]
            assert r.closed()


def test_large_answer_to_a_slow_reader(emulator: Emulator) -> None:
    body = {"model": "text-embedding-3-large", "input": [f"Text {i}" for i in range(100)]}
    with connect(emulator) as s:
        r = Reader(s)
        s.sendall(request("POST", "/openai/v1/embeddings", body) + chat(1))
        time.sleep(0.5)  # more than the socket buffers hold: the server waits for us
        status, _, data = r.response()
        assert status == 200 and len(data) > 5_000_000
        vectors = json.loads(data)["data"]
        assert len(vectors) == 100 and len(vectors[0]["embedding"]) == 3072
        assert r.response()[0] == 200  # the pipelined request after it, in order


def test_slow_request_does_not_hold_up_quick_ones(emulator: Emulator) -> None:
    with connect(emulator) as slow, connect(emulator) as quick:
        # a chunked upload that stops half-way: its thread waits for the rest
        slow.sendall(
            b"POST /openai/v1/files HTTP/1.1\r\nHost: emu\r\nAuthorization: Bearer k\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\n"
        )
        time.sleep(0.1)
        t0 = time.monotonic()
        r = Reader(quick)
        # answered while the slow upload is still incomplete (a blocked server would hit
        # the socket timeout of `connect`)
        for i in range(20):
            quick.sendall(chat(i))
            assert r.response()[0] == 200
    latency = 2.0
    emulator.configure(latency_ms=latency * 1000)  # with latency, calls run in threads
    with connect(emulator) as a, connect(emulator) as b:
        t0 = time.monotonic()
        a.sendall(chat(1))
        b.sendall(chat(2))
        assert Reader(a).response()[0] == 200 and Reader(b).response()[0] == 200
        # One after the other cannot take less than two latencies; overlapping waits do
        # (a loaded machine adds to both, so this bound is not a speed limit).
        assert time.monotonic() - t0 < 2 * latency, "the two waits did not overlap"


def test_a_failing_handler_costs_only_its_connection(emulator: Emulator) -> None:
    # A JSON array where an object belongs makes the chat handler raise (a bug-like path).
    bad = b"[1, 2]"
    raw = (
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: emu\r\nAuthorization: Bearer k\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(bad), bad)
    )
    for _ in range(2):
        with connect(emulator) as s:
            s.sendall(raw)
            assert Reader(s).closed()
    with connect(emulator) as s:
        s.sendall(chat(1))
        assert Reader(s).response()[0] == 200


def test_client_that_stops_sending_still_gets_its_whole_answer(emulator: Emulator) -> None:
    body = {"model": "text-embedding-3-large", "input": [f"Text {i}" for i in range(120)]}
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # less than the answer
        s.settimeout(10)
        s.connect(("127.0.0.1", emulator.port))
        r = Reader(s)
        s.sendall(request("POST", "/openai/v1/embeddings", body))
        s.shutdown(socket.SHUT_WR)  # half-close: nothing more to send
        time.sleep(0.3)
        status, _, data = r.response()
        assert status == 200 and len(json.loads(data)["data"]) == 120
