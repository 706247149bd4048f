"""HTTP plumbing shared by the provider modules: request/response objects, body reading
(Content-Length or chunked), a streaming multipart parser and a tiny regex router."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from worker.emulator.faults import ErrorReply

_CHUNK = 1 << 16


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...
    def readline(self, limit: int = ..., /) -> bytes: ...


class Headers:
    """Request headers by case-insensitive name; of a repeated header the first one counts
    (as with ``email.message.Message.get``)."""

    __slots__ = ("_by_name",)

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self._by_name = {k.lower(): v for k, v in (items or {}).items()}

    def add(self, name: str, value: str) -> None:
        self._by_name.setdefault(name.lower(), value)

    def replace(self, name: str, value: str) -> None:
        self._by_name[name.lower()] = value

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._by_name.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def __repr__(self) -> str:
        return f"Headers({self._by_name!r})"


class BodyReader:
    """Reads a request body exactly once, honouring Content-Length or chunked encoding."""

    def __init__(self, rfile: _Readable, headers: Headers) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self._remaining = int(headers.get("Content-Length") or 0)
        self._chunk_left = 0
        self._done = not self._chunked and self._remaining == 0

    def read(self, n: int = _CHUNK) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the body."""
        if self._done:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(n, self._remaining))
            self._remaining -= len(data)
            if not data or self._remaining <= 0:
                self._done = True
            return data
        if self._chunk_left == 0:
            size_line = self._rfile.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # trailers until blank line
                while self._rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                self._done = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline()  # CRLF after chunk
        if not data:
            self._done = True
        return data

    def read_all(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)

    def drain(self) -> None:
        while self.read():
            pass

    @property
    def done(self) -> bool:
        return self._done


@dataclass
class Request:
    """One provider request; ``path`` has the provider prefix removed."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: BodyReader
    provider: str
    host: str
    params: dict[str, str] = field(default_factory=dict)
    answer_fault: str | None = None  # an answer-level fault kind (worker.emulator.answer_faults)
    _json: Any = None

    def json(self) -> Any:
        """The JSON body ({} when empty); raises ValueError on bad JSON."""
        if self._json is None:
            raw = self.body.read_all()
            self._json = json.loads(raw) if raw.strip() else {}
        return self._json

    def q(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    """What to send back: a JSON/bytes body or a file streamed from disk."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file_path: str | None = None
    content_type: str = "application/json"

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(obj).encode(), dict(headers or {}))

    @classmethod
    def error(cls, reply: ErrorReply) -> Response:
        return cls(reply.status, reply.encoded(), dict(reply.headers))

    def with_status(self, status: int) -> Response:
        """The same response with another status code."""
        self.status = status
        return self


Handler = Callable[[Request], Response]


class Router:
    """Method + regex routing; named groups become ``Request.params``."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        for m, rx, h in self._routes:
            if m == method:
                mo = rx.match(path)
                if mo:
                    return h, mo.groupdict()
        return None


def parse_query(qs: str) -> dict[str, list[str]]:
    return parse_qs(qs, keep_blank_values=True)


# --------------------------------------------------------------------------- multipart


@dataclass
class UploadedFile:
    filename: str
    path: str
    size: int
    content_type: str


def _boundary(content_type: str) -> bytes:
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise ValueError("multipart boundary missing")
    return m.group(1).encode()


def _part_headers(raw: bytes) -> tuple[str, str | None, str]:
    name = ""
    filename: str | None = None
    ctype = "application/octet-stream"
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            nm = re.search(r'\bname="([^"]*)"', value)
            fm = re.search(r'\bfilename="([^"]*)"', value)
            name = nm.group(1) if nm else ""
            filename = fm.group(1) if fm else None
        elif key.strip().lower() == "content-type":
            ctype = value.strip()
    return name, filename, ctype


def parse_multipart(
    body: BodyReader, content_type: str, file_path: str, max_field: int = 1 << 20
) -> tuple[dict[str, str], UploadedFile | None]:
    """Stream a multipart/form-data body: plain fields into a dict, the (single) file part
    straight to ``file_path`` without holding it in memory."""
    delim = b"\r\n--" + _boundary(content_type)
    buf = b"\r\n"  # lets the first boundary match the same delimiter as the others
    fields: dict[str, str] = {}
    upload: UploadedFile | None = None

    def fill() -> bool:
        nonlocal buf
        data = body.read()
        if not data:
            return False
        buf += data
        return True

    # skip preamble up to the first delimiter
    while delim not in buf:
        if not fill():
            raise ValueError("multipart: no boundary found")
    buf = buf[buf.index(delim) + len(delim) :]
    while True:
        while len(buf) < 2 and fill():
            pass
        if buf.startswith(b"--"):
            break  # closing delimiter
        while b"\r\n\r\n" not in buf:
            if not fill():
                raise ValueError("multipart: truncated part headers")
        head, buf = buf.split(b"\r\n\r\n", 1)
        name, filename, ctype = _part_headers(head.lstrip(b"\r\n"))
        if filename is not None and upload is None:
            size = 0
            with open(file_path, "wb") as out:
                while True:
                    idx = buf.find(delim)
                    if idx >= 0:
                        out.write(buf[:idx])
                        size += idx
                        buf = buf[idx + len(delim) :]
                        break
                    # keep a tail that may hold the start of a split delimiter
                    keep = len(delim) - 1
                    if len(buf) > keep:
                        out.write(buf[:-keep])
                        size += len(buf) - keep
                        buf = buf[-keep:]
                    if not fill():
                        raise ValueError("multipart: truncated file part")
            upload = UploadedFile(filename, file_path, size, ctype)
        else:
            while delim not in buf:
                if len(buf) > max_field or not fill():
                    raise ValueError("multipart: field too large or truncated")
            idx = buf.index(delim)
            fields[name] = buf[:idx].decode("utf-8", "replace")
            buf = buf[idx + len(delim) :]
    body.drain()
    return fields, upload
