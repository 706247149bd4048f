"""Pure JSONL helpers shared by the batch adapters (and the request/response shapes the
realtime adapters reuse).

* **Request lines**: :func:`openai_request_line`, :func:`gemini_request_line`,
  :func:`mistral_request_line` build one dict per :class:`ChatRequest`; :func:`encode_line`
  turns it into the exact bytes written to the upload file.
* **Result lines**: :func:`parse_openai_line`, :func:`parse_gemini_line`,
  :func:`parse_gemini_inline`, :func:`parse_mistral_line` turn one decoded result object
  into a :class:`ResultLine` (text, usage, model version, or a classified error).
* **Chunking**: :func:`chunk_requests` splits requests so each chunk fits
  :class:`BatchLimits`, measured on the encoded lines.
* **Streaming I/O**: :func:`temp_jsonl` writes lines to a temp file and always deletes it;
  :class:`LineReader` / :func:`read_result_lines` parse downloaded byte chunks line by line.

Malformed result lines (decision)
---------------------------------
A line that is not a JSON object, or lacks a usable id, is *malformed*:

* if the id (``custom_id`` / ``key`` / ``metadata.key``) can still be read - from the
  parsed object, or by a tight regex over the broken text - a
  ``ResultLine(ok=False, error_code="malformed_line")`` is yielded for that id, so the
  request is failed/retried like any other error line;
* if no id can be read there is nothing to attach a ResultLine to, so none is yielded:
  the reader counts it (``LineReader.malformed``) and calls ``on_malformed(raw, reason)``
  so the caller can record it. The requests it belonged to simply never come back, and the
  caller's "requests without a result" accounting handles them.

Gemini response schema (decision)
---------------------------------
Gemini lines carry the full JSON Schema in ``generationConfig.responseJsonSchema``. The
Developer API's ``responseSchema`` accepts only the OpenAPI-3.0 ``Schema`` subset (no
``additionalProperties``/``$defs``/``const`` ...), while ``responseJsonSchema`` takes a JSON
Schema as-is; google-genai 3.4 exposes it as ``GenerationConfig.response_json_schema`` and
serialises it to ``responseJsonSchema``. ``schema_field="responseSchema"`` is available for
models that reject it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, TypeVar

from worker.errors import ErrorKind, ProviderError
from worker.providers.answer_rules import (
    AnswerProblem,
    check_answer,
    schema_instruction,
)
from worker.providers.base import BatchLimits, ChatRequest, ResultLine
from worker.providers.error_policy import classify_http, classify_rpc_status, kind_for_result_code

T = TypeVar("T")
JsonDict = dict[str, Any]
LineParser = Callable[[JsonDict], ResultLine | None]
MalformedCallback = Callable[[bytes, str], None]

OPENAI_CHAT_URL: Final = "/v1/chat/completions"

# ---------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------


def chat_messages(request: ChatRequest, *, schema_in_prompt: bool = False) -> list[JsonDict]:
    """System + user messages; with ``schema_in_prompt`` the schema is appended to the
    system prompt (for endpoints that only offer ``json_object`` mode)."""
    system = request.system_prompt
    if schema_in_prompt:
        system = f"{system}\n\n{schema_instruction(request.json_schema)}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": request.user_prompt},
    ]


def json_schema_format(request: ChatRequest) -> JsonDict:
    """OpenAI/Mistral ``response_format`` asking for strict schema-valid JSON."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": request.schema_name,
            "schema": request.json_schema,
            "strict": True,
        },
    }


def openai_chat_body(
    request: ChatRequest,
    model: str | None,
    *,
    json_mode: Literal["json_schema", "json_object"] = "json_schema",
    max_tokens_field: str = "max_completion_tokens",
) -> JsonDict:
    """A ``/v1/chat/completions`` body (OpenAI; Mistral with ``model=None``).

    ``max_tokens_field``: OpenAI deprecated ``max_tokens`` for ``max_completion_tokens``;
    Mistral and most OpenAI-compatible servers only know ``max_tokens``."""
    schema_in_prompt = json_mode == "json_object"
    body: JsonDict = {}
    if model is not None:
        body["model"] = model
    body["messages"] = chat_messages(request, schema_in_prompt=schema_in_prompt)
    body["response_format"] = (
        {"type": "json_object"} if schema_in_prompt else json_schema_format(request)
    )
    if request.max_output_tokens is not None:
        body[max_tokens_field] = request.max_output_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def gemini_generate_request(
    request: ChatRequest, *, schema_field: str = "responseJsonSchema"
) -> JsonDict:
    """A ``GenerateContentRequest`` (camelCase, as the REST API and batch files take it)."""
    generation: JsonDict = {
        "responseMimeType": "application/json",
        schema_field: request.json_schema,
    }
    if request.max_output_tokens is not None:
        generation["maxOutputTokens"] = request.max_output_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    return {
        "contents": [{"role": "user", "parts": [{"text": request.user_prompt}]}],
        "systemInstruction": {"parts": [{"text": request.system_prompt}]},
        "generationConfig": generation,
    }


def openai_request_line(request: ChatRequest, model: str) -> JsonDict:
    """One OpenAI Batch input line for ``/v1/chat/completions``."""
    return {
        "custom_id": request.custom_id,
        "method": "POST",
        "url": OPENAI_CHAT_URL,
        "body": openai_chat_body(request, model),
    }


def gemini_request_line(
    request: ChatRequest, model: str, *, schema_field: str = "responseJsonSchema"
) -> JsonDict:
    """One Gemini Batch input line; the model is a batch-level argument, not per line."""
    del model  # one model per batch, given to batches.create
    return {
        "key": request.custom_id,
        "request": gemini_generate_request(request, schema_field=schema_field),
    }


def mistral_request_line(request: ChatRequest, model: str) -> JsonDict:
    """One Mistral Batch input line; the model and endpoint are job-level."""
    del model
    return {
        "custom_id": request.custom_id,
        "body": openai_chat_body(request, None, max_tokens_field="max_tokens"),
    }


REQUEST_LINE_BUILDERS: Mapping[str, Callable[..., JsonDict]] = {
    "openai": openai_request_line,
    "gemini": gemini_request_line,
    "mistral": mistral_request_line,
}


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON plus ``\\n``: the exact bytes a line takes in the upload file."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


# Two placeholders (private-use characters, so never real ids or prompts) mark where the
# per-request strings go in a line encoded once per run.
_HOLE_ID = "\ue000aiw:custom_id\ue000"
_HOLE_USER = "\ue000aiw:user_prompt\ue000"


def _json_str(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


class _LineTemplate:
    """The upload line of one (provider, model, system prompt, schema, options) with holes
    for the two strings that differ per request: ``custom_id`` and the user prompt. Only
    those are JSON-encoded per line; the rest (the system prompt and the JSON Schema, most
    of a line's bytes) was encoded once. The bytes equal :func:`encode_line` of the built
    line exactly (``test_line_template_bytes_equal_full_encoding``)."""

    __slots__ = ("id_first", "parts", "schema")

    def __init__(self, parts: tuple[bytes, bytes, bytes], id_first: bool, schema: object):
        self.parts = parts
        self.id_first = id_first
        self.schema = schema  # held so its id() in the cache key cannot be reused

    @classmethod
    def build(cls, line: bytes, schema: object) -> _LineTemplate | None:
        hole_id, hole_user = _json_str(_HOLE_ID), _json_str(_HOLE_USER)
        if line.count(hole_id) != 1 or line.count(hole_user) != 1:
            return None
        id_first = line.index(hole_id) < line.index(hole_user)
        first, second = (hole_id, hole_user) if id_first else (hole_user, hole_id)
        head, rest = line.split(first)
        middle, tail = rest.split(second)
        return cls((head, middle, tail), id_first, schema)

    def render(self, request: ChatRequest) -> bytes:
        head, middle, tail = self.parts
        a, b = _json_str(request.custom_id), _json_str(request.user_prompt)
        if not self.id_first:
            a, b = b, a
        return b"".join((head, a, middle, b, tail))


def request_line_encoder(
    provider: str, model: str, **options: Any
) -> Callable[[ChatRequest], bytes]:
    """``request -> exact upload-line bytes`` for ``provider`` (``options`` go to the line
    builder, e.g. Gemini's ``schema_field``). The adapters write these bytes, and
    :func:`chunk_requests` measures them.

    Lines are rendered from a :class:`_LineTemplate` per distinct system prompt, schema and
    options: about 2 µs a line instead of 16 µs for a full ``json.dumps`` of the nested body
    (50,000-line batches are encoded twice, once to chunk and once to upload)."""
    build = REQUEST_LINE_BUILDERS[provider]
    templates: dict[tuple[Any, ...], _LineTemplate | None] = {}

    def encode(request: ChatRequest) -> bytes:
        key = (
            request.system_prompt,
            request.schema_name,
            id(request.json_schema),
            request.max_output_tokens,
            request.temperature,
        )
        template = templates.get(key)
        if key not in templates or (
            template is not None and template.schema is not request.json_schema
        ):
            if len(templates) >= 16:
                templates.clear()
            probe = replace(request, custom_id=_HOLE_ID, user_prompt=_HOLE_USER)
            template = _LineTemplate.build(
                encode_line(build(probe, model, **options)), request.json_schema
            )
            templates[key] = template
        if template is None:  # a placeholder inside the constant part: encode it whole
            return encode_line(build(request, model, **options))
        return template.render(request)

    return encode


# ---------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------


class LineTooLargeError(ValueError):
    """One encoded request line alone exceeds ``BatchLimits.max_bytes``."""


def chunk_requests(
    items: Iterable[T], encode: Callable[[T], bytes], limits: BatchLimits
) -> Iterator[list[T]]:
    """Split ``items`` into consecutive chunks of at most ``limits.max_requests`` items whose
    encoded lines total at most ``limits.max_bytes``. Order is kept; sizes are measured on
    ``encode(item)`` (the line bytes including the newline). Raises LineTooLargeError for
    an item that cannot fit even alone."""
    chunk: list[T] = []
    size = 0
    for item in items:
        n = len(encode(item))
        if n > limits.max_bytes:
            raise LineTooLargeError(f"one request line is {n} bytes > {limits.max_bytes}")
        if chunk and (len(chunk) >= limits.max_requests or size + n > limits.max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


def check_batch_size(provider: str, limits: BatchLimits, count: int, size: int) -> None:
    """Raise ProviderError(INVALID_REQUEST) unless ``count`` lines of ``size`` bytes fit
    ``limits`` (callers are expected to have used :func:`chunk_requests`)."""
    if count == 0:
        raise ProviderError(
            "a batch needs at least one request",
            kind=ErrorKind.INVALID_REQUEST,
            provider=provider,
            code="empty_batch",
        )
    if count > limits.max_requests or size > limits.max_bytes:
        raise ProviderError(
            f"batch of {count} requests / {size} bytes exceeds "
            f"{limits.max_requests} requests / {limits.max_bytes} bytes",
            kind=ErrorKind.INVALID_REQUEST,
            provider=provider,
            code="batch_too_large",
        )


# ---------------------------------------------------------------------------------------
# Temp files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonlFile:
    """A written temp JSONL file."""

    path: str
    lines: int
    size: int


def write_jsonl(fileobj: Any, lines: Iterable[bytes]) -> tuple[int, int]:
    """Write encoded lines to a binary file object; returns (line count, byte count)."""
    count = size = 0
    for line in lines:
        fileobj.write(line)
        count += 1
        size += len(line)
    return count, size


@contextmanager
def temp_jsonl(lines: Iterable[bytes], *, suffix: str = ".jsonl") -> Iterator[JsonlFile]:
    """Stream ``lines`` into a named temp file and yield it; the file is always deleted on
    exit (success, error or cancellation)."""
    fd, path = tempfile.mkstemp(prefix="aiw-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            count, size = write_jsonl(fh, lines)
        yield JsonlFile(path=path, lines=count, size=size)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@contextmanager
def temp_path(*, suffix: str = ".jsonl") -> Iterator[str]:
    """An empty named temp file path (for downloads), always deleted on exit."""
    fd, path = tempfile.mkstemp(prefix="aiw-dl-", suffix=suffix)
    os.close(fd)
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def write_jsonl_path(path: str, lines: Iterable[bytes]) -> tuple[int, int]:
    """Write encoded lines to ``path`` (truncating); returns (line count, byte count)."""
    with open(path, "wb") as fh:
        return write_jsonl(fh, lines)


async def write_jsonl_path_async(path: str, lines: Iterable[bytes]) -> tuple[int, int]:
    """:func:`write_jsonl_path` in a worker thread: encoding and writing up to ~200 MB
    must not stall the event loop (other batches and realtime calls share it)."""
    return await asyncio.to_thread(write_jsonl_path, path, lines)


async def parse_jsonl_file(
    path: str, parse: LineParser, on_malformed: MalformedCallback | None = None
) -> AsyncIterator[ResultLine]:
    """Stream a downloaded result file through a :class:`LineReader`."""
    async for line in read_result_lines(iter_file_chunks(path), LineReader(parse, on_malformed)):
        yield line


async def iter_file_chunks(path: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Read a local file in chunks (local disk reads are short; no thread hop needed)."""
    with open(path, "rb") as fh:  # noqa: ASYNC230 - local temp file, bounded chunk reads
        while chunk := fh.read(chunk_size):
            yield chunk


# ---------------------------------------------------------------------------------------
# Result parsing helpers
# ---------------------------------------------------------------------------------------


def _get(d: Mapping[str, Any] | None, *names: str) -> Any:
    """First present key among ``names`` (camelCase and snake_case spellings)."""
    if not isinstance(d, Mapping):
        return None
    for name in names:
        if name in d and d[name] is not None:
            return d[name]
    return None


def _int(value: Any) -> int:
    try:
        return int(value)  # int64 fields may arrive as strings in proto JSON
    except (TypeError, ValueError):
        return 0


def _failed(
    custom_id: str,
    code: str,
    message: str | None,
    kind: ErrorKind | None = None,
    **extra: Any,
) -> ResultLine:
    return ResultLine(
        custom_id=custom_id,
        ok=False,
        error_code=code,
        error_message=message,
        error_kind=kind if kind is not None else kind_for_result_code(code),
        **extra,
    )


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a content-chunk list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [c.get("text") for c in content if isinstance(c, dict)]
        joined = "".join(t for t in texts if isinstance(t, str))
        return joined if texts else None
    return None


def parse_chat_completion(custom_id: str, body: Mapping[str, Any]) -> ResultLine:
    """A ``chat.completion`` body (OpenAI, Mistral, OpenAI-compatible) -> ResultLine."""
    usage = _get(body, "usage") or {}
    extra: JsonDict = {
        "input_tokens": _int(_get(usage, "prompt_tokens")),
        "output_tokens": _int(_get(usage, "completion_tokens")),
        "model_version": _get(body, "model"),
    }
    choices = _get(body, "choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return _failed(custom_id, "empty_response", "no choices in response", **extra)
    choice = choices[0]
    message = _get(choice, "message") or {}
    text = _content_text(_get(message, "content"))
    problem = check_answer(text, _get(choice, "finish_reason"), refusal=_get(message, "refusal"))
    if problem is not None:
        return _problem(custom_id, problem, text, extra)
    return ResultLine(custom_id=custom_id, ok=True, text=text, **extra)


def _problem(
    custom_id: str, problem: AnswerProblem, text: str | None, extra: JsonDict
) -> ResultLine:
    keep = {"text": text or None} if problem.kind is ErrorKind.TRUNCATED else {}
    return _failed(custom_id, problem.code, problem.message, problem.kind, **keep, **extra)


def parse_generate_content(custom_id: str, response: Mapping[str, Any]) -> ResultLine:
    """A Gemini ``GenerateContentResponse`` (camelCase or snake_case) -> ResultLine.

    Output tokens include ``thoughtsTokenCount``: thinking tokens are billed as output."""
    usage = _get(response, "usageMetadata", "usage_metadata") or {}
    extra: JsonDict = {
        "input_tokens": _int(_get(usage, "promptTokenCount", "prompt_token_count")),
        "output_tokens": _int(_get(usage, "candidatesTokenCount", "candidates_token_count"))
        + _int(_get(usage, "thoughtsTokenCount", "thoughts_token_count")),
        "model_version": _get(response, "modelVersion", "model_version"),
    }
    feedback = _get(response, "promptFeedback", "prompt_feedback") or {}
    block = _get(feedback, "blockReason", "block_reason")
    candidates = _get(response, "candidates")
    if block:
        return _problem(custom_id, _blocked(block), None, extra)
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return _failed(custom_id, "empty_response", "no candidates in response", **extra)
    cand = candidates[0]
    parts = _get(_get(cand, "content"), "parts") or []
    texts = [
        p["text"]
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    ]
    text = "".join(texts)
    problem = check_answer(text, _get(cand, "finishReason", "finish_reason"))
    if problem is not None:
        return _problem(custom_id, problem, text, extra)
    return ResultLine(custom_id=custom_id, ok=True, text=text, **extra)


def _blocked(block: Any) -> AnswerProblem:
    problem = check_answer(None, None, block_reason=str(block))
    assert problem is not None
    return problem


def _envelope_line(provider: str, obj: Mapping[str, Any]) -> ResultLine | None:
    """OpenAI/Mistral ``{custom_id, response:{status_code, body}, error}`` -> ResultLine."""
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None
    error = obj.get("error")
    response = obj.get("response")
    if isinstance(response, Mapping):
        status = _int(response.get("status_code"))
        body = response.get("body")
        if status == 200 and isinstance(body, Mapping):
            return parse_chat_completion(custom_id, body)
        if status and status != 200:
            err = classify_http(provider, status, body if isinstance(body, dict | str) else None)
            return _failed(custom_id, err.code or f"http_{status}", err.message, err.kind)
        if "status_code" in response and status == 0 and not isinstance(error, Mapping):
            # Reported live: a line whose request never got an HTTP status. The provider's
            # fault, retried; it still counts an attempt like any failed line.
            err = classify_http(provider, 500, body if isinstance(body, dict | str) else None)
            return _failed(
                custom_id,
                "status_code_0",
                f"line with status_code 0: {err.message}",
                ErrorKind.RETRYABLE,
            )
    if isinstance(error, Mapping):
        code = str(error.get("code") or "error")
        message = error.get("message")
        return _failed(custom_id, code, str(message) if message is not None else None)
    if isinstance(error, str) and error:
        return _failed(custom_id, "error", error)
    detail = obj.get("detail")  # a third-party parser reads raw["detail"]["msg"] for Mistral
    if isinstance(detail, Mapping):
        return _failed(custom_id, "error", str(detail.get("msg") or detail))
    return _failed(custom_id, "malformed_line", "line has neither a response nor an error")


def parse_openai_line(obj: Mapping[str, Any]) -> ResultLine | None:
    """One OpenAI output/error file line; None when the line carries no ``custom_id``."""
    return _envelope_line("openai", obj)


def parse_mistral_line(obj: Mapping[str, Any]) -> ResultLine | None:
    """One Mistral output/error file line (or an inline ``outputs`` item); None without an
    id. The error-line shape is unconfirmed, so the OpenAI envelope, a bare ``error`` and a
    ``detail`` object are all accepted."""
    return _envelope_line("mistral", obj)


def _gemini_result(key: str, obj: Mapping[str, Any]) -> ResultLine:
    error = obj.get("error")
    if isinstance(error, Mapping) and error:
        err = classify_rpc_status("gemini", error)
        return _failed(key, err.code or "error", err.message, err.kind)
    response = obj.get("response")
    if isinstance(response, Mapping):
        return parse_generate_content(key, response)
    status = obj.get("status")  # Vertex-style lines: a non-empty status string is an error
    if isinstance(status, str) and status:
        return _failed(key, "error", status)
    return _failed(key, "malformed_line", "line has neither a response nor an error")


def parse_gemini_line(obj: Mapping[str, Any]) -> ResultLine | None:
    """One Gemini result-file line ``{key, response}`` / ``{key, error}``; None without a
    key. ``metadata.key`` is accepted too (the inline shape)."""
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        key = _get(obj.get("metadata"), "key")
    if not isinstance(key, str) or not key:
        return None
    return _gemini_result(key, obj)


def parse_gemini_inline(item: Mapping[str, Any]) -> ResultLine | None:
    """One Gemini inline response ``{response|error, metadata:{key}}``. The key comes from
    ``metadata.key`` only (never the position: we do not rely on order)."""
    key = _get(item.get("metadata"), "key")
    if not isinstance(key, str) or not key:
        return None
    return _gemini_result(key, item)


LINE_PARSERS: Mapping[str, LineParser] = {
    "openai": parse_openai_line,
    "gemini": parse_gemini_line,
    "mistral": parse_mistral_line,
}

# ---------------------------------------------------------------------------------------
# Streaming line reader
# ---------------------------------------------------------------------------------------

_ID_IN_BROKEN_LINE = re.compile(rb'"(?:custom_id|key)"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def recover_id(raw: bytes) -> str | None:
    """The ``custom_id``/``key`` of a line that is not valid JSON, if readable."""
    m = _ID_IN_BROKEN_LINE.search(raw)
    if not m:
        return None
    try:
        value = json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) and value else None


class LineReader:
    """Incremental JSONL parser over byte chunks of any size.

    ``feed()`` returns the ResultLines completed by a chunk; ``close()`` flushes a final line
    without a newline. Blank lines are skipped. See the module docstring for malformed
    lines: ``malformed`` counts those whose id was unreadable (reported via
    ``on_malformed(raw_line, reason)``), ``malformed_with_id`` those turned into
    ``ResultLine(ok=False, error_code="malformed_line")``."""

    def __init__(self, parse: LineParser, on_malformed: MalformedCallback | None = None) -> None:
        self._parse = parse
        self._on_malformed = on_malformed
        self._buffer = bytearray()
        self.lines = 0
        self.malformed = 0
        self.malformed_with_id = 0

    def feed(self, chunk: bytes) -> list[ResultLine]:
        self._buffer.extend(chunk)
        out: list[ResultLine] = []
        start = 0
        while (nl := self._buffer.find(b"\n", start)) != -1:
            self._line(bytes(self._buffer[start:nl]), out)
            start = nl + 1
        del self._buffer[:start]
        return out

    def close(self) -> list[ResultLine]:
        out: list[ResultLine] = []
        if self._buffer:
            self._line(bytes(self._buffer), out)
            self._buffer.clear()
        return out

    def _line(self, raw: bytes, out: list[ResultLine]) -> None:
        raw = raw.strip()
        if not raw:
            return
        self.lines += 1
        try:
            obj = json.loads(raw)
        except ValueError:
            self._malformed(raw, recover_id(raw), "invalid JSON", out)
            return
        if not isinstance(obj, dict):
            self._malformed(raw, None, "line is not a JSON object", out)
            return
        try:
            result = self._parse(obj)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # A parser bug on an odd shape must not lose the whole file.
            self._malformed(raw, recover_id(raw), f"unparseable line: {exc}", out)
            return
        if result is None:
            self._malformed(raw, None, "line has no id", out)
        else:
            out.append(result)

    def _malformed(
        self, raw: bytes, custom_id: str | None, reason: str, out: list[ResultLine]
    ) -> None:
        if custom_id is not None:
            self.malformed_with_id += 1
            out.append(_failed(custom_id, "malformed_line", reason, ErrorKind.UNKNOWN))
            return
        self.malformed += 1
        if self._on_malformed is not None:
            self._on_malformed(raw[:1024], reason)


async def read_result_lines(
    chunks: AsyncIterable[bytes], reader: LineReader
) -> AsyncIterator[ResultLine]:
    """Feed downloaded chunks through ``reader`` and yield each ResultLine as it completes."""
    async for chunk in chunks:
        for line in reader.feed(chunk):
            yield line
    for line in reader.close():
        yield line
