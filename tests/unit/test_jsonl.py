"""worker.providers.jsonl: request lines, result-line parsing, chunking, streaming I/O."""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from worker.errors import ErrorKind
from worker.providers.base import BatchLimits, ChatRequest, ResultLine
from worker.providers.jsonl import (
    LineReader,
    LineTooLargeError,
    chunk_requests,
    encode_line,
    gemini_request_line,
    mistral_request_line,
    openai_chat_body,
    openai_request_line,
    parse_gemini_inline,
    parse_gemini_line,
    parse_mistral_line,
    parse_openai_line,
    read_result_lines,
    recover_id,
    request_line_encoder,
    temp_jsonl,
)

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def req(i: int | str = 1, **kw: Any) -> ChatRequest:
    return ChatRequest(
        custom_id=f"q-{i}",
        system_prompt="You are terse.",
        user_prompt=f"Explain question {i}.",
        schema_name="commentary",
        json_schema=SCHEMA,
        **kw,
    )


# --- request lines -----------------------------------------------------------------------


def test_openai_request_line() -> None:
    line = openai_request_line(req(1, max_output_tokens=500, temperature=0.2), "gpt-4o-mini")
    assert line["custom_id"] == "q-1"
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    body = line["body"]
    assert body["model"] == "gpt-4o-mini"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "commentary", "schema": SCHEMA, "strict": True},
    }
    assert body["max_completion_tokens"] == 500 and body["temperature"] == 0.2


def test_openai_body_optional_fields_absent() -> None:
    body = openai_chat_body(req(), "m")
    assert "max_completion_tokens" not in body and "temperature" not in body


def test_json_object_fallback_puts_schema_in_prompt() -> None:
    body = openai_chat_body(req(), "m", json_mode="json_object", max_tokens_field="max_tokens")
    assert body["response_format"] == {"type": "json_object"}
    assert '"additionalProperties": false' in body["messages"][0]["content"]


def test_gemini_request_line() -> None:
    line = gemini_request_line(req(2, max_output_tokens=100, temperature=0.0), "gemini-2.5-flash")
    assert line["key"] == "q-2"
    r = line["request"]
    assert r["contents"] == [{"role": "user", "parts": [{"text": "Explain question 2."}]}]
    assert r["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    gc = r["generationConfig"]
    assert gc["responseMimeType"] == "application/json"
    assert gc["responseJsonSchema"] == SCHEMA
    assert gc["maxOutputTokens"] == 100 and gc["temperature"] == 0.0
    legacy = gemini_request_line(req(), "m", schema_field="responseSchema")
    assert "responseSchema" in legacy["request"]["generationConfig"]


def test_mistral_request_line() -> None:
    line = mistral_request_line(req(3, max_output_tokens=64), "mistral-small-latest")
    assert set(line) == {"custom_id", "body"}
    assert "model" not in line["body"]
    assert line["body"]["max_tokens"] == 64
    assert line["body"]["response_format"]["type"] == "json_schema"


def test_encode_line_is_compact_utf8_with_newline() -> None:
    raw = encode_line({"a": "é", "b": [1, 2]})
    assert raw == '{"a":"é","b":[1,2]}\n'.encode()
    assert raw.count(b"\n") == 1


# --- chunking ----------------------------------------------------------------------------


def _enc(r: ChatRequest) -> bytes:
    return encode_line(openai_request_line(r, "m"))


def test_chunk_by_count() -> None:
    chunks = list(chunk_requests([req(i) for i in range(7)], _enc, BatchLimits(3, 10**9)))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [r.custom_id for c in chunks for r in c] == [f"q-{i}" for i in range(7)]


def test_chunk_by_bytes_measured_on_encoded_lines() -> None:
    items = [req(i) for i in range(10)]
    size = len(_enc(items[0]))
    assert all(len(_enc(r)) == size for r in items)
    chunks = list(chunk_requests(items, _enc, BatchLimits(1000, size * 3 + size // 2)))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    exact = list(chunk_requests(items, _enc, BatchLimits(1000, size * 5)))
    assert [len(c) for c in exact] == [5, 5]


def test_chunk_empty_and_too_large() -> None:
    assert list(chunk_requests([], _enc, BatchLimits(5, 100))) == []
    with pytest.raises(LineTooLargeError):
        list(chunk_requests([req()], _enc, BatchLimits(5, 10)))


# --- temp files --------------------------------------------------------------------------


def test_temp_jsonl_written_and_deleted() -> None:
    lines = [_enc(req(i)) for i in range(3)]
    with temp_jsonl(iter(lines)) as f:
        assert f.lines == 3 and f.size == sum(map(len, lines))
        with open(f.path, "rb") as fh:
            assert fh.read() == b"".join(lines)
        path = f.path
    assert not os.path.exists(path)


def test_temp_jsonl_deleted_on_error() -> None:
    path = ""
    with pytest.raises(RuntimeError), temp_jsonl([b"{}\n"]) as f:
        path = f.path
        raise RuntimeError("upload failed")
    assert path and not os.path.exists(path)


# --- OpenAI / Mistral result lines ---------------------------------------------------------


def completion(content: Any = '{"answer":"x"}', finish: str = "stop", **msg: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **msg},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 22, "completion_tokens": 7, "total_tokens": 29},
    }


def ok_line(cid: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "batch_req_1",
        "custom_id": cid,
        "response": {"status_code": 200, "request_id": "req_1", "body": body or completion()},
        "error": None,
    }


def test_openai_output_line() -> None:
    r = parse_openai_line(ok_line("q-1"))
    assert r == ResultLine(
        custom_id="q-1",
        ok=True,
        text='{"answer":"x"}',
        input_tokens=22,
        output_tokens=7,
        model_version="gpt-4o-mini-2024-07-18",
    )


OPENAI_LINE_ROWS: list[tuple[str, dict[str, Any], bool, str | None, ErrorKind | None]] = [
    (
        "http error line quota",
        {"custom_id": "a", "response": {"status_code": 429, "body": {"error": {
            "message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}},
         "error": None},
        False, "insufficient_quota", ErrorKind.QUOTA,
    ),
    (
        "http error line context",
        {"custom_id": "a", "response": {"status_code": 400, "body": {"error": {
            "message": "too long", "type": "invalid_request_error",
            "code": "context_length_exceeded"}}}, "error": None},
        False, "context_length_exceeded", ErrorKind.CONTEXT_TOO_LONG,
    ),
    (
        "http 500 no body",
        {"custom_id": "a", "response": {"status_code": 500, "body": None}},
        False, "http_500", ErrorKind.RETRYABLE,
    ),
    (
        "batch_expired",
        {"id": "x", "custom_id": "a", "response": None, "error": {
            "code": "batch_expired", "message": "not executed before window expired"}},
        False, "batch_expired", ErrorKind.RETRYABLE,
    ),
    ("refusal", ok_line("a", completion(None, refusal="I can't help")), False,
     "content_refused", ErrorKind.CONTENT_REFUSED),
    ("content_filter", ok_line("a", completion("", finish="content_filter")), False,
     "content_refused", ErrorKind.CONTENT_REFUSED),
    ("length", ok_line("a", completion('{"ans', finish="length")), False, "truncated",
     ErrorKind.TRUNCATED),
    ("empty content", ok_line("a", completion("")), False, "empty_response", ErrorKind.UNKNOWN),
    ("no choices", ok_line("a", {"model": "m", "choices": []}), False, "empty_response",
     ErrorKind.UNKNOWN),
    ("neither response nor error", {"custom_id": "a"}, False, "malformed_line",
     ErrorKind.UNKNOWN),
    ("extra unknown fields ignored", {**ok_line("a"), "new_field": {"x": 1}}, True, None, None),
    ("missing usage", ok_line("a", {"model": "m", "choices": [
        {"message": {"content": "{}"}, "finish_reason": "stop"}]}), True, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "obj", "ok", "code", "kind"), OPENAI_LINE_ROWS, ids=[r[0] for r in OPENAI_LINE_ROWS]
)
def test_openai_line_shapes(
    name: str, obj: dict[str, Any], ok: bool, code: str | None, kind: ErrorKind | None
) -> None:
    r = parse_openai_line(obj)
    assert r is not None and r.custom_id == "a"
    assert r.ok is ok
    assert r.error_code == code
    assert r.error_kind is kind


def test_openai_line_without_id_is_none() -> None:
    assert parse_openai_line({"response": {"status_code": 200}}) is None
    assert parse_openai_line({"custom_id": 5}) is None


MISTRAL_ROWS: list[tuple[str, dict[str, Any], bool, str | None, ErrorKind | None]] = [
    ("output", {"id": "x", "custom_id": "m", "response": {"status_code": 200,
     "body": completion([{"type": "text", "text": '{"a":'}, {"type": "text", "text": "1}"}])}},
     True, None, None),
    ("http error", {"custom_id": "m", "response": {"status_code": 429, "body": {
        "object": "error", "message": "Rate limit exceeded", "type": "rate_limited",
        "code": "1300"}}}, False, "1300", ErrorKind.RETRYABLE),
    ("http error text body", {"custom_id": "m", "response": {"status_code": 400,
     "body": "Prompt contains 9 tokens, too large for model with 8 maximum context length"}},
     False, "http_400", ErrorKind.CONTEXT_TOO_LONG),
    ("bare error object", {"custom_id": "m", "error": {"message": "boom", "code": "x"}}, False,
     "x", ErrorKind.UNKNOWN),
    ("bare error string", {"custom_id": "m", "error": "boom"}, False, "error",
     ErrorKind.UNKNOWN),
    ("detail object", {"custom_id": "m", "detail": {"msg": "bad"}}, False, "error",
     ErrorKind.UNKNOWN),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "obj", "ok", "code", "kind"), MISTRAL_ROWS, ids=[r[0] for r in MISTRAL_ROWS]
)
def test_mistral_line_shapes(
    name: str, obj: dict[str, Any], ok: bool, code: str | None, kind: ErrorKind | None
) -> None:
    r = parse_mistral_line(obj)
    assert r is not None and r.custom_id == "m"
    assert (r.ok, r.error_code, r.error_kind) == (ok, code, kind)
    if ok:
        assert r.text == '{"a":1}' and r.input_tokens == 22 and r.output_tokens == 7


# --- Gemini result lines -----------------------------------------------------------------


def gresp(text: str = '{"answer":"g"}', finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish}
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash-001",
        **extra,
    }


def test_gemini_file_line() -> None:
    r = parse_gemini_line({"key": "g-1", "response": gresp()})
    assert r == ResultLine(
        custom_id="g-1",
        ok=True,
        text='{"answer":"g"}',
        input_tokens=7,
        output_tokens=2,
        model_version="gemini-2.5-flash-001",
    )


def test_gemini_snake_case_and_thoughts() -> None:
    resp = {
        "candidates": [
            {
                "content": {"parts": [{"text": "thinking...", "thought": True}, {"text": "{}"}]},
                "finish_reason": "STOP",
            }
        ],
        "usage_metadata": {
            "prompt_token_count": "5",
            "candidates_token_count": 3,
            "thoughts_token_count": 10,
        },
        "model_version": "v",
    }
    r = parse_gemini_line({"key": "k", "response": resp})
    assert r is not None and r.ok and r.text == "{}"
    assert (r.input_tokens, r.output_tokens, r.model_version) == (5, 13, "v")


GEMINI_ROWS: list[tuple[str, dict[str, Any], bool, str | None, ErrorKind | None]] = [
    ("error http code", {"key": "k", "error": {"code": 400, "message": "bad",
                                              "status": "INVALID_ARGUMENT"}},
     False, "INVALID_ARGUMENT", ErrorKind.INVALID_REQUEST),
    ("error rpc code", {"key": "k", "error": {"code": 13, "message": "internal"}}, False,
     "INTERNAL", ErrorKind.RETRYABLE),
    ("error string details", {"key": "k", "error": {"code": 8, "message": "x",
                                                   "details": ["a string"]}},
     False, "RESOURCE_EXHAUSTED", ErrorKind.RETRYABLE),
    ("safety finish", {"key": "k", "response": gresp("", finish="SAFETY")}, False,
     "content_refused", ErrorKind.CONTENT_REFUSED),
    ("prompt blocked", {"key": "k", "response": {"promptFeedback": {"blockReason": "SAFETY"},
                                                  "usageMetadata": {"promptTokenCount": 4}}},
     False, "content_refused", ErrorKind.CONTENT_REFUSED),
    ("max tokens", {"key": "k", "response": gresp('{"a', finish="MAX_TOKENS")}, False,
     "truncated", ErrorKind.TRUNCATED),
    ("no candidates", {"key": "k", "response": {}}, False, "empty_response", ErrorKind.UNKNOWN),
    ("vertex status string", {"key": "k", "status": "Bad request"}, False, "error",
     ErrorKind.UNKNOWN),
    ("neither", {"key": "k"}, False, "malformed_line", ErrorKind.UNKNOWN),
    ("unknown extra keys", {"key": "k", "response": gresp(), "processed_time": "t",
                            "request": {}}, True, None, None),
    ("key only in metadata", {"metadata": {"key": "k"}, "response": gresp()}, True, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "obj", "ok", "code", "kind"), GEMINI_ROWS, ids=[r[0] for r in GEMINI_ROWS]
)
def test_gemini_line_shapes(
    name: str, obj: dict[str, Any], ok: bool, code: str | None, kind: ErrorKind | None
) -> None:
    r = parse_gemini_line(obj)
    assert r is not None and r.custom_id == "k"
    assert (r.ok, r.error_code, r.error_kind) == (ok, code, kind)


def test_gemini_line_without_key_is_none() -> None:
    assert parse_gemini_line({"response": gresp()}) is None


def test_gemini_inline_keyed_by_metadata_in_shuffled_order() -> None:
    items = [
        {"response": gresp(f'{{"answer":"{i}"}}'), "metadata": {"key": f"q-{i}"}} for i in range(20)
    ]
    items.append({"error": {"code": 3, "message": "bad"}, "metadata": {"key": "q-err"}})
    random.Random(7).shuffle(items)
    results = [parse_gemini_inline(it) for it in items]
    by_id = {r.custom_id: r for r in results if r is not None}
    assert len(by_id) == 21
    for i in range(20):
        assert json.loads(by_id[f"q-{i}"].text or "") == {"answer": str(i)}
    assert by_id["q-err"].error_kind is ErrorKind.INVALID_REQUEST
    # position is never used: no metadata.key -> no result
    assert parse_gemini_inline({"response": gresp()}) is None
    assert parse_gemini_inline({"key": "top-level", "response": gresp()}) is None


# --- streaming reader --------------------------------------------------------------------


def _ids(lines: list[ResultLine]) -> list[str]:
    return [r.custom_id for r in lines]


def test_reader_any_chunking_blank_lines_and_final_line_without_newline() -> None:
    lines = [json.dumps(ok_line(f"q-{i}")).encode() for i in range(5)]
    data = b"\n\n".join(lines[:3]) + b"\r\n  \n" + b"\n".join(lines[3:])  # no final newline
    for size in (1, 7, 64, len(data)):
        reader = LineReader(parse_openai_line)
        out: list[ResultLine] = []
        for i in range(0, len(data), size):
            out.extend(reader.feed(data[i : i + size]))
        out.extend(reader.close())
        assert _ids(out) == [f"q-{i}" for i in range(5)], size
        assert reader.lines == 5 and reader.malformed == 0


def test_reader_malformed_lines() -> None:
    seen: list[tuple[bytes, str]] = []
    reader = LineReader(parse_openai_line, lambda raw, why: seen.append((raw, why)))
    data = b"\n".join(
        [
            b'{"custom_id": "q-\\"1", "response": {"status_code": 200, "body": {',  # truncated
            b"not json at all",
            b"[1, 2]",
            b'{"response": {"status_code": 200}}',  # valid JSON, no id
            json.dumps(ok_line("q-2")).encode(),
        ]
    )
    out = reader.feed(data) + reader.close()
    assert [(r.custom_id, r.ok, r.error_code) for r in out] == [
        ('q-"1', False, "malformed_line"),
        ("q-2", True, None),
    ]
    assert reader.malformed == 3 and reader.malformed_with_id == 1
    assert [why for _, why in seen] == [
        "invalid JSON",
        "line is not a JSON object",
        "line has no id",
    ]


def test_recover_id() -> None:
    assert recover_id(b'{"key": "g-9", "resp') == "g-9"
    assert recover_id(b'{"metadata": {"key":"m-1"}, ') == "m-1"
    assert recover_id(b"garbage") is None


async def test_read_result_lines_async() -> None:
    payload = b"".join(encode_line({"key": f"k{i}", "response": gresp()}) for i in range(4))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 10):
            yield payload[i : i + 10]

    out = [r async for r in read_result_lines(chunks(), LineReader(parse_gemini_line))]
    assert _ids(out) == ["k0", "k1", "k2", "k3"]
    assert all(r.ok for r in out)


@pytest.mark.parametrize("provider", ["openai", "gemini", "mistral"])
def test_request_line_encoder_matches_adapter_lines(provider: str) -> None:
    enc = request_line_encoder(provider, "m")
    line = json.loads(enc(req(4)))
    assert line.get("custom_id", line.get("key")) == "q-4"
    assert enc(req(4)).endswith(b"\n")


FULL_BUILDERS = {
    "openai": openai_request_line,
    "gemini": gemini_request_line,
    "mistral": mistral_request_line,
}
AWKWARD_TEXTS = [
    "Explain question 1.",
    'Zitat: "Ptyalin" \\ Backslash, Tab\tund Zeilenumbruch\n',
    "Umlaute äöü ß, Emoji 🧬, Steuerzeichen \x01 und \u2028",
    "",
]


@pytest.mark.parametrize("provider", ["openai", "gemini", "mistral"])
def test_line_template_bytes_equal_full_encoding(provider: str) -> None:
    """The per-run line template writes exactly the bytes of a full json.dumps of the line,
    for awkward ids and prompts, with options, and for a second schema object."""
    enc = request_line_encoder(provider, "m")
    other_schema = {**SCHEMA, "description": "zweites Schema"}
    for text in AWKWARD_TEXTS:
        for extra in ({}, {"max_output_tokens": 50, "temperature": 0.3}):
            for schema in (SCHEMA, other_schema):
                r = ChatRequest(
                    custom_id=f"q-{text[:5]}",
                    system_prompt=f"System {text}",
                    user_prompt=text,
                    schema_name="commentary",
                    json_schema=schema,
                    **extra,  # type: ignore[arg-type]
                )
                assert enc(r) == encode_line(FULL_BUILDERS[provider](r, "m"))


def test_line_template_falls_back_when_a_prompt_holds_the_placeholder() -> None:
    from worker.providers import jsonl

    enc = request_line_encoder("openai", "m")
    r = req(7)
    tricky = ChatRequest(
        custom_id="q-7",
        system_prompt=f"odd {jsonl._HOLE_USER}",
        user_prompt="Explain.",
        schema_name="commentary",
        json_schema=SCHEMA,
    )
    assert enc(tricky) == encode_line(openai_request_line(tricky, "m"))
    assert enc(r) == encode_line(openai_request_line(r, "m"))


def test_gemini_line_encoder_takes_the_schema_field_option() -> None:
    enc = request_line_encoder("gemini", "m", schema_field="responseSchema")
    line = json.loads(enc(req(3)))
    assert "responseSchema" in line["request"]["generationConfig"]
    assert "responseJsonSchema" not in line["request"]["generationConfig"]
