"""Circuit breaker per provider, state in Postgres (``provider_health``) so every worker
process shares it.

    closed --N consecutive counted failures--> open --cooldown--> half_open (one probe)
    half_open --probe succeeds--> closed         half_open --any failure--> open (new cooldown)

Only failures that say something about the provider count (``RETRYABLE`` / ``UNKNOWN``:
rate limits, 5xx, timeouts, connection errors). Quota and auth stop the provider instead
(:mod:`worker.ops.resilience`); invalid requests, refused content and too-long inputs are the
request's fault and never count.

The transitions are pure functions of (state, database clock) and tested without I/O; the
SQL functions below apply them under a row lock (failure) or with one atomic statement
(probe hand-out, success).

Tuning (fields of :class:`worker.config.Settings`, see :meth:`BreakerConfig.current`):

``BREAKER_FAILURE_THRESHOLD``  consecutive counted failures that open the breaker (5)
``BREAKER_COOLDOWN_SECONDS``   how long an open breaker blocks before one probe (60)
``BREAKER_PROBE_TIMEOUT_SECONDS``  a probe not resolved within this is handed out again (60)

A probe is "resolved" by the next success or counted failure of that provider. A caller
that takes a probe and then makes no call leaves it to expire after the probe timeout,
so callers should name the providers they are about to call
(``resilience.blocked_providers(conn, providers=...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.config import Settings, get_settings
from worker.errors import ErrorKind
from worker.queries import q
from worker.redact import redact

log = logging.getLogger(__name__)


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


COUNTED_KINDS = frozenset({ErrorKind.RETRYABLE, ErrorKind.UNKNOWN})


def counts_toward_breaker(kind: ErrorKind) -> bool:
    """Whether a failure of this kind is evidence that the provider is unhealthy."""
    return kind in COUNTED_KINDS


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    cooldown_seconds: float = 60.0
    probe_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.cooldown_seconds < 0 or self.probe_timeout_seconds < 0:
            raise ValueError("cooldown and probe timeout must be >= 0")

    @classmethod
    def current(cls, settings: Settings | None = None) -> BreakerConfig:
        """The configuration of this process (its :class:`~worker.config.Settings`)."""
        s = settings or get_settings()
        return cls(
            failure_threshold=s.breaker_failure_threshold,
            cooldown_seconds=s.breaker_cooldown_seconds,
            probe_timeout_seconds=s.breaker_probe_timeout_seconds,
        )


@dataclass(frozen=True)
class Health:
    """One provider's breaker as stored in ``provider_health``."""

    state: State = State.CLOSED
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    probe_started_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Health:
        return cls(
            state=State(row["state"]),
            consecutive_failures=int(row["consecutive_failures"]),
            opened_at=row["opened_at"],
            probe_started_at=row["probe_started_at"],
        )


def _passed(since: datetime | None, now: datetime, seconds: float) -> bool:
    return since is None or now - since >= timedelta(seconds=seconds)


def probe_due(h: Health, now: datetime, cfg: BreakerConfig) -> bool:
    """Whether the next caller may take the half-open probe (cooldown over, or the previous
    probe was never resolved within the probe timeout)."""
    if h.state is State.OPEN:
        return _passed(h.opened_at, now, cfg.cooldown_seconds)
    if h.state is State.HALF_OPEN:
        return _passed(h.probe_started_at, now, cfg.probe_timeout_seconds)
    return False


def is_blocked(h: Health, now: datetime, cfg: BreakerConfig) -> bool:
    """Whether a caller that does not hold the probe must leave this provider alone."""
    return h.state is not State.CLOSED and not probe_due(h, now, cfg)


def take_probe(h: Health, now: datetime, cfg: BreakerConfig) -> Health | None:
    """The state after handing out the probe, or None when no probe is due."""
    if not probe_due(h, now, cfg):
        return None
    return replace(h, state=State.HALF_OPEN, probe_started_at=now)


def after_failure(h: Health, now: datetime, cfg: BreakerConfig) -> Health:
    """The state after one counted failure."""
    failures = h.consecutive_failures + 1
    if h.state is State.HALF_OPEN:
        # The probe (or a straggler) failed: open again with a fresh cooldown.
        return Health(State.OPEN, failures, opened_at=now, probe_started_at=None)
    if h.state is State.OPEN:
        return replace(h, consecutive_failures=failures)
    if failures >= cfg.failure_threshold:
        return Health(State.OPEN, failures, opened_at=now, probe_started_at=None)
    return replace(h, consecutive_failures=failures)


def after_success(h: Health) -> Health:
    """Any success closes the breaker and forgets the failures."""
    return Health()


# ---------------------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------------------


async def blocked(
    conn: AsyncConnection[Any], cfg: BreakerConfig, providers: Collection[str] | None = None
) -> tuple[set[str], set[str]]:
    """(providers whose breaker keeps this caller out, providers whose probe this caller
    just took). Claims the probe of every due breaker among ``providers`` (all when None);
    one caller wins each, the others see it blocked."""
    cur = await conn.execute(
        q("breaker_claim_probes"),
        {
            "cooldown": float(cfg.cooldown_seconds),
            "probe_timeout": float(cfg.probe_timeout_seconds),
            "all": providers is None,
            "providers": list(providers or ()),
        },
    )
    mine = {r[0] for r in await cur.fetchall()}
    if mine:
        log.info("circuit half-open: probing %s", ", ".join(sorted(mine)))
    dcur = conn.cursor(row_factory=dict_row)
    await dcur.execute(q("breaker_rows"))
    out: set[str] = set()
    for row in await dcur.fetchall():
        if row["provider"] in mine:
            continue
        h = Health.from_row(row)
        # A due probe we did not take is another caller's (or not ours to take).
        if is_blocked(h, row["now"], cfg) or probe_due(h, row["now"], cfg):
            out.add(row["provider"])
    return out, mine


def after_failures(h: Health, now: datetime, cfg: BreakerConfig, count: int) -> Health:
    """The state after ``count`` counted failures (each one a failed call)."""
    for _ in range(max(1, count)):
        h = after_failure(h, now, cfg)
    return h


async def record_failure(
    conn: AsyncConnection[Any],
    provider: str,
    kind: ErrorKind,
    error: str,
    cfg: BreakerConfig,
    count: int = 1,
) -> tuple[Health, bool]:
    """Count ``count`` failed calls; return the new state and whether this opened the
    breaker (closed/half-open -> open). Runs under the row lock of the provider's breaker.
    A caller that saw several calls fail together (a flush of the realtime drain) passes
    them all: the threshold counts calls, not reports."""
    await conn.execute(q("breaker_ensure"), {"provider": provider})
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("breaker_lock"), {"provider": provider})
    row = await cur.fetchone()
    assert row is not None  # ensured above
    before = Health.from_row(row)
    after = after_failures(before, row["now"], cfg, count)
    opened = after.state is State.OPEN and before.state is not State.OPEN
    await conn.execute(
        q("breaker_save_failure"),
        {
            "provider": provider,
            "state": after.state.value,
            "consecutive_failures": after.consecutive_failures,
            "opened_at": after.opened_at,
            "probe_started_at": after.probe_started_at,
            "opened": 1 if opened else 0,
            "error": redact(error)[:2000],
            "kind": kind.value,
        },
    )
    return after, opened


async def return_probe(conn: AsyncConnection[Any], provider: str) -> None:
    """Give back a half-open probe this caller took but will not use (it had no work for
    the provider): the next caller may take it at once instead of after the probe
    timeout."""
    await conn.execute(q("breaker_return_probe"), {"provider": provider})


async def record_success(conn: AsyncConnection[Any], provider: str) -> bool:
    """Close the provider's breaker; True if it was not already closed and clean."""
    cur = await conn.execute(q("breaker_success"), {"provider": provider})
    return (await cur.fetchone()) is not None
