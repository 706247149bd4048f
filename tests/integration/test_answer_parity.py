"""Parity of the two lanes (issue 13): the same provider, the same fault, the same outcome.

Each emulator fault kind is injected for one provider at a time; then

* the commentary lane's instant adapter (``worker.providers.routing.providers().chat(p).complete``,
  the official SDKs, OpenAI's with its default retries) and
* the realtime lane (``worker.realtime.execute.run_chat``) through the lean HTTP client and
  through the official SDK (Gemini and Mistral have only the SDK path)

are asked the same JSON question. Each lane's result is reduced to an outcome class: the
commentary lane's through :func:`worker.providers.error_policy.disposition` of the line's or the
error's kind (what ``commentary.instant._instant_round`` acts on), the realtime lane's from the job's
:class:`~worker.realtime.model.Outcome` (status failed / retrying / waiting for a stopped
provider). The classes must be equal, and equal to what the fault means.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fixtures.pipeline import point_env_at_emulator
from worker.config import get_settings
from worker.emulator import Emulator
from worker.errors import ErrorKind, ProviderError
from worker.providers.answer_rules import schema_problem
from worker.providers.base import ChatRequest
from worker.providers.error_policy import disposition
from worker.providers.routing import Providers as RealtimeClients
from worker.providers.routing import providers, reset_providers
from worker.realtime import execute
from worker.realtime.model import Job, RealtimeSettings, Template

MODELS = {
    "openai": "gpt-4.1-mini",
    "openrouter": "openai/gpt-4.1-mini",
    "perplexity": "sonar",
    "deepseek": "deepseek-chat",
    "ollama": "llama3",
    "gemini": "gemini-2.5-flash",
    "mistral": "mistral-small-latest",
}
LEAN = {"openai", "openrouter", "perplexity", "deepseek", "ollama"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "chosen_answer": {"type": "string", "enum": ["A", "B", "C", "D", "E"]},
        "general_comment": {"type": "string"},
    },
    "required": ["chosen_answer", "general_comment"],
    "additionalProperties": False,
}

#: fault kind -> the outcome class both lanes must reach.
EXPECTED = {
    None: "completed",
    "truncated": "fail_request:truncated",
    "refusal": "fail_request:content_refused",
    "moderation": "fail_request:content_refused",
    "context_length": "fail_request:context_too_long",
    "quota": "stop_provider:quota",
    "payment": "stop_provider:quota",
    "auth": "stop_provider:auth",
    "rate_limit": "retry:retryable",
    "server": "retry:retryable",
    "bad_gateway": "retry:retryable",
    "request_timeout": "retry:retryable",
}


def expected(provider: str, fault: str | None) -> str:
    if provider == "mistral" and fault == "refusal":
        # Mistral has no refusal signal: its refusal is prose where JSON was asked for,
        # which both lanes reject as an invalid answer (retried, attempts counted).
        return "retry:unknown"
    if provider == "mistral" and fault == "moderation":
        return "fail_request:invalid_request"  # a 400 without a moderation code [chosen]
    return EXPECTED[fault]


def commentary_class(line_or_exc: Any) -> str:
    if isinstance(line_or_exc, ProviderError):
        kind = line_or_exc.kind
    elif line_or_exc.ok:
        # what ingest does with it: parse and validate against the schema (a failure counts
        # an attempt and the request waits again: a retry)
        try:
            problem = schema_problem(json.loads(line_or_exc.text), SCHEMA)
        except ValueError:
            return "retry:unknown"
        if problem is None:
            return "completed"
        kind = problem.kind
    else:
        kind = line_or_exc.error_kind or ErrorKind.UNKNOWN
    return f"{disposition(kind).value}:{kind.value}"


def realtime_class(outcome: execute.Outcome) -> str:
    if outcome.status == "completed":
        return "completed"
    kind = ErrorKind(outcome.error_kind)
    if outcome.status == "failed":
        return f"fail_request:{kind.value}"
    assert outcome.status in ("retrying", "pending"), outcome
    if kind in execute.PROVIDER_DOWN:
        assert outcome.failed_call == 0, "a stopped provider charges no attempt"
        return f"stop_provider:{kind.value}"
    return f"retry:{kind.value}"


@pytest.fixture
async def lanes(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Emulator, RealtimeClients, RealtimeClients]]:
    point_env_at_emulator(monkeypatch, emulator)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("REALTIME_HTTP_CLIENT", raising=False)
    monkeypatch.setenv("OLLAMA_API_KEY", "test-key-ollama")
    get_settings.cache_clear()
    reset_providers()
    lean, sdk = RealtimeClients(), RealtimeClients()
    assert lean.lean_chat
    sdk.lean_chat = False
    try:
        yield emulator, lean, sdk
    finally:
        await lean.aclose()
        await sdk.aclose()
        reset_providers()
        get_settings.cache_clear()


async def run_commentary(provider: str) -> Any:
    request = ChatRequest(
        custom_id="00000000-0000-0000-0000-000000000001:m",
        system_prompt="Du kommentierst Prüfungsfragen.",
        user_prompt="Welches Organ produziert Insulin? A Leber B Pankreas",
        schema_name="commentary",
        json_schema=SCHEMA,
        max_output_tokens=400,
    )
    try:
        return await providers().chat(provider).complete(MODELS[provider], request)
    except ProviderError as exc:
        return exc


async def run_realtime(clients: RealtimeClients, provider: str) -> execute.Outcome:
    template = Template(
        name="commentary",
        system_prompt="Du kommentierst Prüfungsfragen.",
        user_template="{text}",
        output="json",
        json_schema=SCHEMA,
        max_output_tokens=400,
    )
    job = Job(
        id=1,
        kind="template",
        provider=provider,
        model=MODELS[provider],
        input_text="Welches Organ produziert Insulin? A Leber B Pankreas",
        max_attempts=5,
    )
    return await execute.run_chat(clients, job, template, RealtimeSettings.from_row(None), 20.0)


@pytest.mark.parametrize("fault", list(EXPECTED))
@pytest.mark.parametrize("provider", sorted(MODELS))
async def test_both_lanes_reach_the_same_outcome(
    lanes: tuple[Emulator, RealtimeClients, RealtimeClients], provider: str, fault: str | None
) -> None:
    emulator, lean, sdk = lanes
    if fault is not None:
        # Every call fails (count None): SDK-internal retries cannot hide the fault.
        emulator.configure(
            http_faults=[{"kind": fault, "provider": provider, "count": None, "retry_after": 0}]
        )
    want = expected(provider, fault)
    got = {"commentary (SDK)": commentary_class(await run_commentary(provider))}
    got["realtime (SDK)"] = realtime_class(await run_realtime(sdk, provider))
    if provider in LEAN:
        got["realtime (lean HTTP)"] = realtime_class(await run_realtime(lean, provider))
    assert got == dict.fromkeys(got, want)
    if fault is not None:
        assert emulator.stats()[provider]["faults_injected"] >= len(got)
