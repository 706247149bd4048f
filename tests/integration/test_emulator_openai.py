"""Contract tests: the real OpenAI SDK (sync and async) against the emulator."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI

from worker.emulator import Emulator
from worker.emulator.content import schema_errors

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "kind": {"type": "string", "enum": ["news", "opinion"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "nested": {"$ref": "#/$defs/Inner"},
    },
    "required": ["title", "kind", "score", "ratio", "ok", "tags", "note", "nested"],
    "additionalProperties": False,
    "$defs": {
        "Inner": {
            "type": "object",
            "properties": {"when": {"type": ["string", "null"], "format": "date"}},
            "required": ["when"],
            "additionalProperties": False,
        }
    },
}
RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "article", "schema": SCHEMA, "strict": True},
}


def client(emu: Emulator) -> OpenAI:
    return OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)


def jsonl(n: int, prefix: str = "req", **overrides: Any) -> bytes:
    lines = []
    for i in range(n):
        line: dict[str, Any] = {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Frage {i}"}],
                "response_format": RESPONSE_FORMAT,
            },
        }
        line.update(overrides)
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def submit(c: OpenAI, data: bytes) -> str:
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "validating"
    return b.id


def test_batch_roundtrip(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    batch_id = submit(c, jsonl(40))
    b = c.batches.retrieve(batch_id)
    assert b.status == "completed"
    assert b.request_counts is not None and b.request_counts.total == 40
    assert b.request_counts.completed == 40 and b.request_counts.failed == 0
    assert b.usage is not None and b.usage.output_tokens > 0
    assert b.output_file_id and b.error_file_id is None
    out_meta = c.files.retrieve(b.output_file_id)
    assert out_meta.purpose == "batch_output"
    lines = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
    ids = [x["custom_id"] for x in lines]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))
    assert ids != [f"req-{i}" for i in range(40)], "output order must differ from input"
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        text = line["response"]["body"]["choices"][0]["message"]["content"]
        assert schema_errors(json.loads(text), SCHEMA) == []
    stats = emulator.stats()["openai"]
    assert stats["batches_created"] == 1
    assert stats["custom_ids"]["req-3"] == [{"batch_id": batch_id, "outcome": "succeeded"}]
    assert stats["usage"]["gpt-4o-mini"]["batch"]["input_tokens"] > 0


def test_state_progression(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0.15)
    c = client(emulator)
    batch_id = submit(c, jsonl(3))
    seen: list[str] = []
    deadline = time.time() + 5
    while time.time() < deadline:
        b = c.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status == "completed":
            break
        time.sleep(0.05)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert b.in_progress_at and b.finalizing_at and b.completed_at


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"custom_id": "a", "method": "POST"\n', "invalid_json_line"),
        (jsonl(2, custom_id="same"), "duplicate_custom_id"),
        (jsonl(2, url="/v1/embeddings"), "url_mismatch"),
        (
            jsonl(1)
            + json.dumps(
                {
                    "custom_id": "x",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o", "messages": []},
                }
            ).encode(),
            "model_mismatch",
        ),
    ],
)
def test_validation_failures(emulator: Emulator, data: bytes, code: str) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    b = c.batches.retrieve(submit(c, data))
    assert b.status == "failed"
    assert b.failed_at is not None
    assert b.errors is not None and b.errors.data
    assert code in {e.code for e in b.errors.data}


def test_too_many_tasks(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, max_batch_lines=3)
    c = client(emulator)
    b = c.batches.retrieve(submit(c, jsonl(4)))
    assert b.status == "failed"
    assert b.errors is not None and b.errors.data
    assert b.errors.data[0].code == "too_many_tasks"


def test_line_failures_and_all_failed(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, line_failure_rate=0.5)
    c = client(emulator)
    b = c.batches.retrieve(submit(c, jsonl(40)))
    assert b.status == "completed" and b.request_counts is not None
    assert 0 < b.request_counts.failed < 40
    assert b.request_counts.completed + b.request_counts.failed == 40
    assert b.error_file_id
    errs = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
    assert len(errs) == b.request_counts.failed
    assert errs[0]["response"]["status_code"] == 500
    assert errs[0]["response"]["body"]["error"]["type"] == "server_error"
    # The same custom_ids fail again with the same seed: failures are deterministic.
    failed = {e["custom_id"] for e in errs}
    b2 = c.batches.retrieve(submit(c, jsonl(40)))
    assert b2.error_file_id
    errs2 = {
        json.loads(x)["custom_id"] for x in c.files.content(b2.error_file_id).text.splitlines()
    }
    assert errs2 == failed

    emulator.configure(line_failure_rate=1.0)
    b3 = c.batches.retrieve(submit(c, jsonl(5)))
    assert b3.status == "completed"
    assert b3.output_file_id is None and b3.error_file_id
    outcomes = emulator.stats()["openai"]["custom_ids"]["req-0"]
    assert [o["outcome"] for o in outcomes if o["batch_id"] == b3.id] == ["failed"]


def test_expired_and_cancelled(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, batch_outcome="expired")
    c = client(emulator)
    b = c.batches.retrieve(submit(c, jsonl(10)))
    assert b.status == "expired" and b.expired_at
    assert b.output_file_id and b.error_file_id
    errs = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
    assert {e["error"]["code"] for e in errs} == {"batch_expired"}
    assert all(e["response"] is None for e in errs)

    emulator.configure(batch_outcome=None, state_seconds=30)
    batch_id = submit(c, jsonl(3))
    cancelled = c.batches.cancel(batch_id)
    assert cancelled.status == "cancelling"
    emulator.configure(state_seconds=0)
    b = c.batches.retrieve(batch_id)
    assert b.status == "cancelled" and b.cancelled_at
    outcomes = emulator.stats()["openai"]["custom_ids"]["req-0"]
    assert outcomes[-1] == {"batch_id": batch_id, "outcome": "cancelled"}


def test_no_output_file_and_malformed_lines(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, no_output_file=True)
    c = client(emulator)
    b = c.batches.retrieve(submit(c, jsonl(3)))
    assert b.status == "completed" and b.output_file_id is None

    emulator.configure(no_output_file=False, malformed_line_rate=1.0)
    b = c.batches.retrieve(submit(c, jsonl(3)))
    assert b.output_file_id
    for line in c.files.content(b.output_file_id).text.splitlines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_schema_violation_rate(emulator: Emulator) -> None:
    emulator.configure(schema_violation_rate=1.0)
    r = client(emulator).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        response_format=RESPONSE_FORMAT,
    )
    value = json.loads(r.choices[0].message.content or "")
    assert schema_errors(value, SCHEMA) != []


def test_chat_json_schema_and_plain(emulator: Emulator) -> None:
    c = client(emulator)
    msgs: Any = [{"role": "system", "content": "JSON"}, {"role": "user", "content": "Hallo"}]
    r1 = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=msgs,
        response_format=RESPONSE_FORMAT,
    )
    r2 = c.chat.completions.create(
        model="gpt-4o-mini",
        messages=msgs,
        response_format=RESPONSE_FORMAT,
    )
    content = r1.choices[0].message.content or ""
    assert schema_errors(json.loads(content), SCHEMA) == []
    assert content == r2.choices[0].message.content, "deterministic per input"
    assert r1.usage is not None and r1.usage.completion_tokens == math.ceil(len(content) / 4)
    plain = c.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    assert plain.choices[0].message.content and plain.choices[0].finish_reason == "stop"
    assert emulator.stats()["openai"]["chat_calls"] == 3


def test_embeddings(emulator: Emulator) -> None:
    c = client(emulator)
    r = c.embeddings.create(model="text-embedding-3-small", input=["eins", "zwei"])  # base64
    assert len(r.data) == 2 and len(r.data[0].embedding) == 1536
    assert abs(sum(v * v for v in r.data[0].embedding) - 1.0) < 1e-4
    again = c.embeddings.create(
        model="text-embedding-3-small", input="eins", encoding_format="float", dimensions=1536
    )
    assert again.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    assert r.data[0].embedding != r.data[1].embedding
    small = c.embeddings.create(model="text-embedding-3-small", input="x", dimensions=64)
    assert len(small.data[0].embedding) == 64
    assert emulator.stats()["openai"]["embedding_calls"] == 3


def test_embeddings_batch(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    data = "\n".join(
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": f"t{i}"},
            }
        )
        for i in range(3)
    ).encode()
    f = c.files.create(file=("emb.jsonl", data), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    b = c.batches.retrieve(b.id)
    assert b.status == "completed" and b.output_file_id
    line = json.loads(c.files.content(b.output_file_id).text.splitlines()[0])
    assert len(line["response"]["body"]["data"][0]["embedding"]) == 1536


def test_list_paging_and_files(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    ids = [submit(c, jsonl(1, prefix=f"p{i}")) for i in range(5)]
    first = c.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert [b.id for b in c.batches.list(limit=2)] == ids[::-1]  # auto-paging, newest first
    files = c.files.list(purpose="batch")
    assert len(files.data) == 5
    fid = files.data[0].id
    assert c.files.delete(fid).deleted
    assert len(c.files.list(purpose="batch").data) == 4
    with pytest.raises(Exception) as exc:
        c.files.retrieve(fid)
    assert getattr(exc.value, "status_code", None) == 404


def test_wrong_extension_rejected(emulator: Emulator) -> None:
    import openai

    with pytest.raises(openai.BadRequestError):
        client(emulator).files.create(file=("in.txt", b"{}"), purpose="batch")


async def test_async_roundtrip(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = AsyncOpenAI(api_key="sk-test", base_url=emulator.openai_base_url, max_retries=0)
    f = await c.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
    b = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    b = await c.batches.retrieve(b.id)
    assert b.status == "completed" and b.output_file_id
    content = await c.files.content(b.output_file_id)
    assert len(content.text.splitlines()) == 5
    r = await c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        response_format=RESPONSE_FORMAT,
    )
    assert schema_errors(json.loads(r.choices[0].message.content or ""), SCHEMA) == []
    e = await c.embeddings.create(model="text-embedding-3-small", input="hi")
    assert len(e.data[0].embedding) == 1536
    await c.close()
