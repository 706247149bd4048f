"""Running one job: the provider call, the context-length fallback, and what a failure
means for the job (retry with backoff, wait, or fail with the classified reason).

Failure policy (:func:`outcome_for_error`):

* ``retryable``/``unknown`` (5xx, timeout, connection): ``retrying`` after exponential
  backoff with full jitter, ``min(max, base * 2**(n-1)) * U(0.5, 1)``, or the provider's
  ``retry-after`` (plus up to 10 % jitter) when it gave one; after ``max_attempts`` failed
  calls the job fails with the last reason.
* HTTP 429 (rate limited): the same wait, but it does not use up an attempt - a rate limit
  delays a job, it never fails it.
* ``quota``/``auth`` and an unconfigured provider: the provider is down, not the job. The
  job waits ``provider_down_wait_seconds`` without using an attempt, and the resilience
  module is told (it may stop the provider; the claim skips blocked providers).
* ``context_too_long``: handled in :func:`run_chat` by halving the history; if it cannot
  shrink further the job fails.
* ``invalid_request``/``content_refused`` (refusals, moderation, safety blocks)/
  ``truncated``: fail at once; retrying cannot help. (The kinds come from
  :data:`worker.providers.error_policy.DISPOSITIONS`, which the commentary lane uses too.)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime

from worker import validation
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.providers.answer_rules import schema_problem
from worker.providers.error_policy import DISPOSITIONS, Disposition
from worker.providers.routing import Providers
from worker.realtime.model import Job, Outcome, RealtimeSettings, Template
from worker.realtime.sessions import build_prompt, shrink

PERMANENT = tuple(k for k, d in DISPOSITIONS.items() if d is Disposition.FAIL_REQUEST)
PROVIDER_DOWN = tuple(k for k, d in DISPOSITIONS.items() if d is Disposition.STOP_PROVIDER)


def backoff_seconds(
    failed_calls: int,
    settings: RealtimeSettings,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next attempt after ``failed_calls`` (>= 1) failures."""
    u = rng.random() if rng is not None else random.random()
    if retry_after is not None and retry_after > 0:
        return min(settings.backoff_max_seconds, retry_after * (1.0 + 0.1 * u))
    cap = min(
        settings.backoff_max_seconds,
        settings.backoff_base_seconds * 2.0 ** min(60, max(0, failed_calls - 1)),
    )
    return cap * (0.5 + 0.5 * u)


def invalid_job_outcome(job: Job) -> Outcome | None:
    """A claimed job that can never run - a provider outside the supported set, no model
    (possible only for rows the triggers of schema/0017 never saw) - fails at once with the
    reason, instead of waiting for a provider that will never exist (issue #11)."""
    problem = validation.provider_problem(job.provider) if job.provider else "no provider"
    if problem is None and not (job.model or "").strip():
        problem = "no model"
    if problem is None:
        return None
    return Outcome(
        job_id=job.id,
        status="failed",
        provider=job.provider or "",
        model=job.model or "",
        error=f"ai_jobs: {problem}; the job cannot run (fix provider/model and re-queue it)",
        error_kind="invalid_job",
    )


def outcome_for_error(
    job: Job, exc: BaseException, settings: RealtimeSettings, rng: random.Random | None = None
) -> Outcome:
    """The job's next state after a failed call (see the module docstring)."""
    base = Outcome(
        job_id=job.id, status="retrying", provider=job.provider, model=job.model, exc=exc
    )
    if isinstance(exc, ConfigError):
        base.status = "pending" if job.attempts == 0 else "retrying"
        base.error, base.error_kind = str(exc)[:2000], "config"
        base.throttle, base.delay = 1, settings.provider_down_wait_seconds
        return base
    if not isinstance(exc, ProviderError):
        exc = ProviderError(
            f"{type(exc).__name__}: {exc}"[:500], kind=ErrorKind.UNKNOWN, provider=job.provider
        )
        base.exc = exc
    base.error, base.error_kind = str(exc)[:2000], exc.kind.value
    if exc.kind in PERMANENT:
        base.status = "failed"
        base.failed_call = 1
        return base
    if exc.kind in PROVIDER_DOWN:
        base.status = "pending" if job.attempts == 0 else "retrying"
        base.throttle, base.delay = 1, settings.provider_down_wait_seconds
        return base
    if exc.status_code == 429:
        base.throttle = 1
        base.delay = backoff_seconds(job.throttled + 1, settings, exc.retry_after, rng)
        return base
    failed = job.attempts + 1
    base.failed_call = 1
    if failed >= (job.max_attempts or settings.max_attempts):
        base.status = "failed"
        return base
    base.delay = backoff_seconds(failed, settings, exc.retry_after, rng)
    return base


async def run_chat(
    clients: Providers,
    job: Job,
    template: Template | None,
    settings: RealtimeSettings,
    timeout: float,
) -> Outcome:
    """Run a chat/completion/template job to an outcome (never raises)."""
    prompt = build_prompt(job, template, settings.message_max_chars)
    keep = len(prompt.history)
    if job.context_messages is not None:
        keep = min(keep, job.context_messages)
    called_at = datetime.now(UTC)
    while True:
        start = time.monotonic()
        try:
            reply = await asyncio.wait_for(
                clients.converse(job.provider, job.model, prompt, keep), timeout
            )
        except TimeoutError:
            exc: BaseException = ProviderError(
                f"no answer within {timeout:.0f}s",
                kind=ErrorKind.RETRYABLE,
                provider=job.provider,
                code="timeout",
            )
        except Exception as e:
            exc = e
        else:
            out = Outcome(
                job_id=job.id,
                status="completed",
                provider=job.provider,
                model=job.model,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                latency_ms=monotonic_ms(start),
                called_at=called_at,
                context_messages=keep if prompt.history else None,
                user_message=prompt.user,
            )
            if prompt.json_output:
                bad: ProviderError | None = None
                try:
                    out.result_json = json.loads(reply.text)
                except ValueError:
                    bad = ProviderError(
                        "the answer is not valid JSON",
                        kind=ErrorKind.UNKNOWN,
                        provider=job.provider,
                        code="invalid_json",
                    )
                else:
                    # JSON-object-mode endpoints only saw the schema in the prompt.
                    problem = (
                        schema_problem(out.result_json, dict(prompt.json_schema))
                        if prompt.json_schema is not None
                        else None
                    )
                    if problem is not None:
                        bad = ProviderError(
                            problem.message,
                            kind=problem.kind,
                            provider=job.provider,
                            code=problem.code,
                        )
                if bad is not None:
                    failed = outcome_for_error(job, bad, settings)
                    failed.called_at = called_at
                    return failed
            else:
                out.result_text = reply.text
            return out
        if isinstance(exc, ProviderError) and exc.kind is ErrorKind.CONTEXT_TOO_LONG:
            smaller = shrink(keep, settings.context_floor) if prompt.history else None
            if smaller is not None:
                keep = smaller
                continue
        failed = outcome_for_error(job, exc, settings)
        failed.called_at = called_at
        if prompt.history:
            failed.context_messages = keep
        return failed


def monotonic_ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
