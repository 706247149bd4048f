"""The process's one listener wakes a queue's Procrastinate worker in its own callback:
no task per notification, so the worker is runnable before the listener waits again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from worker.queue import runner, wakeups
from worker.queue.app import QUEUE_SUBMIT, app


def _worker() -> runner.QueueWorker:
    return runner.QueueWorker(
        run_periodic=False,
        app=app,
        queues=[QUEUE_SUBMIT],
        wait=True,
        install_signal_handlers=False,
        listen_notify=False,
    )


def _hub() -> wakeups.Wakeups:
    return wakeups.Wakeups("postgresql://unused", [wakeups.queue_channel(QUEUE_SUBMIT)])


def test_a_notification_wakes_the_worker_before_the_callback_returns() -> None:
    async def scenario() -> None:
        hub, w = _hub(), _worker()
        runner._subscribe(hub, QUEUE_SUBMIT, w)
        payload = json.dumps({"type": "job_inserted", "job_id": 1})
        hub._dispatch(wakeups.queue_channel(QUEUE_SUBMIT), payload)
        assert w._new_job_event.is_set()  # no await in between: woken synchronously

    asyncio.run(scenario())


def test_a_reconnect_or_an_unreadable_payload_is_a_plain_wake_up() -> None:
    async def scenario() -> None:
        hub, w = _hub(), _worker()
        runner._subscribe(hub, QUEUE_SUBMIT, w)
        for payload in ("", "not json", "[1]"):
            w._new_job_event.clear()
            hub._dispatch(wakeups.queue_channel(QUEUE_SUBMIT), payload)
            assert w._new_job_event.is_set(), payload
        w._new_job_event.clear()
        hub._wake_all()
        assert w._new_job_event.is_set()

    asyncio.run(scenario())


def test_an_abort_request_goes_to_the_abort_handler_and_does_not_fetch() -> None:
    async def scenario() -> None:
        hub, w = _hub(), _worker()
        asked: list[Any] = []
        w._handle_abort_jobs_requested = lambda ids: asked.append(list(ids))  # type: ignore[method-assign]
        runner._subscribe(hub, QUEUE_SUBMIT, w)
        payload = json.dumps({"type": "abort_job_requested", "job_id": 42})
        hub._dispatch(wakeups.queue_channel(QUEUE_SUBMIT), payload)
        assert asked == [[42]]
        assert not w._new_job_event.is_set()

    asyncio.run(scenario())


def test_unsubscribed_worker_is_no_longer_woken() -> None:
    async def scenario() -> None:
        hub, w = _hub(), _worker()
        unsubscribe = runner._subscribe(hub, QUEUE_SUBMIT, w)
        unsubscribe()
        hub._dispatch(wakeups.queue_channel(QUEUE_SUBMIT), "")
        assert not w._new_job_event.is_set()

    asyncio.run(scenario())
