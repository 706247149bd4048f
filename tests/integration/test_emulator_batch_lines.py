"""Batch results through the real SDKs: each result line answers exactly what a realtime
call with the same request answers (the batch path precomputes per-line inputs at creation
and splices pre-encoded JSON, the realtime path builds the response object), unreadable
lines fail on their own, and results no longer need the input file once the batch exists."""

from __future__ import annotations

import io
import json
from typing import Any

from google import genai
from google.genai import types
from mistralai.client import Mistral
from openai import OpenAI

from worker.emulator import Emulator
from worker.emulator.content import schema_errors

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "chosen": {"type": "string", "enum": ["A", "B", "C"]},
        "comment": {"type": "string"},
        "alt": {"type": ["string", "null"]},
    },
    "required": ["chosen", "comment", "alt"],
    "additionalProperties": False,
}
RICH: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer", "maximum": 3}, "tags": {"type": "array"}},
    "required": ["n", "tags"],
}


def fmt(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


def messages(i: int) -> Any:
    return [
        {"role": "system", "content": "Du bist ein Prüfer."},
        {"role": "user", "content": f'Frage {i}: "Stärke" 100% {{x}}'},
    ]


def test_openai_lines_equal_realtime_answers(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0, seed=11)
    c = OpenAI(api_key="sk", base_url=emulator.openai_base_url, max_retries=0)
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1-mini",
                "messages": messages(i),
                "response_format": fmt(SCHEMA if i % 3 else RICH),
            },
        }
        for i in range(30)
    ]
    data = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode()
    f = c.files.create(file=("in.jsonl", data), purpose="batch")
    batch = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    c.files.delete(f.id)  # results are made from what was read at creation
    batch = c.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    out = c.files.content(batch.output_file_id).text.splitlines()
    got = {x["custom_id"]: x for x in map(json.loads, out)}
    assert sorted(got) == sorted(x["custom_id"] for x in lines)
    usage_in = usage_out = 0
    for line in lines:
        result = got[line["custom_id"]]
        assert result["id"] == result["response"]["request_id"]
        body = result["response"]["body"]
        realtime = c.chat.completions.create(**line["body"])
        assert body["choices"][0]["message"]["content"] == realtime.choices[0].message.content
        assert body["usage"]["prompt_tokens"] == realtime.usage.prompt_tokens  # type: ignore[union-attr]
        assert body["id"] == realtime.id and body["model"] == "gpt-4.1-mini"
        schema = SCHEMA if int(line["custom_id"][1:]) % 3 else RICH
        assert schema_errors(json.loads(body["choices"][0]["message"]["content"]), schema) == []
        usage_in += body["usage"]["prompt_tokens"]
        usage_out += body["usage"]["completion_tokens"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (usage_in, usage_out)


def test_gemini_lines_equal_realtime_answers(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emulator.gemini_base_url))
    requests = [
        {
            "contents": [{"role": "user", "parts": [{"text": f"Frage {i}"}]}],
            "systemInstruction": {"parts": [{"text": "System"}]},
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": SCHEMA,
            },
        }
        for i in range(8)
    ]
    rows = [json.dumps({"key": f"g{i}", "request": r}) for i, r in enumerate(requests)]
    rows.insert(3, "{not json")
    f = c.files.upload(
        file=io.BytesIO("\n".join(rows).encode()),
        config=types.UploadFileConfig(mime_type="jsonl", display_name="in"),
    )
    job = c.batches.create(model="gemini-2.5-flash", src=f.name)
    assert job.name
    job = c.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None and job.dest.file_name
    got = {
        x["key"]: x for x in map(json.loads, c.files.download(file=job.dest.file_name).splitlines())
    }
    assert got["#3"]["error"]["code"] == 13  # the unreadable line, failed on its own
    for i, r in enumerate(requests):
        realtime = c.models.generate_content(
            model="gemini-2.5-flash",
            contents=r["contents"],
            config=types.GenerateContentConfig(
                system_instruction="System",
                response_mime_type="application/json",
                response_json_schema=SCHEMA,
            ),
        )
        response = got[f"g{i}"]["response"]
        assert response["candidates"][0]["content"]["parts"][0]["text"] == realtime.text
        assert response["modelVersion"] == "gemini-2.5-flash"


def test_mistral_lines_equal_realtime_answers(emulator: Emulator) -> None:
    emulator.configure(state_seconds=0)
    c = Mistral(api_key="k", server_url=emulator.mistral_base_url)
    rows = [
        json.dumps({"custom_id": f"m{i}", "body": {"messages": messages(i), **fmt_body(i)}})
        for i in range(6)
    ]
    rows.append("not json at all")
    f = c.files.upload(
        file={"file_name": "in.jsonl", "content": "\n".join(rows).encode()}, purpose="batch"
    )
    job = c.batch.jobs.create(
        endpoint="/v1/chat/completions", input_files=[f.id], model="mistral-small-latest"
    )
    job = c.batch.jobs.get(job_id=job.id)
    assert job.status == "SUCCESS" and job.output_file and job.error_file
    assert (job.succeeded_requests, job.failed_requests) == (6, 1)
    out = [json.loads(x) for x in c.files.download(file_id=job.output_file).read().splitlines()]
    assert [x["custom_id"] for x in out] == [f"m{i}" for i in range(6)], "input order"
    for i, line in enumerate(out):
        realtime = c.chat.complete(
            model="mistral-small-latest",
            messages=messages(i),
            response_format=fmt_body(i).get("response_format"),
        )
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == realtime.choices[0].message.content
        assert body["model"] == "mistral-small-latest" and not body["id"].startswith("chatcmpl-")
    errs = [json.loads(x) for x in c.files.download(file_id=job.error_file).read().splitlines()]
    assert [e["custom_id"] for e in errs] == ["#6"]


def fmt_body(i: int) -> dict[str, Any]:
    return {"response_format": fmt(SCHEMA)} if i % 2 else {}
