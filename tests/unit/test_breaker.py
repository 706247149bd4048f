"""The circuit breaker's pure state machine: transitions, blocking, probes, which errors count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tests.fixtures.settings import configure
from worker.errors import ErrorKind
from worker.ops.breaker import (
    BreakerConfig,
    Health,
    State,
    after_failure,
    after_failures,
    after_success,
    counts_toward_breaker,
    is_blocked,
    probe_due,
    take_probe,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CFG = BreakerConfig(failure_threshold=3, cooldown_seconds=60, probe_timeout_seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("kind", "counts"),
    [
        (ErrorKind.RETRYABLE, True),
        (ErrorKind.UNKNOWN, True),
        (ErrorKind.QUOTA, False),
        (ErrorKind.AUTH, False),
        (ErrorKind.INVALID_REQUEST, False),
        (ErrorKind.CONTENT_REFUSED, False),
        (ErrorKind.CONTEXT_TOO_LONG, False),
    ],
)
def test_only_provider_health_failures_count(kind: ErrorKind, counts: bool) -> None:
    assert counts_toward_breaker(kind) is counts


def test_every_error_kind_has_a_decision() -> None:
    decided = {k for k in ErrorKind if counts_toward_breaker(k)}
    assert decided == {ErrorKind.RETRYABLE, ErrorKind.UNKNOWN}


def test_opens_after_threshold_consecutive_failures() -> None:
    h = Health()
    h = after_failure(h, at(0), CFG)
    assert (h.state, h.consecutive_failures) == (State.CLOSED, 1)
    h = after_failure(h, at(1), CFG)
    assert (h.state, h.consecutive_failures) == (State.CLOSED, 2)
    h = after_failure(h, at(2), CFG)
    assert (h.state, h.consecutive_failures, h.opened_at) == (State.OPEN, 3, at(2))


def test_success_resets_the_count() -> None:
    h = after_failure(after_failure(Health(), at(0), CFG), at(1), CFG)
    h = after_success(h)
    assert h == Health()
    h = after_failure(after_failure(h, at(2), CFG), at(3), CFG)
    assert h.state is State.CLOSED  # 2 since the success, threshold 3


def test_failures_while_open_keep_the_original_cooldown() -> None:
    h = Health(State.OPEN, 3, opened_at=at(0))
    h2 = after_failure(h, at(30), CFG)
    assert (h2.state, h2.opened_at, h2.consecutive_failures) == (State.OPEN, at(0), 4)


@pytest.mark.parametrize(
    ("health", "seconds", "blocked", "due"),
    [
        (Health(), 0, False, False),
        (Health(State.CLOSED, 2), 0, False, False),
        (Health(State.OPEN, 3, opened_at=at(0)), 0, True, False),
        (Health(State.OPEN, 3, opened_at=at(0)), 59.9, True, False),
        (Health(State.OPEN, 3, opened_at=at(0)), 60, False, True),
        (Health(State.HALF_OPEN, 3, at(0), probe_started_at=at(60)), 61, True, False),
        (Health(State.HALF_OPEN, 3, at(0), probe_started_at=at(60)), 89.9, True, False),
        # a probe nobody resolved within the probe timeout is handed out again
        (Health(State.HALF_OPEN, 3, at(0), probe_started_at=at(60)), 90, False, True),
        (Health(State.HALF_OPEN, 3, at(0), probe_started_at=None), 61, False, True),
    ],
)
def test_blocking_and_probe_due(health: Health, seconds: float, blocked: bool, due: bool) -> None:
    assert is_blocked(health, at(seconds), CFG) is blocked
    assert probe_due(health, at(seconds), CFG) is due


def test_one_probe_after_cooldown_then_closed_on_success() -> None:
    h = Health(State.OPEN, 3, opened_at=at(0))
    assert take_probe(h, at(10), CFG) is None
    probing = take_probe(h, at(60), CFG)
    assert probing is not None
    assert (probing.state, probing.probe_started_at) == (State.HALF_OPEN, at(60))
    # the probe is taken: a second caller gets nothing and is blocked
    assert take_probe(probing, at(61), CFG) is None
    assert is_blocked(probing, at(61), CFG)
    assert after_success(probing) == Health()


def test_failed_probe_reopens_with_a_fresh_cooldown() -> None:
    probing = Health(State.HALF_OPEN, 3, opened_at=at(0), probe_started_at=at(60))
    h = after_failure(probing, at(65), CFG)
    assert (h.state, h.opened_at, h.probe_started_at) == (State.OPEN, at(65), None)
    assert is_blocked(h, at(124), CFG)
    assert probe_due(h, at(125), CFG)


def test_threshold_one_opens_on_first_failure() -> None:
    cfg = BreakerConfig(failure_threshold=1, cooldown_seconds=5)
    assert after_failure(Health(), at(0), cfg).state is State.OPEN


def test_config_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        BREAKER_FAILURE_THRESHOLD="7",
        BREAKER_COOLDOWN_SECONDS="2.5",
        BREAKER_PROBE_TIMEOUT_SECONDS="9",
    )
    assert BreakerConfig.current() == BreakerConfig(7, 2.5, 9)


def test_an_invalid_breaker_setting_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent fallback to the default: the worker stops at start and says which."""
    for name, bad in (("BREAKER_FAILURE_THRESHOLD", "zero"), ("BREAKER_COOLDOWN_SECONDS", "-1")):
        with monkeypatch.context() as mp:
            configure(mp, **{name: bad})
            with pytest.raises(ValidationError) as err:
                BreakerConfig.current()
            assert err.value.errors()[0]["loc"] == (name.lower(),)


def test_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BREAKER_FAILURE_THRESHOLD",
        "BREAKER_COOLDOWN_SECONDS",
        "BREAKER_PROBE_TIMEOUT_SECONDS",
    ):
        monkeypatch.setenv(name, "")  # empty means unset
    configure(monkeypatch)
    cfg = BreakerConfig.current()
    assert (cfg.failure_threshold, cfg.cooldown_seconds, cfg.probe_timeout_seconds) == (
        5,
        60.0,
        60.0,
    )


def test_failed_calls_reported_together_each_count_and_open_at_the_threshold() -> None:
    cfg = BreakerConfig(failure_threshold=5, cooldown_seconds=60, probe_timeout_seconds=30)
    four = after_failures(Health(), at(0), cfg, 4)
    assert (four.state, four.consecutive_failures) == (State.CLOSED, 4)
    fifth = after_failures(four, at(1), cfg, 1)
    assert (fifth.state, fifth.consecutive_failures, fifth.opened_at) == (State.OPEN, 5, at(1))
    ten = after_failures(Health(), at(0), cfg, 10)
    assert (ten.state, ten.consecutive_failures, ten.opened_at) == (State.OPEN, 10, at(0))
    # a failed probe plus stragglers: open again once, fresh cooldown
    probing = Health(State.HALF_OPEN, 5, opened_at=at(0), probe_started_at=at(60))
    again = after_failures(probing, at(61), cfg, 3)
    assert (again.state, again.consecutive_failures, again.opened_at) == (State.OPEN, 8, at(61))
