"""The error policy against real SDK exceptions: for every provider and every injected fault
kind, call the official SDK against the emulator, catch what it raises, classify it, and
check the kind (and that the breaker/stop decision follows from it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types
from mistralai.client import Mistral

from worker.emulator import Emulator
from worker.errors import ErrorKind, ProviderError
from worker.ops.breaker import counts_toward_breaker
from worker.ops.resilience import STOP_KINDS
from worker.providers.error_policy import classify

K = ErrorKind
MSG: Any = [{"role": "user", "content": "Welches Organ produziert Insulin?"}]

#: fault kind -> (expected kind, expected HTTP status) per provider family.
EXPECTED: dict[str, dict[str, tuple[ErrorKind, int]]] = {
    "openai": {
        "rate_limit": (K.RETRYABLE, 429),
        "quota": (K.QUOTA, 429),
        "auth": (K.AUTH, 401),
        "server": (K.RETRYABLE, 500),
        "unavailable": (K.RETRYABLE, 503),
    },
    "gemini": {
        "rate_limit": (K.RETRYABLE, 429),  # RESOURCE_EXHAUSTED, quotaId ...PerMinute...
        "quota": (K.QUOTA, 429),  # RESOURCE_EXHAUSTED, quotaId ...PerDay... + billing text
        "auth": (K.AUTH, 400),  # INVALID_ARGUMENT with ErrorInfo API_KEY_INVALID
        "server": (K.RETRYABLE, 500),
        "unavailable": (K.RETRYABLE, 503),
    },
    "mistral": {
        "rate_limit": (K.RETRYABLE, 429),
        "quota": (K.QUOTA, 429),
        "auth": (K.AUTH, 401),
        "server": (K.RETRYABLE, 500),
        "unavailable": (K.RETRYABLE, 503),
    },
}
# The OpenAI-compatible instant providers answer in OpenAI's envelope.
for _alias in ("perplexity", "deepseek", "openrouter"):
    EXPECTED[_alias] = EXPECTED["openai"]

CASES = [(p, f) for p in EXPECTED for f in EXPECTED[p]]


def _openai_call(emu: Emulator, provider: str) -> Callable[[], Any]:
    base = emu.openai_base_url if provider == "openai" else emu.compat_base_url(provider)
    client = openai.OpenAI(api_key="sk-test", base_url=base, max_retries=0, timeout=10)
    model = "gpt-4o-mini" if provider == "openai" else "sonar"
    return lambda: client.chat.completions.create(model=model, messages=MSG)


def _gemini_call(emu: Emulator) -> Callable[[], Any]:
    client = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=emu.gemini_base_url, timeout=10_000)
    )
    return lambda: client.models.generate_content(model="gemini-2.5-flash", contents="hi")


def _mistral_call(emu: Emulator) -> Callable[[], Any]:
    client = Mistral(api_key="k", server_url=emu.mistral_base_url, timeout_ms=10_000)
    return lambda: client.chat.complete(model="mistral-small-latest", messages=MSG)


def sdk_call(emu: Emulator, provider: str) -> Callable[[], Any]:
    if provider == "gemini":
        return _gemini_call(emu)
    if provider == "mistral":
        return _mistral_call(emu)
    return _openai_call(emu, provider)


@pytest.mark.parametrize(("provider", "fault"), CASES)
def test_sdk_exception_classifies(emulator: Emulator, provider: str, fault: str) -> None:
    expected_kind, expected_status = EXPECTED[provider][fault]
    emulator.configure(
        http_faults=[{"provider": provider, "kind": fault, "count": 1, "retry_after": 3}]
    )
    call = sdk_call(emulator, provider)
    with pytest.raises(Exception) as caught:
        call()
    exc = caught.value
    assert not isinstance(exc, ProviderError)  # a real SDK exception, not ours
    err = classify(exc, provider)
    assert isinstance(err, ProviderError)
    assert (err.kind, err.status_code, err.provider) == (expected_kind, expected_status, provider)
    if fault == "rate_limit":
        # retry-after (header, or Gemini's RetryInfo) survives classification
        assert err.retry_after == pytest.approx(3.0)
    # The consequences: quota/auth stop the provider, transient faults count toward the
    # breaker, and nothing does both.
    assert (err.kind in STOP_KINDS) is (fault in ("quota", "auth"))
    assert counts_toward_breaker(err.kind) is (fault in ("rate_limit", "server", "unavailable"))
    # count=1: exactly one fault fired, and the SDK did not retry it away
    assert emulator.stats()[provider]["faults_injected"] == 1
    call()  # the next request succeeds


@pytest.mark.parametrize("provider", ["openai", "gemini", "mistral"])
async def test_adapter_raises_the_classified_error(emulator: Emulator, provider: str) -> None:
    """The instant adapters translate at their boundary: the caller gets a ProviderError
    with the right kind, never an SDK exception."""
    from worker.commentary.schemas import COMMENTARY_SCHEMA
    from worker.providers.base import ChatRequest
    from worker.providers.gemini import GeminiChat
    from worker.providers.mistral import MistralChat
    from worker.providers.openai import OpenAIChat

    chat: Any
    if provider == "openai":
        chat = OpenAIChat("k", emulator.openai_base_url, 10)
        model = "gpt-4.1-mini"
    elif provider == "gemini":
        chat = GeminiChat("k", emulator.gemini_base_url, 10)
        model = "gemini-2.5-flash"
    else:
        chat = MistralChat("k", emulator.mistral_base_url, 10)
        model = "mistral-small-latest"
    req = ChatRequest("q-1", "system", "user", "commentary", COMMENTARY_SCHEMA)
    try:
        for fault in ("quota", "auth", "server"):
            emulator.configure(http_faults=[{"provider": provider, "kind": fault, "count": 1}])
            with pytest.raises(ProviderError) as caught:
                await chat.complete(model, req)
            assert caught.value.kind is EXPECTED[provider][fault][0]
            assert caught.value.__cause__ is not None  # raised `from` the SDK exception
    finally:
        await chat.aclose()
