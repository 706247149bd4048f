"""Embedding jobs, grouped: one provider request carries many jobs' texts.

Claimed embedding jobs of the same provider and model are cut into groups of at most the
provider's input limit (:data:`~worker.realtime.providers.EMBEDDING_GROUP_LIMITS`) and a
token budget per request. One group = one request = one concurrency slot and one request
of the provider's rate limit. A failed request gives every job of its group the same
outcome (each job's own attempt counter decides retry or failure), except that a permanent
error of a group of several is retried one text per request, so one bad text cannot fail
its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.realtime.execute import PERMANENT, outcome_for_error
from worker.realtime.model import Job, Outcome, RealtimeSettings
from worker.realtime.providers import (
    EMBEDDING_GROUP_LIMITS,
    EMBEDDING_GROUP_TOKENS,
    RealtimeClients,
    estimate_tokens,
    monotonic_ms,
)


def group_limit(provider: str) -> int:
    return EMBEDDING_GROUP_LIMITS.get(provider, 96)


def group_jobs(
    jobs: Iterable[Job], max_inputs: int | None = None, max_tokens: int = EMBEDDING_GROUP_TOKENS
) -> list[list[Job]]:
    """Groups of jobs for one request each: same provider and model, at most ``max_inputs``
    texts (default: the provider's limit) and ``max_tokens`` estimated tokens."""
    by_key: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        by_key.setdefault((job.provider, job.model), []).append(job)
    groups: list[list[Job]] = []
    for (provider, _model), items in by_key.items():
        limit = max_inputs or group_limit(provider)
        current: list[Job] = []
        tokens = 0
        for job in items:
            t = estimate_tokens(job.input_text or "")
            if current and (len(current) >= limit or tokens + t > max_tokens):
                groups.append(current)
                current, tokens = [], 0
            current.append(job)
            tokens += t
        if current:
            groups.append(current)
    return groups


def group_token_estimate(group: list[Job]) -> int:
    return sum(estimate_tokens(j.input_text or "") for j in group)


async def run_group(
    clients: RealtimeClients, group: list[Job], settings: RealtimeSettings, timeout: float
) -> list[Outcome]:
    """Embed one group; one outcome per job (never raises)."""
    first = group[0]
    called_at = datetime.now(UTC)
    start = time.monotonic()
    try:
        result = await asyncio.wait_for(
            clients.embed(first.provider, first.model, [j.input_text or "" for j in group]),
            timeout,
        )
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            exc = ProviderError(
                f"no answer within {timeout:.0f}s",
                kind=ErrorKind.RETRYABLE,
                provider=first.provider,
                code="timeout",
            )
        elif not isinstance(exc, ProviderError | ConfigError):
            # One exception object for the whole group: the breaker counts one failed call.
            exc = ProviderError(
                f"{type(exc).__name__}: {exc}"[:500],
                kind=ErrorKind.UNKNOWN,
                provider=first.provider,
            )
        if (
            len(group) > 1
            and isinstance(exc, ProviderError)
            and exc.kind in PERMANENT
            and exc.code != "no_embeddings_api"
        ):
            singles = await asyncio.gather(
                *(run_group(clients, [j], settings, timeout) for j in group)
            )
            return [o for outs in singles for o in outs]
        outs = []
        for job in group:
            out = outcome_for_error(job, exc, settings)
            out.called_at = called_at
            outs.append(out)
        return outs
    latency = monotonic_ms(start)
    total_chars = sum(len(j.input_text or "") for j in group) or 1
    outs = []
    for job, vector in zip(group, result.vectors, strict=True):
        share = len(job.input_text or "") / total_chars
        outs.append(
            Outcome(
                job_id=job.id,
                status="completed",
                provider=job.provider,
                model=job.model,
                embedding=vector,
                input_tokens=max(1, round(result.input_tokens * share)),
                output_tokens=0,
                latency_ms=latency,
                called_at=called_at,
            )
        )
    return outs
