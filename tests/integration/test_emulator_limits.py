"""The real providers' batch limits in the emulator, driven through ``POST /_emulator/config``
and observed through the official SDKs (provider-apis.md section 5)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from mistralai.client import Mistral

from worker.emulator import Emulator
from worker.emulator.limits import estimate_openai_line_tokens


def oai(emu: Emulator, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test", base_url=emu.openai_base_url, max_retries=max_retries, timeout=30
    )


def gem(emu: Emulator, version: str | None = "v1beta") -> genai.Client:
    return genai.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=emu.gemini_base_url, api_version=version),
    )


def configure(emu: Emulator, **changes: Any) -> None:
    """Through the HTTP control endpoint, as outside checks drive it."""
    r = httpx.post(emu.base_url + "/_emulator/config", json=changes)
    assert r.status_code == 200, r.text
    for k, v in changes.items():
        assert r.json()[k] == v


def body(i: int, text: str = "x" * 400) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"{text} {i}"},
        ],
    }


def jsonl(n: int, prefix: str) -> bytes:
    lines = [
        json.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(i),
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def openai_batch(c: openai.OpenAI, n: int, prefix: str) -> str:
    f = c.files.create(file=(f"{prefix}.jsonl", jsonl(n, prefix)), purpose="batch")
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "validating"  # accepted, whatever the queue
    return b.id


def test_limits_are_off_by_default(emulator: Emulator) -> None:
    cfg = httpx.get(emulator.base_url + "/_emulator/config").json()
    assert cfg["openai_enqueued_tokens_per_model"] is None
    assert cfg["openai_batches_per_hour"] is None
    assert cfg["gemini_max_concurrent_batches"] is None
    assert cfg["gemini_enqueued_tokens_per_model"] is None
    assert cfg["lost_response_rate"] == 0.0
    assert cfg["strict_api_versions"] is False
    assert cfg["gemini_output_delay_polls"] == 0


def test_openai_enqueued_token_limit_fails_the_batch_at_validation(emulator: Emulator) -> None:
    per_batch = 10 * estimate_openai_line_tokens(body(0))
    # Room for one 10-line batch, not two.
    configure(emulator, state_seconds=0.5, openai_enqueued_tokens_per_model=per_batch + 5)
    c = oai(emulator)
    first = openai_batch(c, 10, "a")
    second = openai_batch(c, 10, "b")
    time.sleep(0.6)
    b2 = c.batches.retrieve(second)
    assert b2.status == "failed" and b2.failed_at
    assert b2.errors is not None and b2.errors.data is not None
    err = b2.errors.data[0]
    assert err.code == "token_limit_exceeded"
    assert err.line is None and err.param is None
    assert err.message == (
        "Enqueued token limit reached for gpt-4o-mini in organization org-emulator. "
        f"Limit: {per_batch + 5:,} enqueued tokens. Please try again once some "
        "in_progress batches have been completed."
    )
    assert c.batches.retrieve(first).status == "in_progress"
    # Released when the first batch finishes: a new batch fits again.
    deadline = time.time() + 10
    while c.batches.retrieve(first).status != "completed":
        assert time.time() < deadline
        time.sleep(0.2)
    third = openai_batch(c, 10, "c")
    time.sleep(0.6)
    assert c.batches.retrieve(third).status == "in_progress"
    # Other models have their own queue.
    stats = emulator.stats()["openai"]
    assert stats["custom_ids"]["b-0"] == [{"batch_id": second, "outcome": "failed"}]


def test_the_token_estimate_follows_the_request_text() -> None:
    short = estimate_openai_line_tokens(body(0, "x" * 40))
    long = estimate_openai_line_tokens(body(0, "x" * 4000))
    assert long - short == 990  # ceil(4002/4) - ceil(42/4): the text, 4 chars a token
    # framing: 2 for the reply primer + 4 per message + role tokens
    assert estimate_openai_line_tokens({"messages": [{"role": "user", "content": ""}]}) == 7


def test_openai_batches_per_hour(emulator: Emulator) -> None:
    configure(emulator, openai_batches_per_hour=2, openai_batch_window_seconds=1.0)
    c = oai(emulator)
    openai_batch(c, 1, "a")
    openai_batch(c, 1, "b")
    f = c.files.create(file=("c.jsonl", jsonl(1, "c")), purpose="batch")
    with pytest.raises(openai.RateLimitError) as exc:
        c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert exc.value.status_code == 429 and exc.value.code == "rate_limit_exceeded"
    assert emulator.stats()["openai"]["batches_created"] == 2  # refused: nothing created
    time.sleep(1.05)
    c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert emulator.stats()["openai"]["batches_created"] == 3


def gemini_batch(c: genai.Client, n: int, prefix: str) -> str:
    lines = [
        json.dumps(
            {"key": f"{prefix}-{i}", "request": {"contents": [{"parts": [{"text": "y" * 400}]}]}}
        )
        for i in range(n)
    ]
    import io

    f = c.files.upload(
        file=io.BytesIO(("\n".join(lines) + "\n").encode()),
        config=types.UploadFileConfig(mime_type="jsonl", display_name=prefix),
    )
    assert f.name
    job = c.batches.create(model="gemini-2.5-flash", src=f.name)
    assert job.name
    return job.name


def assert_generic_429(exc: genai_errors.APIError) -> None:
    assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED"
    assert "check your plan and billing details" in (exc.message or "")
    assert exc.details == {
        "error": {"code": 429, "message": exc.message, "status": "RESOURCE_EXHAUSTED"}
    }  # no QuotaFailure, no RetryInfo
    assert exc.response is not None and "retry-after" not in exc.response.headers


def test_gemini_concurrent_batch_cap(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0.4, gemini_max_concurrent_batches=2)
    c = gem(emulator)
    first = gemini_batch(c, 2, "a")
    gemini_batch(c, 2, "b")
    with pytest.raises(genai_errors.ClientError) as exc:
        gemini_batch(c, 2, "c")
    assert_generic_429(exc.value)
    with pytest.raises(genai_errors.ClientError) as exc:
        list(c.batches.list())  # the listing too, while at the cap
    assert_generic_429(exc.value)
    assert emulator.stats()["gemini"]["batches_created"] == 2
    deadline = time.time() + 10
    while c.batches.get(name=first).state != types.JobState.JOB_STATE_SUCCEEDED:
        assert time.time() < deadline
        time.sleep(0.1)
    gemini_batch(c, 2, "d")  # a slot is free again
    assert emulator.stats()["gemini"]["batches_created"] == 3


def test_gemini_enqueued_tokens_per_model(emulator: Emulator) -> None:
    # 2 lines of 100 tokens each ("user: " + 400 chars = 102 tokens)
    configure(emulator, state_seconds=30, gemini_enqueued_tokens_per_model=300)
    c = gem(emulator)
    gemini_batch(c, 2, "a")
    with pytest.raises(genai_errors.ClientError) as exc:
        gemini_batch(c, 2, "b")
    assert_generic_429(exc.value)


@pytest.mark.parametrize("provider", ["openai", "gemini", "mistral"])
def test_lost_responses_leave_the_side_effect(emulator: Emulator, provider: str) -> None:
    configure(emulator, lost_response_rate=1.0, state_seconds=0)
    errors = (openai.APIError, genai_errors.APIError, httpx.HTTPError, Exception)
    if provider == "openai":
        c = oai(emulator, max_retries=2)  # the SDK default: retries the lost create
        with pytest.raises(errors):
            c.files.create(file=("x.jsonl", jsonl(2, "p")), purpose="batch")
        files = c.files.list().data
        assert len(files) == 3  # three attempts, three stored files
        with pytest.raises(errors):
            c.batches.create(
                input_file_id=files[0].id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert emulator.stats()["openai"]["batches_created"] == 3
        configure(emulator, lost_response_rate=0.0)
        for b in c.batches.list().data:
            c.batches.retrieve(b.id)
        assert emulator.stats()["openai"]["paid_twice"] == ["p-0", "p-1"]
    elif provider == "gemini":
        g = gem(emulator)
        with pytest.raises(errors):
            gemini_batch(g, 2, "g")
        assert emulator.stats()["gemini"]["files_uploaded"] == 1
        assert emulator.stats()["gemini"]["batches_created"] == 0
    else:
        m = Mistral(api_key="k", server_url=emulator.mistral_base_url)
        with pytest.raises(errors):
            m.files.upload(file={"file_name": "x.jsonl", "content": b'{"custom_id":"1"}\n'})
        assert emulator.stats()["mistral"]["files_uploaded"] == 1
    assert emulator.stats()[provider]["responses_lost"] >= 1


def wait_status(c: openai.OpenAI, batch_id: str, status: str, timeout: float = 10) -> Any:
    deadline = time.time() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        if b.status == status:
            return b
        assert time.time() < deadline, b.status
        time.sleep(0.05)


def test_openai_cancel_is_slow_and_keeps_partial_results(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0.3, cancel_seconds=0.6)
    c = oai(emulator)
    batch_id = openai_batch(c, 40, "p")
    wait_status(c, batch_id, "in_progress")
    assert c.batches.cancel(batch_id).status == "cancelling"
    time.sleep(0.35)
    assert c.batches.retrieve(batch_id).status == "cancelling"  # longer than a state
    b = wait_status(c, batch_id, "cancelled")
    assert b.output_file_id and b.cancelled_at
    lines = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
    done = {x["custom_id"] for x in lines}
    assert 0 < len(done) < 40  # partial results
    outcomes = {
        cid: e[-1]["outcome"] for cid, e in emulator.stats()["openai"]["custom_ids"].items()
    }
    assert {cid for cid, o in outcomes.items() if o == "succeeded"} == done
    assert set(outcomes.values()) == {"succeeded", "cancelled"}
    assert b.usage is not None and b.usage.input_tokens > 0  # the finished lines are billed


def test_openai_cancel_while_validating_has_no_results(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0.5, cancel_seconds=0)
    c = oai(emulator)
    batch_id = openai_batch(c, 5, "v")
    c.batches.cancel(batch_id)
    b = wait_status(c, batch_id, "cancelled")
    assert b.output_file_id is None


def test_operator_cancel_outcome_passes_through_running(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0, batch_outcome="cancelled")
    c = oai(emulator)
    batch_id = openai_batch(c, 20, "o")
    b = c.batches.retrieve(batch_id)
    assert b.status == "cancelled" and b.in_progress_at and b.cancelling_at
    assert b.output_file_id  # lines done before the cancel


def test_openai_empty_error_file_id_and_status_code_zero(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0, openai_empty_error_file_id=True)
    c = oai(emulator)
    b = c.batches.retrieve(openai_batch(c, 5, "e"))
    assert b.status == "completed" and b.error_file_id == ""
    configure(emulator, status_code_zero_rate=0.5)
    b = c.batches.retrieve(openai_batch(c, 40, "z"))
    assert b.error_file_id
    bad = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
    assert bad and all(x["response"]["status_code"] == 0 for x in bad)
    assert b.request_counts is not None and b.request_counts.failed == len(bad)


def test_forced_failure_reasons(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0, batch_outcome="failed")
    c = oai(emulator)
    b = c.batches.retrieve(openai_batch(c, 2, "f"))
    assert b.errors is not None and b.errors.data is not None
    assert b.errors.data[0].code == "server_error"
    configure(emulator, batch_failure_code="invalid_json_line")
    b = c.batches.retrieve(openai_batch(c, 2, "g"))
    assert b.errors is not None and b.errors.data is not None
    assert b.errors.data[0].code == "invalid_json_line"


def test_gemini_results_readable_only_after_more_polls(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0, gemini_output_delay_polls=2)
    c = gem(emulator)
    name = gemini_batch(c, 3, "late")
    seen = [c.batches.get(name=name) for _ in range(3)]
    assert [j.state for j in seen] == [types.JobState.JOB_STATE_SUCCEEDED] * 3
    assert [bool(j.dest and j.dest.file_name) for j in seen] == [False, False, True]
    assert seen[2].dest is not None and seen[2].dest.file_name
    assert c.files.download(file=seen[2].dest.file_name).count(b'"key"') == 3


def test_strict_api_versions(emulator: Emulator) -> None:
    gemini_batch(gem(emulator, "v1"), 1, "loose")  # serves both by default
    configure(emulator, strict_api_versions=True)
    v1 = gem(emulator, "v1")
    with pytest.raises(genai_errors.ClientError) as exc:
        gemini_batch(v1, 1, "strict")
    assert exc.value.code == 404
    with pytest.raises(genai_errors.ClientError):
        list(v1.batches.list())
    gemini_batch(gem(emulator, "v1beta"), 1, "beta")
    # realtime calls are not batch or file routes
    r = v1.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text


def test_files_expire(emulator: Emulator) -> None:
    configure(emulator, state_seconds=0, file_ttl_seconds=0.5)
    c = oai(emulator)
    b = c.batches.retrieve(openai_batch(c, 2, "t"))
    assert b.output_file_id
    assert c.files.content(b.output_file_id).text
    time.sleep(0.55)
    with pytest.raises(openai.NotFoundError):
        c.files.content(b.output_file_id)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(b.input_file_id)
    g = gem(emulator)
    import io

    f = g.files.upload(file=io.BytesIO(b"{}\n"), config=types.UploadFileConfig(mime_type="jsonl"))
    assert f.name and f.expiration_time is not None and f.create_time is not None
    assert (f.expiration_time - f.create_time).total_seconds() == pytest.approx(0.5, abs=0.01)
    time.sleep(0.55)
    with pytest.raises(genai_errors.ClientError) as exc:
        g.batches.create(model="gemini-2.5-flash", src=f.name)
    assert exc.value.code == 400
