"""Contract tests: the real mistralai SDK (sync and async) against the emulator."""

from __future__ import annotations

import json
from typing import Any

from mistralai.client import Mistral

from worker.emulator import Emulator
from worker.emulator.content import schema_errors

HI: Any = [{"role": "user", "content": "hi"}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "labels": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
    },
    "required": ["answer", "confidence", "labels"],
    "additionalProperties": False,
}


def client(emu: Emulator) -> Mistral:
    return Mistral(api_key="test-key", server_url=emu.mistral_base_url)


def inline(custom_id: str) -> Any:
    return [{"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": "x"}]}}]


def jsonl(n: int) -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"m{i}",
                "body": {
                    "messages": [{"role": "user", "content": f"Frage {i}"}],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "a", "schema": SCHEMA, "strict": True},
                    },
                },
            }
        )
        for i in range(n)
    ).encode()


def test_file_batch_roundtrip(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, line_failure_rate=0.3)
    c = client(emulator)
    f = c.files.upload(file={"file_name": "in.jsonl", "content": jsonl(20)}, purpose="batch")
    assert f.sample_type == "batch_request" and f.source == "upload" and f.num_lines == 20
    got = c.files.retrieve(file_id=f.id)
    assert got.deleted is False
    job = c.batch.jobs.create(
        endpoint="/v1/chat/completions",
        input_files=[f.id],
        model="mistral-small-latest",
        metadata={"run": "r1"},
    )
    assert job.status == "QUEUED" and job.errors == []
    job = c.batch.jobs.get(job_id=job.id)
    assert job.status == "SUCCESS"
    assert job.total_requests == 20
    assert job.succeeded_requests + job.failed_requests == 20 == job.completed_requests
    assert job.failed_requests > 0 and job.output_file and job.error_file
    out = c.files.download(file_id=job.output_file)
    assert out.headers["content-type"].startswith("application/octet-stream")
    lines = [json.loads(x) for x in out.read().decode().splitlines()]
    assert len(lines) == job.succeeded_requests
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        text = line["response"]["body"]["choices"][0]["message"]["content"]
        assert schema_errors(json.loads(text), SCHEMA) == []
    errs = [json.loads(x) for x in c.files.download(file_id=job.error_file).read().splitlines()]
    assert {e["response"]["status_code"] for e in errs} == {500}
    assert c.files.retrieve(file_id=job.output_file).sample_type == "batch_result"
    outcomes = emulator.stats()["mistral"]["custom_ids"]
    assert sum(1 for v in outcomes.values() if v[0]["outcome"] == "failed") == len(errs)


def test_inline_batch_list_cancel_delete(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    job = c.batch.jobs.create(
        endpoint="/v1/chat/completions",
        model="mistral-small-latest",
        requests=inline("a"),
        metadata={"job_type": "testing"},
    )
    job = c.batch.jobs.get(job_id=job.id)
    assert job.status == "SUCCESS" and job.outputs
    assert job.outputs[0]["custom_id"] == "a"
    assert job.outputs[0]["response"]["body"]["choices"][0]["message"]["content"]

    emulator.configure(state_seconds=30)
    slow = c.batch.jobs.create(
        endpoint="/v1/chat/completions",
        model="mistral-small-latest",
        requests=inline("b"),
    )
    listed = c.batch.jobs.list(page=0, page_size=10, metadata={"job_type": "testing"})
    assert [j.id for j in listed.data or []] == [job.id] and listed.total == 1
    queued = c.batch.jobs.list(status=["QUEUED", "RUNNING"])
    assert [j.id for j in queued.data or []] == [slow.id]
    paged = c.batch.jobs.list(page=1, page_size=1)
    assert paged.total == 2 and [j.id for j in paged.data or []] == [job.id]
    assert c.batch.jobs.cancel(job_id=slow.id).status == "CANCELLATION_REQUESTED"
    emulator.configure(state_seconds=0)
    assert c.batch.jobs.get(job_id=slow.id).status == "CANCELLED"
    assert c.batch.jobs.delete(job_id=slow.id).deleted
    assert c.batch.jobs.list().total == 1


def test_timeout_and_failed(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, batch_outcome="expired")
    c = client(emulator)
    f = c.files.upload(file={"file_name": "in.jsonl", "content": jsonl(4)}, purpose="batch")
    job = c.batch.jobs.create(
        endpoint="/v1/chat/completions", input_files=[f.id], model="mistral-small-latest"
    )
    job = c.batch.jobs.get(job_id=job.id)
    assert job.status == "TIMEOUT_EXCEEDED" and job.failed_requests == 2
    emulator.configure(batch_outcome="failed")
    job = c.batch.jobs.create(
        endpoint="/v1/chat/completions", input_files=[f.id], model="mistral-small-latest"
    )
    job = c.batch.jobs.get(job_id=job.id)
    assert job.status == "FAILED" and job.errors and job.errors[0].message


def test_chat_and_embeddings(emulator: Emulator) -> None:
    c = client(emulator)
    r = c.chat.complete(
        model="mistral-small-latest",
        messages=HI,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema_definition": SCHEMA, "strict": True},
        },
    )
    msg = r.choices[0].message
    assert msg is not None
    content = msg.content
    assert isinstance(content, str) and schema_errors(json.loads(content), SCHEMA) == []
    r2 = c.chat.complete(
        model="mistral-small-latest",
        messages=HI,
        response_format={"type": "json_object"},
    )
    msg2 = r2.choices[0].message
    assert msg2 is not None and isinstance(json.loads(str(msg2.content)), dict)
    e = c.embeddings.create(model="mistral-embed", inputs=["a", "b"])
    assert len(e.data) == 2
    vec = e.data[0].embedding or []
    assert len(vec) == 1024 and abs(sum(v * v for v in vec) - 1) < 1e-6
    st = emulator.stats()["mistral"]
    assert st["chat_calls"] == 2 and st["embedding_calls"] == 1


async def test_async_roundtrip(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = client(emulator)
    f = await c.files.upload_async(
        file={"file_name": "in.jsonl", "content": jsonl(3)}, purpose="batch"
    )
    job = await c.batch.jobs.create_async(
        endpoint="/v1/chat/completions", input_files=[f.id], model="mistral-small-latest"
    )
    job = await c.batch.jobs.get_async(job_id=job.id, inline=True)
    assert job.status == "SUCCESS" and job.outputs and len(job.outputs) == 3
    assert job.output_file
    resp = await c.files.download_async(file_id=job.output_file)
    body = await resp.aread()
    assert len(body.decode().splitlines()) == 3
    r = await c.chat.complete_async(model="mistral-small-latest", messages=HI)
    assert r.choices[0].message is not None and r.choices[0].message.content
