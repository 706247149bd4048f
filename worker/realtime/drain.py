"""drain: claim due ai_jobs and run them at provider speed.

One ``drain`` Procrastinate job (queue ``realtime``, queueing lock ``drain``) serves any
number of rows - never one Procrastinate job per row, whose one-job-per-round-trip ceiling
would cap throughput. Inside one run the drain is a pipeline, not a sequence of batches:

* **claim**: whenever slots are free, one statement claims up to ``claim_batch`` due jobs
  (priority, then age; ``SKIP LOCKED``), at most the free slots of each *lane* (a provider,
  or a provider's embeddings), so one slow or saturated provider never holds slots another
  could use. Rate limits are admitted in Postgres right after the claim; what does not fit
  goes back to waiting with ``next_attempt_at``. A claim is one round trip: the loop keeps
  its pool connection between claims (:meth:`Drain._loop_conn`), and a drain with nothing
  in flight, woken by an insert, claims with ``rt_claim_fast`` as many rows as no lane can
  exceed (the per-lane ranking left out; same rows, see worker/sql/realtime.sql).
* **run**: one asyncio task per chat-type job and per embeddings group, under a semaphore per
  provider (``provider_concurrency``, default 50; mock 2000). A chat lane may hold a tenth
  more jobs than that (:data:`PREFETCH_SHARE`), or, when its measured calls are short next
  to a claim round trip, the jobs it finishes in two round trips (:func:`claim_prefetch`),
  waiting in memory on the semaphore, so a finished call's slot is taken by the next job at
  once rather than after a claim round trip; the claim refills the lane once half of that
  prefetch is used (fewer, larger claims) - no batch waits for its slowest member.
* **write**: outcomes are collected by a writer that flushes everything finished so far in one
  statement (results, retries, failures, session messages), a group commit: under load a
  flush carries hundreds of rows, when quiet a single one, without any fixed delay. (No
  hold for more rows when calls are fast: with claims sized by :func:`claim_prefetch`,
  20,000 mock jobs at concurrency 10 were written in 30-47 flushes of 400-660 rows; a
  hold would only delay answers.) A flush
  wakes the claim loop when it may have made work claimable: a session's next question, or
  room under ``max_in_flight``.
* **listen**: the run LISTENs on ``worker_ai_jobs`` (sent by the insert trigger), so a row
  inserted while it runs - or lingers ``linger_seconds`` after the queue ran dry - is claimed
  within about a millisecond instead of waiting for Procrastinate to fetch the next drain job.

When nothing is due the run ends after lingering; if jobs wait for a later time (retries,
rate limits), it first defers a drain scheduled at the earliest ``next_attempt_at``
(queueing lock ``drain@<epoch second>``, so it cannot be swallowed by the waiting
immediate ``drain`` job's lock).

**Shutdown** (SIGTERM, :mod:`worker.realtime.shutdown`): the run stops claiming at once,
gives its claimed-but-unstarted jobs (those waiting for a provider slot) back to
``pending``/``retrying`` in the next flush, lets the calls in flight finish until the
deadline (the grace period ``SHUTDOWN_GRACEFUL_SECONDS`` minus a margin) and writes their
answers, then cancels the calls still running and releases their jobs (no attempt used).
Before it returns it releases any row it still holds, so a clean exit leaves nothing
``processing``. The run's report counts ``released_unstarted`` and ``released_in_flight``.

**Joining**: a run that leaves due work unclaimed after a claim defers one more ``drain``
job (queueing lock ``drain``), which an idle worker process picks up; that run does the
same, so a bulk insert is worked by every idle process within a few claims instead of by
one process until the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from worker.config import get_settings
from worker.database import resolve_database_url
from worker.errors import ProviderError
from worker.ops import breaker, resilience
from worker.ops.error_log import record_error
from worker.providers.routing import Providers, providers, reset_providers
from worker.queries import q
from worker.queue import wakeups
from worker.realtime import shutdown
from worker.realtime.claim import claim, first_rows_limit, load_settings, load_templates
from worker.realtime.embeddings import (
    group_jobs,
    group_limit,
    group_token_estimate,
    run_group,
    split_first_groups,
)
from worker.realtime.execute import invalid_job_outcome, outcome_for_error, run_chat
from worker.realtime.model import KIND_EMBEDDING, Job, Outcome, RealtimeSettings, Template
from worker.realtime.rate_limits import RateLimiter
from worker.realtime.storable import storable, unstorable
from worker.realtime.vectors import Float4Array, Float4ArrayBinaryDumper, flatten
from worker.redact import redact_opt

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = wakeups.DRAIN_CHANNEL
BLOCKED_CACHE_SECONDS = 1.0
#: When due rows exist but none could be claimed (locked by another worker, or waiting for
#: an earlier job of their session held elsewhere), look again after this long.
BLOCKED_POLL_SECONDS = 0.1
#: When a run ends with due jobs left while some provider is blocked (stopped, breaker
#: open), the next drain is scheduled this much later at the earliest.
BLOCKED_RESCHEDULE_SECONDS = 5.0
#: A provider that keeps succeeding is reported to the circuit breaker this often at most
#: (the claim's view of blocked providers is cached as long, BLOCKED_CACHE_SECONDS).
SUCCESS_REPORT_SECONDS = 1.0
#: A drain that claimed work looks this often at most whether due jobs are left over, to
#: invite an idle worker process (one EXISTS on the due index).
BACKLOG_CHECK_SECONDS = 1.0

#: Chat jobs a lane may hold claimed beyond its concurrency, as a share of it (at least 1).
#: They wait in memory on the provider's semaphore, so a finished call's slot is refilled at
#: once instead of after a claim round trip (1-3 ms on a busy machine, a few per cent of a
#: 200 ms call, more when many calls end together). Small, so that a saturated worker holds
#: back little work that another worker could start: each waits about one call's duration
#: times this share.
PREFETCH_SHARE = 0.1
#: When a lane's calls are short next to a claim round trip (the mock provider, a fast local
#: model, fast failures), a tenth of its concurrency is claimed again after every few calls:
#: at concurrency 10 and calls of a fraction of a millisecond, 11 jobs per claim round trip,
#: and the lane waits for claims, not for its calls (measured: 1,918 claims for 20,000 mock
#: jobs, tests/bench/peers/FINDINGS.md). So a chat lane's prefetch also covers the jobs it
#: finishes in this many claim round trips, from the measured call and claim times
#: (:func:`claim_prefetch`): a prefetched job then waits at most about this many round trips
#: for a slot, whatever the call time, so another worker is never kept from work for long.
PREFETCH_ROUND_TRIPS = 2.0
#: A lane counts as idle (its next embeddings request is a small one, see
#: :func:`~worker.realtime.embeddings.split_first_groups`) when none of its calls ended for
#: this long: not between the waves of a busy lane, whose requests often all end together.
LANE_IDLE_SECONDS = 1.0
#: Weight of the newest measurement in the moving averages of call and claim times.
TIME_SMOOTHING = 0.2
#: The claim loop keeps its pool connection between claims (:meth:`Drain._loop_conn`), so a
#: wake-up costs one round trip (the claim), not two: the worker's pool (Procrastinate's)
#: checks every connection it hands out with an empty query, 0.3 ms of the 1.5 ms from
#: insert to call (tests/bench/trace_pickup.py). A connection idle longer than this is
#: given back and a checked one taken instead, as a connection idle that long may have been
#: closed by the server or a pooler.
LOOP_CONN_IDLE_SECONDS = 5.0


def prefetch(concurrency: int) -> int:
    return max(1, int(concurrency * PREFETCH_SHARE))


def claim_prefetch(
    concurrency: int, call_seconds: float | None, claim_seconds: float, max_in_flight: int
) -> int:
    """Chat jobs a lane may hold beyond its concurrency: :func:`prefetch`, or, when calls are
    short, the jobs its ``concurrency`` slots finish in :data:`PREFETCH_ROUND_TRIPS` claim
    round trips of ``claim_seconds`` at ``call_seconds`` per call - bounded so that the lane
    never holds more than ``max_in_flight`` jobs. Unknown call time, or calls no shorter
    than a claim: :func:`prefetch` (HTTP calls at concurrency 100 ran no faster with more
    held, tests/bench/bench_realtime.py)."""
    base = prefetch(concurrency)
    if call_seconds is None or call_seconds >= claim_seconds:
        return base  # calls outlast a claim: the tenth refills in time (as measured before)
    per_round = concurrency * PREFETCH_ROUND_TRIPS * claim_seconds / max(call_seconds, 1e-6)
    return max(base, min(math.ceil(per_round), max_in_flight - concurrency))


def _suspect(conn: AsyncConnection[Any]) -> bool:
    """Whether an idle held connection may be gone: closed, broken, or with input waiting
    (an idle connection that does not LISTEN is sent nothing unless the server closes it or
    has a notice): then it goes back to the pool, whose check sorts it out. One
    ``select`` with no wait, no round trip."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def clients() -> Providers:
    """The process's provider adapters, the same ones the commentary lane uses
    (:func:`worker.providers.routing.providers`): one set of SDK clients and HTTP pools per
    process, kept across drain runs so they stay warm."""
    return providers()


def reset_clients() -> None:
    """Forget cached clients (tests, or after the environment changed)."""
    reset_providers()


class Drain:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: RealtimeSettings,
        templates: dict[str, Template],
        rt_clients: Providers,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.templates = templates
        self.clients = rt_clients
        self.owner = f"drain:{os.getpid()}:{uuid.uuid4().hex[:10]}"
        self.timeout = get_settings().provider_timeout_seconds
        self.limiter = RateLimiter()
        self.sems: dict[str, asyncio.Semaphore] = {}
        self.lane_busy: dict[str, int] = defaultdict(int)  # jobs claimed, call not finished
        self.unwritten = 0  # jobs claimed, outcome not yet written
        self.results: list[Outcome] = []
        self.results_ready = asyncio.Event()
        self.written = asyncio.Event()  # a flush finished
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.blocked: set[str] = set()
        self._blocked_at = -1e9
        self.probe_held: dict[int, str] = {}  # job id -> provider whose probe it is
        self.report: dict[str, int] = defaultdict(int)
        self._estimates: dict[int, int] = {}  # job id -> tokens the rate limiter reserved
        self._success_reported: dict[str, float] = {}  # provider -> monotonic time told
        self._in_session: dict[int, bool] = {}  # claimed jobs of a session, until written
        self.call_seconds: dict[str, float] = {}  # lane -> moving average of a call's time
        self.claim_seconds = 0.002  # moving average of a claim round trip (first guess)
        self._held = False  # the loop waits for room for a full claim (_hold_for_groups)
        self.lane_done_at: dict[str, float] = {}  # lane -> monotonic time a call last ended
        self.stopping = False
        self.deadline: float | None = None  # monotonic; in-flight calls end by then
        self.waiting: set[asyncio.Task[None]] = set()  # claimed, no provider slot yet
        self._joined = False  # deferred one more drain for idle processes
        self._backlog_checked_at = -1e9
        self._conn: AsyncConnection[Any] | None = None  # the claim loop's (_loop_conn)
        self._conn_used_at = 0.0  # monotonic

    # ------------------------------------------------------------------ shutdown

    def stop(self, deadline: float) -> None:
        """Stop claiming; unstarted jobs go back now, in-flight calls get until
        ``deadline`` (see the module docstring)."""
        if self.stopping:
            return
        self.stopping = True
        self.deadline = deadline
        for task in list(self.waiting):
            task.cancel()
        self.wake.set()

    def _released(self, jobs: list[Job], *, in_flight: bool) -> list[Outcome]:
        self.report["released_in_flight" if in_flight else "released_unstarted"] += len(jobs)
        return [
            Outcome(job_id=j.id, status="released", provider=j.provider, model=j.model)
            for j in jobs
        ]

    # ------------------------------------------------------------------ capacity

    def sem(self, provider: str) -> asyncio.Semaphore:
        s = self.sems.get(provider)
        if s is None:
            s = self.sems[provider] = asyncio.Semaphore(self.settings.concurrency(provider))
        return s

    def lane_prefetch(self, lane: str) -> int:
        """Chat jobs ``lane`` may hold beyond its concurrency (:func:`claim_prefetch`)."""
        provider = lane.partition(":")[0]
        return claim_prefetch(
            self.settings.concurrency(provider),
            self.call_seconds.get(lane),
            self.claim_seconds,
            self.settings.max_in_flight,
        )

    def lane_capacity(self, lane: str) -> int:
        """Jobs of ``lane`` that may be claimed and not yet finished: the provider's
        concurrency (texts: times its group limit, for embeddings), plus for chat lanes a
        prefetch of :meth:`lane_prefetch` jobs that wait in memory for a slot."""
        provider, _, embed = lane.partition(":")
        cap = self.settings.concurrency(provider)
        return cap * group_limit(provider) if embed else cap + self.lane_prefetch(lane)

    def refill_due(self, lane: str) -> bool:
        """Whether a claim for ``lane`` is worth a round trip now: at least half its prefetch
        is free (always, for embeddings and lanes whose prefetch is 1)."""
        _, _, embed = lane.partition(":")
        if embed:
            return True
        batch = max(1, self.lane_prefetch(lane) // 2)
        return self.lane_capacity(lane) - self.lane_busy[lane] >= batch

    def lane_idle(self, lane: str) -> bool:
        """Nothing in flight on ``lane`` and nothing finished for :data:`LANE_IDLE_SECONDS`
        (between two claims of a busy lane its calls may all have just finished)."""
        if self.lane_busy.get(lane):
            return False
        return time.monotonic() - self.lane_done_at.get(lane, -1e9) > LANE_IDLE_SECONDS

    def _hold_for_groups(self, free: int) -> bool:
        """Whether to wait for a full claim's worth of room before claiming: while an
        embeddings request is in flight and less than ``claim_batch`` jobs fit under
        ``max_in_flight``. Otherwise every early-written group (the small first one, see
        :func:`split_first_groups`) is refilled by a claim of its own size, and a chain of
        small requests runs beside the full ones (measured: 29 requests for 10,000 texts
        instead of 20). The wait is one request at most, and only with that much claimed."""
        if free >= self.settings.claim_batch:
            return False
        return any(n > 0 for lane, n in self.lane_busy.items() if lane.endswith(":embed"))

    def note_call(self, lane: str, seconds: float) -> None:
        old = self.call_seconds.get(lane)
        self.call_seconds[lane] = seconds if old is None else old + TIME_SMOOTHING * (seconds - old)

    def note_claim(self, seconds: float) -> None:
        self.claim_seconds += TIME_SMOOTHING * (seconds - self.claim_seconds)

    def lane_free(self) -> dict[str, int]:
        return {lane: max(0, self.lane_capacity(lane) - n) for lane, n in self.lane_busy.items()}

    def free_total(self) -> int:
        return max(0, self.settings.max_in_flight - self.unwritten)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> dict[str, Any]:
        listener = asyncio.create_task(self._listen())
        writer = asyncio.create_task(self._writer())
        shutdown.register(self)
        clean = False
        try:
            try:
                await self._loop()
            finally:
                await self._drop_loop_conn()
            await self._finish_tasks()
            while self.unwritten > 0 and not writer.done():
                if self.stopping and self.deadline and time.monotonic() > self.deadline + 2:
                    break  # stopping: what is still unwritten is released below
                self.written.clear()
                self.results_ready.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.written.wait(), 5.0)
            if writer.done() and not writer.cancelled():
                writer.result()  # re-raise a failed write
            clean = not self.stopping
        finally:
            shutdown.unregister(self)
            for t in (listener, writer):
                t.cancel()
            for t in (listener, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for t in list(self.tasks):
                t.cancel()
            if not clean:
                # Stopped, cancelled or failed: nothing this run claimed stays processing.
                await self._release_owned()
        await self._schedule_next()
        return {k: v for k, v in self.report.items() if v}

    async def _finish_tasks(self) -> None:
        """Wait for the running calls; once stopping, only until the deadline, then cancel
        the rest (their jobs are released, see :meth:`_guard`)."""
        while self.tasks:
            timeout = 0.5
            if self.stopping and self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    for t in list(self.tasks):
                        t.cancel()
                    await asyncio.wait(set(self.tasks))
                    return
                timeout = min(timeout, left)
            await asyncio.wait(set(self.tasks), timeout=timeout)

    @contextlib.asynccontextmanager
    async def _loop_conn(self) -> AsyncIterator[AsyncConnection[Any]]:
        """The claim loop's connection: taken from the pool at its first use and kept
        between the loop's rounds until the loop ends (:data:`LOOP_CONN_IDLE_SECONDS`).
        Used only by the loop's own task, one statement after another, never inside a
        transaction left open (the pool's connections are autocommit). When something
        fails on it, it goes back to the pool (which discards a broken connection or
        rolls back an aborted transaction) and the error propagates, as with
        ``pool.connection()``."""
        conn = self._conn
        now = time.monotonic()
        if conn is not None and (
            now - self._conn_used_at > LOOP_CONN_IDLE_SECONDS or _suspect(conn)
        ):
            await self._drop_loop_conn()
            conn = None
        if conn is None:
            conn = self._conn = await self.pool.getconn()
        try:
            yield conn
        except BaseException:
            await self._drop_loop_conn()
            raise
        self._conn_used_at = time.monotonic()
        if self.pool.max_size < 2:  # held, it would starve the writer
            await self._drop_loop_conn()

    async def _drop_loop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.putconn(conn)

    async def _release_owned(self) -> None:
        """Release every row this run still holds (one statement; shielded from a second
        cancellation so a hard stop cannot leave rows for the 600 s lease)."""

        async def release() -> None:
            async with self.pool.connection(timeout=10) as conn:
                cur = await conn.execute(q("rt_release_owner"), {"owner": self.owner})
                self.report["released_at_exit"] += cur.rowcount if cur.rowcount > 0 else 0

        try:
            await asyncio.shield(release())
        except Exception:
            log.exception("could not release the jobs of %s; their lease frees them", self.owner)

    async def _loop(self) -> None:
        """Claim while slots are free and work may be due; otherwise wait for a wake-up (a
        flush freed slots, or a notification), the next due time, or the end of lingering.
        ``wake`` is cleared at the top of each round, so a wake-up that arrives while a claim
        runs is never lost."""
        more = True  # a claim may find work
        idle_since = time.monotonic()
        next_due: datetime | None = None
        while True:
            if self.stopping:
                return
            self.wake.clear()
            now = datetime.now(UTC)
            due_passed = next_due is not None and next_due <= now
            free = self.free_total()
            want = free > 0 and (more or due_passed)
            self._held = want and self._hold_for_groups(free)
            if want and not self._held:
                got, asked = await self._claim_round(min(free, self.settings.claim_batch))
                more = got >= asked
                if got and not self._joined and not self.stopping:
                    await self._invite_if_backlog()
                if got:
                    idle_since = time.monotonic()
                    next_due = None
                elif not self.unwritten:
                    async with self._loop_conn() as conn:
                        next_due = await self._next_due(conn)
                if more and self.free_total() > 0:
                    continue
            timeout: float
            if self.unwritten:
                timeout = 1.0
                if next_due is not None:
                    timeout = max(0.0, min(timeout, (next_due - now).total_seconds()))
            else:
                linger_left = self.settings.linger_seconds - (time.monotonic() - idle_since)
                due_in = (next_due - datetime.now(UTC)).total_seconds() if next_due else None
                if due_in is not None and due_in <= 0:
                    due_in = BLOCKED_POLL_SECONDS  # due but not claimable right now
                if due_in is not None and due_in <= max(linger_left, 0.0):
                    timeout = due_in
                elif linger_left <= 0 and not self.wake.is_set():
                    return
                else:
                    timeout = max(linger_left, 0.0)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the wait in a task
            # of its own, three event-loop turns between a NOTIFY and the claim.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            if self.wake.is_set():
                more = True

    async def _gates(self, conn: AsyncConnection[Any]) -> tuple[set[str], set[str]]:
        """(providers to leave alone, providers whose half-open probe this drain just
        took). A provider whose probe job this drain still runs stays left alone."""
        probes: set[str] = set()
        if time.monotonic() - self._blocked_at > BLOCKED_CACHE_SECONDS:
            try:
                self.blocked, probes = await resilience.provider_gates(conn)
            except Exception:
                log.exception("provider_gates failed; claiming for every provider")
                self.blocked = set()
            self._blocked_at = time.monotonic()
        return self.blocked | set(self.probe_held.values()), probes

    async def _claim_probes(
        self, conn: AsyncConnection[Any], probes: set[str], skip: set[str]
    ) -> list[Job]:
        """Exactly one job per provider whose half-open probe this drain took (the breaker
        hands one probe to one caller across all processes); an unused probe is given
        back at once."""
        out: list[Job] = []
        for provider in sorted(probes):
            got = await claim(
                conn,
                owner=self.owner,
                limit=1,
                lane_free={provider: 1, f"{provider}:embed": 1},
                default_free=0,
                skip_providers=skip,
                settings=self.settings,
            )
            if not got:
                await breaker.return_probe(conn, provider)
                continue
            self.probe_held[got[0].id] = provider
            self._success_reported.pop(provider, None)  # its outcome is told at once
            self.report["probes"] += 1
            out.extend(got)
        return out

    def _probe_done(self, job_ids: list[int]) -> None:
        if any(self.probe_held.pop(i, None) is not None for i in job_ids):
            self._blocked_at = -1e9  # read the breaker's new state before the next claim

    async def _claim_round(self, asked: int) -> tuple[int, int]:
        """(jobs claimed, the claim's limit: ``asked`` or less, see _claim_and_start)."""
        started = time.monotonic()
        got, asked = await self._claim_and_start(asked)
        if got:
            self.note_claim(time.monotonic() - started)
        return got, asked

    async def _claim_and_start(self, asked: int) -> tuple[int, int]:
        """Claim up to ``asked`` jobs and start them; (claimed, the claim's limit). A drain
        with nothing in flight (woken by an insert, typically for one or a few rows) claims
        at most as many rows as no lane can exceed (``first_rows_limit``) with the cheaper
        ``rt_claim_fast``; if that limit is reached, the loop claims again at once."""
        async with self._loop_conn() as conn:
            skip, probes = await self._gates(conn)
            probe_jobs = await self._claim_probes(conn, probes, skip) if probes else []
            skip = skip | probes
            lane_free = self.lane_free()
            default_free = self.settings.default_concurrency
            default_free += prefetch(default_free)
            # Providers with their own concurrency get it even when nothing is in flight.
            for provider in self.settings.provider_concurrency:
                for lane in (provider, f"{provider}:embed"):
                    lane_free.setdefault(lane, self.lane_capacity(lane))
            first = 0 if self.unwritten else first_rows_limit(asked, lane_free, default_free)
            if first:
                asked = first
            jobs = probe_jobs + await claim(
                conn,
                owner=self.owner,
                limit=asked,
                lane_free=lane_free,
                default_free=default_free,
                skip_providers=skip,
                settings=self.settings,
                first=first > 0,
            )
            if not jobs:
                return 0, asked
            self.report["claimed"] += len(jobs)
            self.unwritten += len(jobs)
            for j in jobs:
                if j.session_id:
                    self._in_session[j.id] = True
            claimed = len(jobs)
            # A row that can never run fails with its reason; the others go on (issue #11).
            invalid = [o for j in jobs if (o := invalid_job_outcome(j)) is not None]
            if invalid:
                gone = {o.job_id for o in invalid}
                jobs = [j for j in jobs if j.id not in gone]
                self.results.extend(invalid)
                self.results_ready.set()
            await self.limiter.refresh(conn)
            chats = [j for j in jobs if j.kind != KIND_EMBEDDING]
            groups = group_jobs(j for j in jobs if j.kind == KIND_EMBEDDING)
            # A lane that was idle sends a small first request (first vector sooner).
            idle = {g[0].lane for g in groups if self.lane_idle(g[0].lane)}
            groups = split_first_groups(groups, idle)
            runnable_chats, runnable_groups = await self._admit(conn, chats, groups)
        for job in runnable_chats:
            self._start(job.lane, [job], job.provider, self._run_chat(job))
        for group in runnable_groups:
            self._start(group[0].lane, group, group[0].provider, self._run_group(group))
        return claimed, asked

    async def _admit(
        self, conn: AsyncConnection[Any], chats: list[Job], groups: list[list[Job]]
    ) -> tuple[list[Job], list[list[Job]]]:
        """Apply the shared rate limits; jobs not admitted go back to waiting."""
        keys: dict[tuple[str, str], tuple[list[Job], list[list[Job]]]] = {}
        for j in chats:
            keys.setdefault((j.provider, j.model), ([], []))[0].append(j)
        for g in groups:
            keys.setdefault((g[0].provider, g[0].model), ([], []))[1].append(g)
        ok_chats: list[Job] = []
        ok_groups: list[list[Job]] = []
        for (provider, model), (cs, gs) in keys.items():
            if not self.limiter.is_limited(provider, model):
                ok_chats.extend(cs)
                ok_groups.extend(gs)
                continue
            estimates = [self._estimate(j) for j in cs] + [group_token_estimate(g) for g in gs]
            granted, retry_at = await self.limiter.acquire(conn, provider, model, estimates)
            units: list[list[Job]] = [[j] for j in cs] + gs
            for unit, est in zip(units[:granted], estimates[:granted], strict=True):
                for j in unit:
                    self._estimates[j.id] = est if len(unit) == 1 else 0
                if len(unit) == 1 and unit[0].kind != KIND_EMBEDDING:
                    ok_chats.append(unit[0])
                else:
                    ok_groups.append(unit)
            waiting = [j.id for unit in units[granted:] for j in unit]
            if waiting:
                at = retry_at or datetime.now(UTC) + timedelta(seconds=1)
                await conn.execute(
                    q("rt_release_throttled"), {"ids": waiting, "at": at, "owner": self.owner}
                )
                if any(i in self.probe_held for i in waiting):
                    await breaker.return_probe(conn, provider)
                    self._probe_done(waiting)
                self.unwritten -= len(waiting)
                self.report["rate_limited"] += len(waiting)
                for job_id in waiting:
                    self._in_session.pop(job_id, None)
        return ok_chats, ok_groups

    def _estimate(self, job: Job) -> int:
        text = (job.input_text or "") + (job.system_prompt or "")
        chars = len(text) + sum(len(m["content"]) for m in job.history)
        chars += sum(len(m.get("content", "")) for m in job.messages or [])
        template = self.templates.get(job.kind)
        if template is not None:
            chars += len(template.system_prompt) + len(template.user_template)
        out = (template.max_output_tokens if template else None) or 256
        return max(1, chars // 4) + out

    def _start(self, lane: str, jobs: list[Job], provider: str, coro: Any) -> None:
        if self.stopping:  # claimed while the stop arrived: straight back
            coro.close()
            self.results.extend(self._released(jobs, in_flight=False))
            self.results_ready.set()
            return
        self.lane_busy[lane] += len(jobs)
        task = asyncio.create_task(self._guard(lane, jobs, provider, coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guard(self, lane: str, jobs: list[Job], provider: str, coro: Any) -> None:
        me = asyncio.current_task()
        assert me is not None
        sem = self.sem(provider)
        outcomes: list[Outcome]
        try:
            try:
                if self.stopping:  # stopped before this task first ran
                    raise asyncio.CancelledError
                self.waiting.add(me)  # from here stop() may cancel the wait for a slot
                await sem.acquire()
            except asyncio.CancelledError:
                coro.close()
                if not self.stopping:
                    raise
                me.uncancel()
                outcomes = self._released(jobs, in_flight=False)
            else:
                self.waiting.discard(me)
                try:
                    started = time.monotonic()
                    outcomes = await coro
                    self.note_call(lane, time.monotonic() - started)
                except asyncio.CancelledError:
                    if not self.stopping:
                        raise
                    me.uncancel()  # the deadline passed: the answer will never come
                    outcomes = self._released(jobs, in_flight=True)
                except Exception as exc:  # a bug, not a provider failure: retry, bounded
                    log.exception("realtime job crashed")
                    outcomes = [outcome_for_error(j, exc, self.settings) for j in jobs]
                finally:
                    sem.release()
        finally:
            self.waiting.discard(me)
            self.lane_busy[lane] -= len(jobs)
            self.lane_done_at[lane] = time.monotonic()
        self.results.extend(outcomes)
        self.results_ready.set()
        # The slot is free now, not after the write: let the loop refill it while the
        # writer flushes (otherwise every slot idles for a flush + claim per job). A lane
        # with prefetched jobs still waiting is refilled in batches (see refill_due), not
        # with one claim per finished call.
        if not self.stopping and self.refill_due(lane):
            self.wake.set()

    async def _run_chat(self, job: Job) -> list[Outcome]:
        template = self.templates.get(job.kind)
        if template is None and job.kind not in ("chat", "completion"):
            self.templates.update(await self._reload_templates())
            template = self.templates.get(job.kind)
        out = await run_chat(self.clients, job, template, self.settings, self.timeout)
        out.token_estimate = self._estimates.pop(job.id, 0)
        return [out]

    async def _run_group(self, group: list[Job]) -> list[Outcome]:
        outs = await run_group(self.clients, group, self.settings, self.timeout)
        est = sum(self._estimates.pop(j.id, 0) for j in group)
        if outs:
            outs[0].token_estimate = est
        return outs

    async def _reload_templates(self) -> dict[str, Template]:
        async with self.pool.connection() as conn:
            return await load_templates(conn)

    # ------------------------------------------------------------------ writing

    async def _writer(self) -> None:
        while True:
            await self.results_ready.wait()
            self.results_ready.clear()
            if not self.results:
                continue
            batch, self.results = self.results, []
            await self._flush(batch)
            if self.probe_held:
                self._probe_done([o.job_id for o in batch])
            was_full = self.free_total() == 0
            self.unwritten -= len(batch)
            self.written.set()
            # Claim again if the cap on unwritten jobs was what stopped the claims, or if a
            # session's next question may be waiting for this answer to be written.
            if was_full or any(self._in_session.pop(o.job_id, False) for o in batch) or self._held:
                self.wake.set()

    def _params(self, batch: list[Outcome]) -> dict[str, Any]:
        embeddings, offsets, lengths = flatten([o.embedding for o in batch])
        return {
            "owner": self.owner,
            "ids": [o.job_id for o in batch],
            "status": [o.status for o in batch],
            "result_text": [o.result_text for o in batch],
            "result_json": [None if o.result_json is None else Jsonb(o.result_json) for o in batch],
            "embeddings": embeddings,
            "emb_offset": offsets,
            "emb_length": lengths,
            "error": [redact_opt(o.error) for o in batch],
            "error_kind": [o.error_kind for o in batch],
            "failed_call": [o.failed_call for o in batch],
            "throttle": [o.throttle for o in batch],
            "delay": [o.delay for o in batch],
            "context_messages": [o.context_messages for o in batch],
            "input_tokens": [o.input_tokens for o in batch],
            "output_tokens": [o.output_tokens for o in batch],
            "latency_ms": [o.latency_ms for o in batch],
            "called_at": [o.called_at for o in batch],
            "user_message": [o.user_message for o in batch],
        }

    async def _write(self, batch: list[Outcome]) -> None:
        released = [o.job_id for o in batch if o.status == "released"]
        done = [o for o in batch if o.status != "released"]
        params = self._params(done) if done else None
        async with self.pool.connection() as conn:
            if released:
                await conn.execute(q("rt_release"), {"ids": released, "owner": self.owner})
            if params is not None:
                cur = conn.cursor()
                cur.adapters.register_dumper(Float4Array, Float4ArrayBinaryDumper)
                await cur.execute(q("rt_finish"), params)
                await self._after_write(conn, done)

    async def _flush(self, batch: list[Outcome]) -> None:
        # Texts Postgres cannot store (NUL, lone surrogates) are cleaned first (issue #11).
        batch = [storable(o) for o in batch]
        for o in batch:
            self.report[o.status] += 1
            if o.token_estimate and o.status == "completed":
                self.limiter.note_usage(
                    o.provider,
                    o.model,
                    o.token_estimate,
                    (o.input_tokens or 0) + (o.output_tokens or 0),
                )
        delay = 0.1
        for attempt in range(8):
            try:
                await self._write(batch)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt == 7:
                    log.error("could not write %d realtime outcomes: %s", len(batch), exc)
                    raise
                log.warning("writing realtime outcomes failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                # Not the connection: something in one outcome. Write them one by one, so
                # the others are stored and the bad one fails with the reason.
                log.warning("writing %d realtime outcomes failed (%s); one by one", len(batch), exc)
                await self._write_each(batch)
                return

    async def _write_each(self, batch: list[Outcome]) -> None:
        for o in batch:
            try:
                await self._write([o])
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception as exc:
                try:
                    await self._write([unstorable(o, exc)])
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception:
                    log.exception("could not store realtime job %s, nor its failure", o.job_id)

    async def _after_write(self, conn: AsyncConnection[Any], batch: list[Outcome]) -> None:
        """Bookkeeping after a flush: token settlement, provider health, error log. Never
        per job: once per provider and error kind per flush, and a provider's success at most
        once per :data:`SUCCESS_REPORT_SECONDS` while it keeps succeeding."""
        await self.limiter.settle(conn)
        ok: set[str] = set()
        # Outcomes are in the order the calls finished: a provider's failures count toward
        # its breaker only after its last success in this flush (consecutive failures),
        # and each failed call counts (not one per flush).
        last_ok: dict[str, int] = {}
        for i, o in enumerate(batch):
            if o.status == "completed":
                ok.add(o.provider)
                last_ok[o.provider] = i
        errors: dict[tuple[str, str], tuple[Outcome, int]] = {}
        # One failed call of an embeddings group fails all its jobs with the same
        # exception object: it counts once.
        counted: dict[tuple[str, str], set[int]] = defaultdict(set)
        for i, o in enumerate(batch):
            if o.status != "completed" and o.error_kind:
                key = (o.provider, o.error_kind)
                first, n = errors.get(key, (o, 0))
                errors[key] = (first, n + 1)
                if i > last_ok.get(o.provider, -1):
                    counted[key].add(id(o.exc) if o.exc is not None else id(o))
        now = time.monotonic()
        for provider in sorted(ok):
            # A healthy provider's success is a no-op write (three statements: BEGIN, UPDATE,
            # COMMIT); under load flushes run hundreds of times a second, so tell it at most
            # once per SUCCESS_REPORT_SECONDS - but at once after this drain saw it fail.
            last = self._success_reported.get(provider)
            if last is not None and now - last < SUCCESS_REPORT_SECONDS:
                continue
            with contextlib.suppress(Exception):
                await resilience.on_provider_success(conn, provider)
            self._success_reported[provider] = now
        for (provider, kind), (o, n) in sorted(errors.items(), key=lambda kv: kv[0]):
            calls = len(counted[(provider, kind)])
            if isinstance(o.exc, ProviderError) and (
                calls or not breaker.counts_toward_breaker(o.exc.kind)
            ):
                self._success_reported.pop(provider, None)
                with contextlib.suppress(Exception):
                    await resilience.on_provider_error(conn, provider, o.exc, count=max(1, calls))
            verb = "failed" if o.status == "failed" else "will be retried"
            await record_error(
                conn,
                f"ai_job:{kind}",
                f"{n} realtime job(s) {verb}: {o.error}",
                provider=provider,
                detail={"ai_job_id": o.job_id, "jobs": n, "status": o.status},
                fingerprint=f"ai_job:{provider}:{kind}:{o.status}",
            )

    # ------------------------------------------------------------------ wake-ups

    async def _listen(self) -> None:
        """A notification wakes the claim loop: from the process's one listening connection
        when ``python -m worker run`` runs one (:mod:`worker.queue.wakeups`), else on a dedicated
        connection of the drain's own."""
        hub = wakeups.current
        if hub is not None:
            unsubscribe = hub.subscribe(NOTIFY_CHANNEL, lambda _payload: self.wake.set())
            try:
                await asyncio.Event().wait()  # until cancelled with the drain
            finally:
                unsubscribe()
        while True:
            try:
                info = self.pool.conninfo
                conn = await AsyncConnection.connect(
                    info if isinstance(info, str) else resolve_database_url(),
                    autocommit=True,
                    application_name="ai-worker-drain",
                )
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    async for _ in conn.notifies():
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("drain listener failed (%s); reconnecting", exc)
                await asyncio.sleep(0.5)

    async def _invite_if_backlog(self) -> None:
        """If due jobs are left after a claim (this process is full), defer one more drain
        (lock ``drain``) for an idle worker process, which does the same in turn (see the
        module docstring). Looked at most once per :data:`BACKLOG_CHECK_SECONDS`."""
        now = time.monotonic()
        if now - self._backlog_checked_at < BACKLOG_CHECK_SECONDS:
            return
        self._backlog_checked_at = now
        try:
            async with self._loop_conn() as conn:
                cur = await conn.execute(q("rt_backlog"))
                row = await cur.fetchone()
                if row and row[0]:
                    await conn.execute(q("rt_defer_drain"), {"lock": "drain", "scheduled_at": None})
                    self._joined = True
                    self.report["invited"] = 1
        except psycopg.Error as exc:
            log.warning("could not invite idle workers to the drain: %s", exc)

    async def _next_due(self, conn: AsyncConnection[Any] | None = None) -> datetime | None:
        if conn is None:
            async with self.pool.connection() as own:
                return await self._next_due(own)
        cur = await conn.execute(q("rt_next_due"))
        row = await cur.fetchone()
        return row[0] if row else None

    async def _schedule_next(self) -> None:
        due = await self._next_due()
        if due is None:
            return
        if self.blocked and not self.stopping:
            # Due jobs this run could not claim while a provider is stopped or its breaker
            # open: look again in a few seconds, not at once (a stopped provider's backlog
            # made every process run a drain a second, for as long as the stop lasted).
            due = max(due, datetime.now(UTC) + timedelta(seconds=BLOCKED_RESCHEDULE_SECONDS))
        lock = f"drain@{int(due.timestamp())}"
        async with self.pool.connection() as conn:
            await conn.execute(q("rt_defer_drain"), {"lock": lock, "scheduled_at": due})
        self.report["scheduled_next"] = 1


async def run_drain(pool: AsyncConnectionPool) -> dict[str, Any]:
    """One drain run (the ``drain`` task): returns counts for ``worker_task_runs``."""
    async with pool.connection() as conn:
        settings = await load_settings(conn)
        templates = await load_templates(conn)
    return await Drain(pool, settings, templates, clients()).run()
