"""Postgres-native AI job worker.

``worker.app`` is the Procrastinate app (``procrastinate --app=worker.app worker``); it is
loaded lazily so importing the package (e.g. for the emulator) does not import the queue.
"""

from __future__ import annotations

from typing import Any

from worker.redact import install_log_redaction

__version__ = "0.1.0"

# Every log line of every module passes the one redaction step (worker.redact).
install_log_redaction()


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.queue.tasks import app  # the app with its tasks registered

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
