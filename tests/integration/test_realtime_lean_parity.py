"""Realtime chat on OpenAI-compatible endpoints goes through the lean HTTP client; the SDK
path stays for proxies and ``REALTIME_HTTP_CLIENT=sdk``. Both must give the same answers
and classify every failure the same way (real SDK, real HTTP, the emulator)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fixtures.pipeline import point_env_at_emulator
from tests.fixtures.settings import configure
from worker.config import get_settings
from worker.emulator import Emulator
from worker.errors import ErrorKind, ProviderError
from worker.providers.compat import lean_chat_enabled
from worker.providers.routing import Providers as RealtimeClients
from worker.realtime.sessions import Prompt

COMPAT = {
    "openai": "gpt-4.1-mini",
    "openrouter": "openai/gpt-4.1-mini",
    "perplexity": "sonar",
    "deepseek": "deepseek-chat",
    "ollama": "llama3",
}
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}


@pytest.fixture
async def both(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RealtimeClients, RealtimeClients]]:
    point_env_at_emulator(monkeypatch, emulator)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("REALTIME_HTTP_CLIENT", raising=False)
    get_settings.cache_clear()
    lean, sdk = RealtimeClients(), RealtimeClients()
    assert lean.lean_chat
    sdk.lean_chat = False
    try:
        yield lean, sdk
    finally:
        await lean.aclose()
        await sdk.aclose()
        get_settings.cache_clear()


def test_sdk_is_used_behind_a_proxy_or_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.delenv("REALTIME_HTTP_CLIENT", raising=False)
    get_settings.cache_clear()
    assert lean_chat_enabled()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert not lean_chat_enabled()
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")  # as httpx reads it
    assert not lean_chat_enabled()
    monkeypatch.delenv("https_proxy")
    configure(monkeypatch, REALTIME_HTTP_CLIENT="SDK")
    assert not lean_chat_enabled()


@pytest.mark.parametrize("provider", sorted(COMPAT))
async def test_lean_and_sdk_give_the_same_answers(
    both: tuple[RealtimeClients, RealtimeClients], provider: str
) -> None:
    lean, sdk = both
    model = COMPAT[provider]
    text = Prompt(
        system="Du bist knapp.",
        history=[{"role": "user", "content": "Hallo"}, {"role": "assistant", "content": "Hi"}],
        user="Wie spät ist es? «Grüße» {braces}",
        max_output_tokens=50,
        temperature=0.2,
    )
    structured = Prompt(
        system=None, history=[], user="Das Essen war gut", json_output=True, json_schema=SCHEMA
    )
    for prompt in (text, structured):
        a = await lean.converse(provider, model, prompt)
        b = await sdk.converse(provider, model, prompt)
        assert a == b
        assert a.text and a.input_tokens > 0 and a.output_tokens > 0
    assert (
        lean.chat(provider).lean_client().connects == 1
    )  # both calls on one kept-alive connection


@pytest.mark.parametrize("provider", ["openai", "openrouter", "deepseek"])
@pytest.mark.parametrize("fault", ["rate_limit", "quota", "auth", "server", "unavailable"])
async def test_lean_and_sdk_classify_failures_the_same(
    both: tuple[RealtimeClients, RealtimeClients],
    emulator: Emulator,
    provider: str,
    fault: str,
) -> None:
    lean, sdk = both
    prompt = Prompt(system=None, history=[], user="Hallo")
    errors: list[ProviderError] = []
    for clients in (lean, sdk):
        emulator.configure(
            http_faults=[{"provider": provider, "kind": fault, "count": 1, "retry_after": 2.5}]
        )
        with pytest.raises(ProviderError) as info:
            await clients.converse(provider, COMPAT[provider], prompt)
        errors.append(info.value)
    a, b = errors
    assert (a.kind, a.status_code, a.code, a.retry_after, a.message) == (
        b.kind,
        b.status_code,
        b.code,
        b.retry_after,
        b.message,
    )
    assert a.kind is not ErrorKind.UNKNOWN
    if fault == "rate_limit":
        assert a.status_code == 429 and a.retry_after is not None and a.retry_after >= 2.5


async def test_unreachable_endpoint_is_retryable_on_both_paths(
    both: tuple[RealtimeClients, RealtimeClients], emulator: Emulator
) -> None:
    lean, sdk = both
    emulator.configure(down=True)
    prompt = Prompt(system=None, history=[], user="Hallo")
    for clients in (lean, sdk):
        with pytest.raises(ProviderError) as info:
            await clients.converse("openai", COMPAT["openai"], prompt)
        assert (info.value.kind, info.value.code) == (ErrorKind.RETRYABLE, "connection")
