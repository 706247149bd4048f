"""Stopping running drains on SIGTERM.

The runner calls :func:`request_stop` as soon as the signal arrives, before it cancels
the Procrastinate workers. Every drain of the process then stops claiming, gives its
claimed-but-unstarted jobs back at once, and lets the calls already in flight finish until
:func:`deadline_for` of the grace period - a little before Procrastinate's own
``shutdown_graceful_timeout`` cancels the drain job, so the answers that arrived are
written and what is left is released by the drain itself, never by a hard cancel.

Kept free of imports from the rest of the worker so the runner can use it cheaply.
"""

from __future__ import annotations

import time
from typing import Protocol


class Stoppable(Protocol):
    def stop(self, deadline: float) -> None:
        """Stop claiming; finish or release in-flight work by ``deadline`` (monotonic)."""


_running: set[Stoppable] = set()
_deadline: float | None = None


def deadline_for(grace_seconds: float, now: float | None = None) -> float:
    """The monotonic time by which a drain stops waiting for in-flight calls: the grace
    period minus a margin (a tenth of it, at least 1 s) for writing and releasing."""
    start = time.monotonic() if now is None else now
    return start + max(0.0, grace_seconds - max(1.0, 0.1 * grace_seconds))


def request_stop(grace_seconds: float) -> None:
    """Stop every running drain of this process, and any that starts from now on."""
    global _deadline
    _deadline = deadline_for(grace_seconds)
    for drain in list(_running):
        drain.stop(_deadline)


def stop_requested() -> bool:
    return _deadline is not None


def reset() -> None:
    """Forget a stop request (a new runner in the same process, e.g. in tests)."""
    global _deadline
    _deadline = None


def register(drain: Stoppable) -> None:
    _running.add(drain)
    if _deadline is not None:
        drain.stop(_deadline)


def unregister(drain: Stoppable) -> None:
    _running.discard(drain)
