"""Every injected fault surfaces as the SDK's real exception, with the status and error code a
real provider sends; plus outage, hang, latency, compat aliases and control endpoints."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import types
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

from worker.emulator import Emulator, FaultRule

MSG: Any = [{"role": "user", "content": "hi"}]


def oai(emu: Emulator, timeout: float = 30.0) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test", base_url=emu.openai_base_url, max_retries=0, timeout=timeout
    )


def gem(emu: Emulator) -> genai.Client:
    return genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.gemini_base_url))


def mis(emu: Emulator) -> Mistral:
    return Mistral(api_key="k", server_url=emu.mistral_base_url)


@pytest.mark.parametrize(
    ("kind", "exc_type", "status", "code"),
    [
        ("rate_limit", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, 429, "insufficient_quota"),
        ("auth", openai.AuthenticationError, 401, "invalid_api_key"),
        ("server", openai.InternalServerError, 500, None),
        ("unavailable", openai.InternalServerError, 503, None),
    ],
)
def test_openai_faults(
    emulator: Emulator,
    kind: str,
    exc_type: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    emulator.configure(http_faults=[{"provider": "openai", "kind": kind, "count": 1}])
    c = oai(emulator)
    with pytest.raises(exc_type) as exc:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert exc.value.status_code == status
    assert exc.value.code == code
    if kind == "rate_limit":
        assert exc.value.response.headers["retry-after"] == "1"
    if kind == "quota":
        assert exc.value.type == "insufficient_quota"
        assert exc.value.response.headers["x-should-retry"] == "false"
    # count=1: the next request succeeds
    assert c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert emulator.stats()["openai"]["faults_injected"] == 1


def test_openai_sdk_does_not_retry_quota(emulator: Emulator) -> None:
    emulator.configure(http_faults=[FaultRule(kind="quota", count=5)])
    c = openai.OpenAI(api_key="sk", base_url=emulator.openai_base_url, max_retries=2)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert emulator.stats()["openai"]["faults_injected"] == 1


@pytest.mark.parametrize(
    ("kind", "exc_type", "code", "status"),
    [
        ("rate_limit", genai.errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("quota", genai.errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("auth", genai.errors.ClientError, 400, "INVALID_ARGUMENT"),
        ("server", genai.errors.ServerError, 500, "INTERNAL"),
        ("unavailable", genai.errors.ServerError, 503, "UNAVAILABLE"),
    ],
)
def test_gemini_faults(
    emulator: Emulator, kind: str, exc_type: type[genai.errors.APIError], code: int, status: str
) -> None:
    emulator.configure(http_faults=[{"provider": "gemini", "kind": kind}])
    c = gem(emulator)  # keep a reference: the client closes its transport when collected
    with pytest.raises(exc_type) as exc:
        c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert exc.value.code == code and exc.value.status == status
    details = exc.value.details["error"].get("details", [])
    if kind in ("rate_limit", "quota"):
        assert any(d["@type"].endswith("QuotaFailure") for d in details)
    if kind == "auth":
        assert details[0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize(
    ("kind", "status", "marker"),
    [
        ("rate_limit", 429, "rate_limited"),
        ("quota", 429, "insufficient_quota"),
        ("auth", 401, "Unauthorized"),
        ("server", 500, "internal_server_error"),
        ("unavailable", 503, "service_unavailable"),
    ],
)
def test_mistral_faults(emulator: Emulator, kind: str, status: int, marker: str) -> None:
    emulator.configure(http_faults=[{"provider": "mistral", "kind": kind}])
    c = mis(emulator)
    with pytest.raises(mistral_errors.SDKError) as exc:
        c.chat.complete(model="mistral-small-latest", messages=MSG)
    assert exc.value.status_code == status
    assert marker in exc.value.body


def test_path_limited_and_probability_faults(emulator: Emulator) -> None:
    emulator.configure(
        state_seconds=0,
        http_faults=[{"provider": "*", "kind": "server", "path": "/batches", "count": None}],
    )
    c = oai(emulator)
    f = c.files.create(file=("in.jsonl", b'{"custom_id":"a"}\n'), purpose="batch")
    assert f.id  # /files is not affected
    with pytest.raises(openai.InternalServerError):
        c.batches.list()
    with pytest.raises(openai.InternalServerError):
        c.batches.list()  # count=None: fires forever
    emulator.configure(
        seed=7, http_faults=[{"kind": "unavailable", "count": None, "probability": 0.5}]
    )
    hits = 0
    for _ in range(40):
        try:
            c.embeddings.create(model="text-embedding-3-small", input="x", dimensions=4)
        except openai.InternalServerError:
            hits += 1
    assert 5 < hits < 35


def test_missing_key(emulator: Emulator) -> None:
    r = httpx.post(emulator.openai_base_url + "/chat/completions", json={"messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(emulator.gemini_base_url + "/v1/models/g:generateContent", json={})
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = httpx.get(emulator.mistral_base_url + "/v1/files")
    assert r.status_code == 401


def test_down_hang_and_latency(emulator: Emulator) -> None:
    emulator.configure(down=True)
    with pytest.raises(openai.APIConnectionError):
        oai(emulator).chat.completions.create(model="m", messages=MSG)
    assert httpx.get(emulator.base_url + "/_emulator/health").json() == {"ok": True}
    emulator.configure(down=False, hang_seconds=1.0)
    with pytest.raises(openai.APITimeoutError):
        oai(emulator, timeout=0.3).chat.completions.create(model="m", messages=MSG)
    emulator.configure(hang_seconds=0, latency_ms=200)
    t0 = time.perf_counter()
    oai(emulator).chat.completions.create(model="m", messages=MSG)
    assert time.perf_counter() - t0 >= 0.2


def test_concurrent_slow_requests(emulator: Emulator) -> None:
    """100 concurrent slow requests are served in parallel, not one after another."""
    emulator.configure(latency_ms=500)
    url = emulator.openai_base_url + "/embeddings"
    body = {"model": "text-embedding-3-small", "input": "x", "dimensions": 8}

    def call(_: int) -> int:
        return httpx.post(
            url, json=body, headers={"Authorization": "Bearer k"}, timeout=30
        ).status_code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(call, range(100)))
    assert codes == [200] * 100
    # Served one after another they take at least 100 x 0.5 s; in parallel a fraction of
    # it. Half the serial time is a bound on parallelism, not on the machine's speed.
    assert time.perf_counter() - t0 < 100 * 0.5 / 2


def test_realtime_keep_alive_calls_are_all_served(emulator: Emulator) -> None:
    """Small requests on keep-alive connections are all answered and counted. Their rate is
    a figure for `make bench` (bench_emulator), not a limit a loaded machine could miss."""
    url = emulator.compat_base_url("ollama") + "/embeddings"
    body = {"model": "nomic", "input": "x", "dimensions": 8}
    n = 600
    with httpx.Client(headers={"Authorization": "Bearer k"}) as h:
        for _ in range(n):
            assert h.post(url, json=body).status_code == 200
    assert emulator.stats()["ollama"]["embedding_calls"] == n


def test_compat_aliases_and_credits(emulator: Emulator) -> None:
    for name in ("openrouter", "perplexity", "deepseek", "ollama"):
        c = openai.OpenAI(api_key="k", base_url=emulator.compat_base_url(name), max_retries=0)
        answer = c.chat.completions.create(model=f"{name}-model", messages=MSG)
        assert answer.choices[0].message.content
        assert emulator.stats()[name]["chat_calls"] == 1
    emulator.configure(openrouter_total_credits=10.5, openrouter_total_usage=2.25)
    cred = httpx.get(
        emulator.compat_base_url("openrouter") + "/credits", headers={"Authorization": "Bearer k"}
    )
    assert cred.json() == {"data": {"total_credits": 10.5, "total_usage": 2.25}}
    emulator.configure(http_faults=[{"provider": "deepseek", "kind": "rate_limit"}])
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(
            api_key="k", base_url=emulator.compat_base_url("deepseek"), max_retries=0
        ).chat.completions.create(model="d", messages=MSG)


def test_control_endpoints(emulator: Emulator) -> None:
    base = emulator.base_url + "/_emulator"
    r = httpx.post(
        base + "/config",
        json={
            "state_seconds": 0,
            "line_failure_rate": 0.25,
            "http_faults": [{"kind": "auth", "count": 2}],
        },
    )
    assert r.status_code == 200
    cfg = httpx.get(base + "/config").json()
    assert cfg["line_failure_rate"] == 0.25 and cfg["http_faults"][0]["kind"] == "auth"
    assert emulator.config.state_seconds == 0
    assert httpx.post(base + "/config", json={"nope": 1}).status_code == 400
    assert httpx.post(base + "/config", json={"batch_outcome": "weird"}).status_code == 400
    assert httpx.post(base + "/reset").json() == {"ok": True}
    assert httpx.get(base + "/config").json()["line_failure_rate"] == 0.0
    stats = httpx.get(base + "/stats").json()
    assert set(stats) >= {"openai", "gemini", "mistral", "openrouter"}
    assert stats["openai"]["batches_created"] == 0
