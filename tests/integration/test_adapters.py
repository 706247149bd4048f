"""The provider adapters against the in-process emulator, through the real SDKs.

Every test gets a freshly reset emulator (``emulator`` fixture); nothing here talks to a
real provider.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

try:
    from worker.emulator import Emulator
except ImportError as exc:  # pragma: no cover - only while the emulator is being built
    pytest.skip(f"worker.emulator not importable: {exc}", allow_module_level=True)

from worker.errors import ErrorKind, ProviderError
from worker.providers.base import BatchProvider, BatchState, BatchStatus, ChatRequest, ResultLine
from worker.providers.compat import OPENAI_COMPATIBLE
from worker.providers.gemini import GeminiBatch
from worker.providers.mistral import MistralBatch
from worker.providers.openai import OpenAIBatch
from worker.providers.registry import build_chat_provider

pytestmark = pytest.mark.timeout(60)

KEY = "emulator-key"
BATCH_PROVIDERS = ("openai", "gemini", "mistral")
MODELS = {
    "openai": "gpt-4o-mini",
    "gemini": "gemini-2.5-flash",
    "mistral": "mistral-small-latest",
    "openrouter": "openai/gpt-4o-mini",
    "perplexity": "sonar",
    "deepseek": "deepseek-chat",
    "ollama": "llama3.2",
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "commentary": {"type": "string"},
        "difficulty": {"type": "integer"},
        "correct": {"type": "boolean"},
    },
    "required": ["commentary", "difficulty", "correct"],
    "additionalProperties": False,
}


def requests(n: int = 20, prefix: str = "q") -> list[ChatRequest]:
    return [
        ChatRequest(
            custom_id=f"{prefix}-{i}",
            system_prompt="You comment on exam questions.",
            user_prompt=f"Question {i}: what is {i} + {i}?",
            schema_name="commentary",
            json_schema=SCHEMA,
            max_output_tokens=400,
        )
        for i in range(n)
    ]


def assert_schema_valid(text: str | None) -> None:
    """Minimal validator for SCHEMA (jsonschema is not a dependency)."""
    assert text is not None
    data = json.loads(text)
    assert isinstance(data, dict)
    assert set(data) == {"commentary", "difficulty", "correct"}
    assert isinstance(data["commentary"], str)
    assert isinstance(data["difficulty"], int) and not isinstance(data["difficulty"], bool)
    assert isinstance(data["correct"], bool)


def batch_provider(emu: Emulator, name: str, **kw: Any) -> BatchProvider:
    if name == "openai":
        return OpenAIBatch(KEY, emu.openai_base_url, 10.0, **kw)
    if name == "gemini":
        return GeminiBatch(KEY, emu.gemini_base_url, 10.0, **kw)
    return MistralBatch(KEY, emu.mistral_base_url, 10.0, **kw)


def chat_url(emu: Emulator, name: str) -> str:
    return {
        "openai": emu.openai_base_url,
        "gemini": emu.gemini_base_url,
        "mistral": emu.mistral_base_url,
    }.get(name) or emu.compat_base_url(name)


async def wait_terminal(p: BatchProvider, batch_id: str, timeout: float = 20.0) -> BatchStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await p.status(batch_id)
        assert status.state is not BatchState.UNKNOWN, status.raw_state
        if status.state.terminal:
            return status
        assert loop.time() < deadline, f"batch still {status.raw_state}"
        await asyncio.sleep(0.05)


async def collect(p: BatchProvider, status: BatchStatus) -> list[ResultLine]:
    return [line async for line in p.results(status)]


# --- batch round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
async def test_batch_round_trip(emulator: Emulator, name: str) -> None:
    emulator.configure(state_seconds=0.05)
    p = batch_provider(emulator, name)
    reqs = requests(20)
    submitted = await p.submit(MODELS[name], reqs, intent_id=f"intent-{name}-1")
    assert submitted.request_count == 20
    assert submitted.batch_id

    status = await wait_terminal(p, submitted.batch_id)
    assert status.state is BatchState.COMPLETED
    lines = await collect(p, status)

    counts = Counter(line.custom_id for line in lines)
    assert counts == Counter(r.custom_id for r in reqs)  # each exactly once
    for line in lines:
        assert line.ok, line
        assert_schema_valid(line.text)
        assert line.input_tokens > 0 and line.output_tokens > 0
        assert line.model_version

    found = await p.find_by_intent(f"intent-{name}-1")
    assert found is not None and found.batch_id == submitted.batch_id
    assert await p.find_by_intent("intent-nobody") is None


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
async def test_batch_line_failures_come_back_classified(emulator: Emulator, name: str) -> None:
    emulator.configure(state_seconds=0, line_failure_rate=0.3, line_failure_status=500, seed=3)
    p = batch_provider(emulator, name)
    reqs = requests(20)
    submitted = await p.submit(MODELS[name], reqs, intent_id=f"intent-{name}-fail")
    status = await wait_terminal(p, submitted.batch_id)
    lines = await collect(p, status)
    assert Counter(line.custom_id for line in lines) == Counter(r.custom_id for r in reqs)
    failed = [line for line in lines if not line.ok]
    assert failed, "line_failure_rate=0.3 over 20 lines should fail some"
    for line in failed:
        assert line.error_kind is ErrorKind.RETRYABLE, line
    for line in lines:
        if line.ok:
            assert_schema_valid(line.text)


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
async def test_batch_malformed_lines_are_reported_not_lost(emulator: Emulator, name: str) -> None:
    emulator.configure(state_seconds=0, malformed_line_rate=0.3, seed=5)
    unreadable: list[tuple[bytes, str]] = []
    p = batch_provider(emulator, name, on_malformed=lambda raw, why: unreadable.append((raw, why)))
    reqs = requests(20)
    submitted = await p.submit(MODELS[name], reqs, intent_id=f"intent-{name}-malformed")
    lines = await collect(p, await wait_terminal(p, submitted.batch_id))
    counts = Counter(line.custom_id for line in lines)
    assert all(c == 1 for c in counts.values())
    assert len(lines) + len(unreadable) == 20
    bad = [line for line in lines if line.error_code == "malformed_line"]
    assert bad or unreadable
    assert all(not line.ok for line in bad)


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("failed", BatchState.FAILED),
        ("expired", BatchState.EXPIRED),
        ("cancelled", BatchState.CANCELLED),
    ],
)
async def test_batch_outcomes_map_to_states(
    emulator: Emulator, name: str, outcome: str, state: BatchState
) -> None:
    emulator.configure(state_seconds=0, batch_outcome=outcome)
    p = batch_provider(emulator, name)
    submitted = await p.submit(MODELS[name], requests(3), intent_id=f"intent-{outcome}")
    status = await wait_terminal(p, submitted.batch_id)
    assert status.state is state
    # whatever partial results exist must still stream without error
    lines = await collect(p, status)
    assert len({line.custom_id for line in lines}) == len(lines)


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
async def test_cancel(emulator: Emulator, name: str) -> None:
    emulator.configure(state_seconds=30)
    p = batch_provider(emulator, name)
    submitted = await p.submit(MODELS[name], requests(3), intent_id=f"intent-{name}-cancel")
    await p.cancel(submitted.batch_id)
    status = await p.status(submitted.batch_id)
    assert status.state in (BatchState.IN_FLIGHT, BatchState.CANCELLED), status.raw_state


# --- faults surface as classified ProviderErrors --------------------------------------------


@pytest.mark.parametrize("name", BATCH_PROVIDERS)
@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("quota", ErrorKind.QUOTA),
        ("server", ErrorKind.RETRYABLE),
        ("rate_limit", ErrorKind.RETRYABLE),
        ("auth", ErrorKind.AUTH),
    ],
)
async def test_batch_faults(emulator: Emulator, name: str, fault: str, kind: ErrorKind) -> None:
    # count=None: fire on every attempt, so the OpenAI SDK's own retries cannot hide it.
    emulator.configure(
        http_faults=[{"provider": name, "kind": fault, "count": None, "retry_after": 0.01}]
    )
    kw: dict[str, Any] = {"max_retries": 0} if name == "openai" else {}
    p = batch_provider(emulator, name, **kw)
    with pytest.raises(ProviderError) as info:
        await p.submit(MODELS[name], requests(2), intent_id="intent-fault")
    err = info.value
    assert err.kind is kind, str(err)
    assert err.provider == name
    assert isinstance(err.__cause__, Exception)  # translated at the boundary, `from exc`
    if fault == "rate_limit":
        assert err.retry_after is not None


async def test_status_of_unknown_batch_is_invalid_request(emulator: Emulator) -> None:
    p = batch_provider(emulator, "openai")
    with pytest.raises(ProviderError) as info:
        await p.status("batch_doesnotexist")
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert info.value.status_code == 404


# --- realtime chat -----------------------------------------------------------------------

CHAT_PROVIDERS = ("openai", "openrouter", "perplexity", "deepseek", "ollama", "gemini", "mistral")


@pytest.mark.parametrize("name", CHAT_PROVIDERS)
async def test_instant_chat(emulator: Emulator, name: str) -> None:
    chat = build_chat_provider(name, KEY, chat_url(emulator, name))
    req = requests(1, prefix=name)[0]
    line = await chat.complete(MODELS[name], req)
    assert line.custom_id == req.custom_id
    assert line.ok, line
    if OPENAI_COMPATIBLE.get(name, (None, "json_schema"))[1] == "json_object":
        # json_object mode: the schema only travels in the prompt, so the server promises a
        # JSON object, not schema validity (the caller validates).
        assert isinstance(json.loads(line.text or ""), dict)
    else:
        assert_schema_valid(line.text)
    assert line.input_tokens > 0 and line.output_tokens > 0


@pytest.mark.parametrize("name", ("openai", "perplexity", "gemini", "mistral"))
@pytest.mark.parametrize(
    ("fault", "kind"),
    [("quota", ErrorKind.QUOTA), ("server", ErrorKind.RETRYABLE), ("auth", ErrorKind.AUTH)],
)
async def test_instant_chat_faults(
    emulator: Emulator, name: str, fault: str, kind: ErrorKind
) -> None:
    emulator.configure(
        http_faults=[{"provider": name, "kind": fault, "count": None, "retry_after": 0.01}]
    )
    chat = build_chat_provider(name, KEY, chat_url(emulator, name), timeout=10.0)
    with pytest.raises(ProviderError) as info:
        await chat.complete(MODELS[name], requests(1)[0])
    assert info.value.kind is kind, str(info.value)


async def test_instant_chat_timeout_is_retryable(emulator: Emulator) -> None:
    emulator.configure(hang_seconds=2.0)
    chat = build_chat_provider("mistral", KEY, emulator.mistral_base_url, timeout=0.3)
    with pytest.raises(ProviderError) as info:
        await chat.complete(MODELS["mistral"], requests(1)[0])
    assert info.value.kind is ErrorKind.RETRYABLE


async def test_openai_sdk_retry_resends_the_whole_upload(emulator: Emulator) -> None:
    """The upload streams from an open temp file; an SDK retry after a 500 must rewind it."""
    emulator.configure(
        state_seconds=0,
        http_faults=[{"provider": "openai", "kind": "server", "count": 1, "path": "/files"}],
    )
    p = batch_provider(emulator, "openai", max_retries=2)
    submitted = await p.submit(MODELS["openai"], requests(20), intent_id="intent-retry")
    lines = await collect(p, await wait_terminal(p, submitted.batch_id))
    assert len(lines) == 20 and all(line.ok for line in lines)
