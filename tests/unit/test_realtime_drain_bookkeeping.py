"""The drain's in-memory bookkeeping: how many jobs a lane may hold (concurrency plus a small
prefetch), when a finished call is worth a claim round trip, and how often provider health
is told about successes."""

from __future__ import annotations

from typing import Any, cast

import pytest

from worker.errors import ErrorKind, ProviderError
from worker.realtime import drain as drain_mod
from worker.realtime.drain import Drain, prefetch
from worker.realtime.model import Outcome, RealtimeSettings


def make_drain(**settings: Any) -> Drain:
    return Drain(
        pool=cast(Any, None),
        settings=RealtimeSettings(**settings),
        templates={},
        rt_clients=cast(Any, None),
    )


def test_prefetch_is_a_tenth_of_the_concurrency_and_at_least_one() -> None:
    assert [prefetch(n) for n in (1, 9, 10, 50, 100, 2000)] == [1, 1, 1, 5, 10, 200]


def test_chat_lanes_hold_concurrency_plus_prefetch_embedding_lanes_texts() -> None:
    d = make_drain(provider_concurrency={"openai": 100}, default_concurrency=50)
    assert d.lane_capacity("openai") == 110
    assert d.lane_capacity("gemini") == 55
    # embeddings count texts: concurrency times the provider's group limit, no prefetch
    assert d.lane_capacity("openai:embed") == 100 * 2048
    assert d.lane_capacity("gemini:embed") == 50 * 100


def test_a_finished_call_claims_again_once_half_the_prefetch_is_free() -> None:
    d = make_drain(provider_concurrency={"openai": 100, "slow": 4})
    d.lane_busy["openai"] = 110  # 100 running, 10 waiting for a slot
    assert not d.refill_due("openai")
    d.lane_busy["openai"] = 106
    assert not d.refill_due("openai")
    d.lane_busy["openai"] = 105
    assert d.refill_due("openai")
    # prefetch 1: every finished call refills at once
    d.lane_busy["slow"] = 4
    assert d.refill_due("slow")
    d.lane_busy["openai:embed"] = 5
    assert d.refill_due("openai:embed")


def _ok(provider: str = "openai") -> Outcome:
    return Outcome(job_id=1, status="completed", provider=provider, model="m")


def _failed(provider: str = "openai") -> Outcome:
    exc = ProviderError("boom", kind=ErrorKind.RETRYABLE, provider=provider, status_code=500)
    return Outcome(
        job_id=2,
        status="retrying",
        provider=provider,
        model="m",
        error=str(exc),
        error_kind=exc.kind.value,
        exc=exc,
    )


async def test_success_is_reported_once_a_second_but_at_once_after_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import resilience

    calls: list[tuple[str, str]] = []

    async def success(conn: Any, provider: str) -> None:
        calls.append(("success", provider))

    async def error(conn: Any, provider: str, exc: BaseException, count: int = 1) -> None:
        calls.append(("error", provider))

    async def record(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(resilience, "on_provider_success", success)
    monkeypatch.setattr(resilience, "on_provider_error", error)
    monkeypatch.setattr(drain_mod, "record_error", record)
    now = [100.0]
    monkeypatch.setattr(drain_mod.time, "monotonic", lambda: now[0])
    d = make_drain()
    conn = cast(Any, None)

    await d._after_write(conn, [_ok(), _ok("mistral")])
    await d._after_write(conn, [_ok()])  # same second: not told again
    assert calls == [("success", "mistral"), ("success", "openai")]
    now[0] += 1.5
    await d._after_write(conn, [_ok()])
    assert calls[-1] == ("success", "openai") and len(calls) == 3
    await d._after_write(conn, [_failed()])
    await d._after_write(conn, [_ok()])  # right after a failure: told at once
    assert calls[3:] == [("error", "openai"), ("success", "openai")]
    await d._after_write(conn, [_ok()])  # and then once a second again
    assert len(calls) == 5


async def test_the_breaker_hears_each_failed_call_after_the_last_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import resilience

    counts: list[int] = []

    async def error(conn: Any, provider: str, exc: BaseException, count: int = 1) -> None:
        counts.append(count)

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(resilience, "on_provider_success", nothing)
    monkeypatch.setattr(resilience, "on_provider_error", error)
    monkeypatch.setattr(drain_mod, "record_error", nothing)
    d = make_drain()
    conn = cast(Any, None)
    # three chat calls failed: three counted (the old drain told the breaker once)
    await d._after_write(conn, [_failed(), _failed(), _failed()])
    assert counts == [3]
    # failures before a success in the same flush are not consecutive: not counted
    await d._after_write(conn, [_failed(), _ok(), _failed()])
    assert counts == [3, 1]
    await d._after_write(conn, [_failed(), _ok()])
    assert counts == [3, 1]
    # one failed call of an embeddings group fails all its jobs with one exception: one call
    group_exc = ProviderError("boom", kind=ErrorKind.RETRYABLE, provider="openai", status_code=500)
    group = [
        Outcome(
            job_id=i,
            status="retrying",
            provider="openai",
            model="m",
            error=str(group_exc),
            error_kind=group_exc.kind.value,
            exc=group_exc,
        )
        for i in range(5)
    ]
    await d._after_write(conn, group)
    assert counts == [3, 1, 1]
