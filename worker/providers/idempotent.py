"""Creating a batch or uploading a file exactly once (issue 12, build 3).

Neither OpenAI, Gemini nor Mistral offers an idempotency key for batch creation or file
upload, and the OpenAI SDK retries timeouts, 408/409/429 and 5xx by itself: one lost
response became three billed batches. So the adapters call these endpoints with SDK
retries off and, after an *ambiguous* failure (no answer, a timeout, a 5xx: the side effect
may have happened), look the object up by the intent id it was tagged with before trying
again. A 4xx (429 included) is a definite "not done" and is raised at once.

Lookups are bounded by the intent's creation time (listings come newest first, so paging
stops at the first object older than the intent), never by a count of objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from worker.errors import ErrorKind, ProviderError

T = TypeVar("T")

#: Provider clocks and ours differ; objects this much older than the intent still count.
CLOCK_SLACK = timedelta(minutes=10)
#: Create attempts after ambiguous failures (each followed by a lookup).
ATTEMPTS = 3


def ambiguous(exc: BaseException) -> bool:
    """Whether the call may have taken effect although it failed: no HTTP answer (timeout,
    dropped connection) or a 5xx / 408. A 4xx answer means the server did nothing."""
    if not isinstance(exc, ProviderError):
        return isinstance(exc, OSError | TimeoutError)
    if exc.kind not in (ErrorKind.RETRYABLE, ErrorKind.UNKNOWN):
        return False
    return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 408


def batch_may_exist(exc: BaseException) -> bool:
    """Whether ``exc`` came from a batch *create* whose outcome is unknown (marked by the
    adapters with :func:`mark_create_failure`). An upload that failed cannot have created a
    batch: its intent may be abandoned safely."""
    return bool(getattr(exc, "batch_may_exist", False))


def mark_create_failure(exc: BaseException) -> None:
    """Record on ``exc`` that the batch create itself failed, and whether ambiguously."""
    try:
        exc.batch_may_exist = ambiguous(exc)  # type: ignore[attr-defined]
    except AttributeError:  # an exception type that takes no attributes
        pass


def not_before(created_after: datetime | None) -> datetime | None:
    """The oldest creation time a lookup must still examine."""
    if created_after is None:
        return None
    if created_after.tzinfo is None:
        created_after = created_after.replace(tzinfo=UTC)
    return created_after - CLOCK_SLACK


def as_datetime(value: object) -> datetime | None:
    """A provider timestamp (unix seconds, ISO string or datetime) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


async def once(
    call: Callable[[], Awaitable[T]],
    lookup: Callable[[], Awaitable[T | None]],
    *,
    attempts: int = ATTEMPTS,
) -> T:
    """``call()``; after an ambiguous failure, ``lookup()`` the object it may have created
    and return that, else call again (at most ``attempts`` calls). A failing lookup raises
    the call's error: the caller's own recovery (intent reconciliation) takes over."""
    last: BaseException | None = None
    for _ in range(attempts):
        try:
            return await call()
        except Exception as exc:
            if not ambiguous(exc):
                raise
            last = exc
        try:
            found = await lookup()
        except Exception:
            raise last  # noqa: B904 - the call's error (its cause kept), not the lookup's
        if found is not None:
            return found
    assert last is not None
    raise last
