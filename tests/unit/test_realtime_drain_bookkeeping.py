"""The drain's in-memory bookkeeping: how many jobs a lane may hold (concurrency plus a small
prefetch), when a finished call is worth a claim round trip, and how often provider health
is told about successes."""

from __future__ import annotations

from typing import Any, cast

import pytest

from worker.errors import ErrorKind, ProviderError
from worker.realtime import drain as drain_mod
from worker.realtime.drain import Drain, claim_prefetch, prefetch
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
    from worker.ops import resilience

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


def test_claim_prefetch_grows_when_calls_are_short_next_to_a_claim() -> None:
    # unknown call time: a tenth of the concurrency, as before any call finished
    assert claim_prefetch(10, None, 0.002, 2000) == prefetch(10) == 1
    # slow calls (200 ms) next to a 2 ms claim: the tenth is more than enough
    assert claim_prefetch(100, 0.2, 0.002, 2000) == 10
    # calls no shorter than a claim round trip: the tenth, as before
    assert claim_prefetch(100, 0.004, 0.002, 2000) == 10
    assert claim_prefetch(100, 0.002, 0.002, 2000) == 10
    # fast calls: the jobs 10 slots finish in two claim round trips (0.1 ms per call)
    assert claim_prefetch(10, 0.0001, 0.002, 2000) == 400
    # never more than max_in_flight held by the lane, even for instant calls
    assert claim_prefetch(10, 0.0, 0.002, 2000) == 1990
    assert claim_prefetch(10, 1e-9, 0.5, 300) == 290


def test_a_prefetched_job_waits_about_two_claim_round_trips_at_most() -> None:
    # The fairness bound: a job held beyond the concurrency waits for a slot no longer than
    # the larger of a tenth of a call and PREFETCH_ROUND_TRIPS claims (plus one call for the
    # rounding up), whatever the call time - so a busy worker keeps little from the others.
    claim = 0.003
    for conc in (1, 10, 50, 2000):
        for call in (1e-5, 1e-4, 1e-3, 0.01, 0.2, 5.0):
            n = claim_prefetch(conc, call, claim, 100_000)
            wait = n * call / conc
            bound = max(prefetch(conc) * call / conc, drain_mod.PREFETCH_ROUND_TRIPS * claim)
            assert wait <= bound + call, (conc, call, n)


def test_measured_fast_calls_enlarge_the_lane_and_its_refill_batch() -> None:
    d = make_drain(provider_concurrency={"mock": 10}, max_in_flight=2000)
    assert d.lane_capacity("mock") == 11
    for _ in range(50):
        d.note_call("mock", 0.0001)
        d.note_claim(0.002)
    assert d.lane_capacity("mock") == 10 + 400
    d.lane_busy["mock"] = 410 - 199  # 199 free: less than half the prefetch
    assert not d.refill_due("mock")
    d.lane_busy["mock"] = 410 - 200
    assert d.refill_due("mock")
    # calls that slow down shrink it again
    for _ in range(50):
        d.note_call("mock", 0.5)
    assert d.lane_capacity("mock") == 11
    # other lanes keep their own measurements
    assert d.lane_capacity("openai") == 55


async def test_the_breaker_hears_each_failed_call_after_the_last_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.ops import resilience

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


def test_claims_wait_for_room_for_a_full_claim_while_an_embeddings_request_runs() -> None:
    d = make_drain(claim_batch=500, max_in_flight=2000)
    d.unwritten = 1950  # 50 free: the small first group was written, 1,950 texts in flight
    assert not d._hold_for_groups(d.free_total())  # nothing in flight: claim what fits
    d.lane_busy["openai:embed"] = 450
    assert d._hold_for_groups(d.free_total())  # a claim of 50 would be a request of 50
    d.unwritten = 1500
    assert not d._hold_for_groups(d.free_total())  # a full claim fits
    d.lane_busy["openai:embed"] = 0
    d.lane_busy["openai"] = 40  # chat lanes never wait for it
    d.unwritten = 1990
    assert not d._hold_for_groups(d.free_total())


def test_a_lane_is_idle_only_after_a_quiet_second() -> None:
    import time

    d = make_drain()
    assert d.lane_idle("openai:embed")  # never used: the first request is a small one
    d.lane_busy["openai:embed"] = 500
    assert not d.lane_idle("openai:embed")
    d.lane_busy["openai:embed"] = 0
    d.lane_done_at["openai:embed"] = time.monotonic()  # a wave just ended: not idle
    assert not d.lane_idle("openai:embed")
    d.lane_done_at["openai:embed"] = time.monotonic() - drain_mod.LANE_IDLE_SECONDS - 0.1
    assert d.lane_idle("openai:embed")
