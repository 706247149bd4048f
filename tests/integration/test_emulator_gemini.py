"""Contract tests: the real google-genai SDK (sync and async, v1 and v1beta) against the
emulator."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from google import genai
from google.genai import types

from worker.emulator import Emulator
from worker.emulator.content import schema_errors

GEMINI_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "name": {"type": "STRING"},
        "mood": {"type": "STRING", "format": "enum", "enum": ["gut", "schlecht"]},
        "count": {"type": "INTEGER", "minimum": 0, "maximum": 3},
        "maybe": {"type": "NUMBER", "nullable": True},
        "items": {"type": "ARRAY", "items": {"type": "STRING"}},
    },
    "required": ["name", "mood", "count", "maybe", "items"],
}


def client(emu: Emulator, version: str = "v1") -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version=version),
    )


def inline_requests(n: int) -> Any:
    return [
        {
            "contents": [{"parts": [{"text": f"Frage {i}"}], "role": "user"}],
            "metadata": {"key": f"k{i}"},
            "config": {"response_mime_type": "application/json", "response_schema": GEMINI_SCHEMA},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_inline_batch(emulator: Emulator, version: str) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator, version)
    job = c.batches.create(
        model="gemini-2.5-flash",
        src=inline_requests(4),
        config={"display_name": "inline"},
    )
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    job = c.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None and job.dest.inlined_responses is not None
    keys = [r.metadata["key"] for r in job.dest.inlined_responses if r.metadata]
    assert keys == ["k0", "k1", "k2", "k3"], "inline results come back in input order"
    for r in job.dest.inlined_responses:
        assert r.response is not None and r.response.text
        assert schema_errors(json.loads(r.response.text), GEMINI_SCHEMA) == []
    ids = emulator.stats()["gemini"]["custom_ids"]
    assert ids["k2"] == [{"batch_id": job.name, "outcome": "succeeded"}]


def test_file_batch_and_download(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, line_failure_rate=0.3)
    c = client(emulator)
    data = "\n".join(
        json.dumps({"key": f"q{i}", "request": {"contents": [{"parts": [{"text": f"t{i}"}]}]}})
        for i in range(20)
    ).encode()
    f = c.files.upload(
        file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="jsonl", display_name="in")
    )
    assert f.name and f.name.startswith("files/") and f.size_bytes == len(data)
    assert c.files.get(name=f.name).state == types.FileState.ACTIVE
    job = c.batches.create(model="gemini-2.5-flash", src=f.name)
    assert job.name
    job = c.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None and job.dest.file_name
    lines = [json.loads(x) for x in c.files.download(file=job.dest.file_name).splitlines()]
    assert sorted(x["key"] for x in lines) == sorted(f"q{i}" for i in range(20))
    failed = [x for x in lines if "error" in x]
    assert failed and all(isinstance(x["error"]["code"], int) for x in failed)
    assert all(
        x["response"]["candidates"][0]["content"]["parts"][0]["text"]
        for x in lines
        if "response" in x
    )


def test_realtime_generate_and_embed(emulator: Emulator) -> None:
    c = client(emulator, "v1beta")
    cfg = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=GEMINI_SCHEMA
    )
    r = c.models.generate_content(model="gemini-2.5-flash", contents="Hallo", config=cfg)
    assert r.text and schema_errors(json.loads(r.text), GEMINI_SCHEMA) == []
    assert r.usage_metadata is not None and r.usage_metadata.total_token_count
    json_schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r2 = c.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hallo",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=json_schema
        ),
    )
    assert r2.text and schema_errors(json.loads(r2.text), json_schema) == []
    e = c.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert e.embeddings and len(e.embeddings) == 2
    vec = e.embeddings[0].values or []
    assert len(vec) == 768 and abs(sum(v * v for v in vec) - 1) < 1e-6
    e2 = c.models.embed_content(
        model="gemini-embedding-001", contents="a", config={"output_dimensionality": 32}
    )
    assert e2.embeddings and len(e2.embeddings[0].values or []) == 32
    again = c.models.embed_content(model="gemini-embedding-001", contents=["a"])
    assert again.embeddings and again.embeddings[0].values == vec
    st = emulator.stats()["gemini"]
    assert st["chat_calls"] == 2 and st["embedding_calls"] == 3


def test_list_cancel_delete(emulator: Emulator) -> None:
    emulator.configure(state_seconds=30)
    c = client(emulator)
    names = [
        c.batches.create(model="gemini-2.5-flash", src=inline_requests(1)).name for _ in range(3)
    ]
    listed = [j.name for j in c.batches.list(config={"page_size": 2})]
    assert listed == names[::-1]
    assert names[0]
    c.batches.cancel(name=names[0])
    job = c.batches.get(name=names[0])
    assert job.state == types.JobState.JOB_STATE_CANCELLED
    assert emulator.stats()["gemini"]["custom_ids"]["k0"][0]["outcome"] == "cancelled"
    c.batches.delete(name=names[0])
    assert len(list(c.batches.list())) == 2
    with pytest.raises(genai.errors.ClientError) as exc:
        c.batches.get(name=names[0])
    assert exc.value.code == 404


def test_failed_and_expired(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, batch_outcome="failed")
    c = client(emulator)
    name = c.batches.create(model="gemini-2.5-flash", src=inline_requests(2)).name
    assert name
    assert c.batches.get(name=name).state == types.JobState.JOB_STATE_FAILED
    emulator.configure(batch_outcome="expired")
    name = c.batches.create(model="gemini-2.5-flash", src=inline_requests(2)).name
    assert name
    job = c.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_EXPIRED
    assert job.dest is None or not job.dest.inlined_responses


async def test_async_inline_and_files(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    job = await c.aio.batches.create(model="gemini-2.5-flash", src=inline_requests(2))
    assert job.name
    job = await c.aio.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    f = await c.aio.files.upload(
        file=io.BytesIO(b'{"key":"a","request":{"contents":[{"parts":[{"text":"x"}]}]}}\n'),
        config=types.UploadFileConfig(mime_type="application/jsonl"),
    )
    assert f.name
    pager = await c.aio.files.list()
    assert [x.name async for x in pager] == [f.name]
    await c.aio.files.delete(name=f.name)
    r = await c.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text
