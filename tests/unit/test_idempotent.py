"""Create-once logic (worker.providers.idempotent) and the limit named in a refusal."""

from __future__ import annotations

import asyncio

import pytest

from worker.commentary.budget import named_limit
from worker.errors import ErrorKind, ProviderError
from worker.providers import idempotent


def _err(status: int | None, kind: ErrorKind = ErrorKind.RETRYABLE) -> ProviderError:
    return ProviderError("x", kind=kind, provider="openai", status_code=status)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_err(None), True),  # timeout / dropped connection: no answer
        (_err(500), True),
        (_err(503), True),
        (_err(408), True),
        (_err(429), False),  # a 429 answer: nothing was created
        (_err(400, ErrorKind.INVALID_REQUEST), False),
        (_err(None, ErrorKind.AUTH), False),
        (TimeoutError(), True),
        (ValueError("x"), False),
    ],
)
def test_which_failures_are_ambiguous(exc: BaseException, expected: bool) -> None:
    assert idempotent.ambiguous(exc) is expected


def test_an_ambiguous_failure_is_looked_up_before_calling_again() -> None:
    calls: list[str] = []

    async def create() -> str:
        calls.append("create")
        raise _err(500)

    async def lookup() -> str | None:
        calls.append("lookup")
        return "batch-1"

    assert asyncio.run(idempotent.once(create, lookup)) == "batch-1"
    assert calls == ["create", "lookup"]


def test_not_found_after_an_ambiguous_failure_creates_again() -> None:
    calls: list[str] = []

    async def create() -> str:
        calls.append("create")
        if len(calls) == 1:
            raise _err(None)
        return "batch-2"

    async def lookup() -> str | None:
        calls.append("lookup")
        return None

    assert asyncio.run(idempotent.once(create, lookup)) == "batch-2"
    assert calls == ["create", "lookup", "create"]


def test_a_definite_refusal_is_raised_without_lookup_or_retry() -> None:
    calls: list[str] = []

    async def create() -> str:
        calls.append("create")
        raise _err(429)

    async def lookup() -> str | None:
        calls.append("lookup")
        return None

    with pytest.raises(ProviderError):
        asyncio.run(idempotent.once(create, lookup))
    assert calls == ["create"]


def test_a_failing_lookup_raises_the_calls_error() -> None:
    first = _err(502)

    async def create() -> str:
        raise first

    async def lookup() -> str | None:
        raise _err(500)

    with pytest.raises(ProviderError) as info:
        asyncio.run(idempotent.once(create, lookup))
    assert info.value is first


def test_the_limit_a_refusal_names() -> None:
    msg = (
        "Enqueued token limit reached for gpt-4o-mini in organization org-x. "
        "Limit: 2,000,000 enqueued tokens. Please try again once some in_progress batches "
        "have been completed."
    )
    assert named_limit(msg) == 2_000_000
    assert named_limit("token_limit_exceeded") is None
    assert named_limit(None) is None
