"""Embedding jobs, grouped: one provider request carries many jobs' texts.

Claimed embedding jobs of the same provider and model are cut into groups of at most the
provider's input limit (:data:`EMBEDDING_GROUP_LIMITS`) and a
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
from worker.providers.base import estimate_tokens
from worker.providers.routing import Providers
from worker.realtime.execute import PERMANENT, monotonic_ms, outcome_for_error
from worker.realtime.model import Job, Outcome, RealtimeSettings

#: Most inputs one embeddings request may carry, per provider (documented limits: OpenAI
#: 2048 inputs; Gemini batchEmbedContents 100 requests; Mistral and Ollama kept moderate).
EMBEDDING_GROUP_LIMITS: dict[str, int] = {
    "openai": 2048,
    "openrouter": 2048,
    "gemini": 100,
    "mistral": 128,
    "ollama": 256,
    "mock": 2048,
}
#: Token budget of one embeddings request (OpenAI allows 300k; stay well below).
EMBEDDING_GROUP_TOKENS = 100_000


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


#: Texts in the first request of a lane that had nothing in flight. A claim brings up to
#: ``claim_batch`` (500) texts, sent as one request, and the first vector is stored only when
#: all of them are embedded, decoded and written; a small first request lands its vectors a
#: request's latency after the insert. 50 is the pgai vectorizer's batch size. One extra
#: request per idle start, no more: later groups stay as large as the provider allows.
FIRST_GROUP_TEXTS = 50


def split_first_groups(
    groups: list[list[Job]], idle_lanes: set[str], first: int = FIRST_GROUP_TEXTS
) -> list[list[Job]]:
    """``groups`` with the first group of each lane in ``idle_lanes`` cut in two: its first
    ``first`` texts, sent first, and the rest (only when the rest is at least as large)."""
    out: list[list[Job]] = []
    done: set[str] = set()
    for group in groups:
        lane = group[0].lane
        if lane in idle_lanes and lane not in done and len(group) >= 2 * first:
            out.append(group[:first])
            out.append(group[first:])
        else:
            out.append(group)
        done.add(lane)
    return out


def group_token_estimate(group: list[Job]) -> int:
    return sum(estimate_tokens(j.input_text or "") for j in group)


async def run_group(
    clients: Providers, group: list[Job], settings: RealtimeSettings, timeout: float
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
