"""Retention: the tick deletes old finished rows in small batches (schema/0023,
``worker_apply_retention``), so nothing grows forever.

Defaults (``worker_retention_settings``, one row; days, NULL = keep forever):

===============================  =====  ==================================================
``completed_jobs_days``          30     completed ``ai_jobs``
``failed_jobs_days``             90     failed ``ai_jobs`` (kept longer for diagnosis)
``expired_session_messages_days`` 30    chat messages of sessions that expired that long
                                        ago (``ai_realtime_settings.session_max_age_hours``)
``rate_usage_days``              2      ``ai_rate_usage`` rows whose window ended that long ago
``alerts_days``                  90     ``worker_alerts``
``task_runs_days``               7      ``worker_task_runs``
``batch_rows``                   5000   rows deleted per kind per tick (oldest first)
===============================  =====  ==================================================
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from worker.ops.error_log import record_error
from worker.queries import q

log = logging.getLogger(__name__)


async def apply_retention(conn: AsyncConnection[Any]) -> dict[str, int]:
    """One batch of every kind; the rows deleted per kind. A failure is recorded in
    ``worker_errors`` and never stops the rest of the tick."""
    try:
        cur = await conn.execute(q("retention_apply"))
        row = await cur.fetchone()
    except Exception as exc:
        log.warning("retention failed: %s", exc)
        await record_error(conn, "retention", f"retention failed: {exc}", fingerprint="retention")
        return {}
    return {str(k): int(v) for k, v in (row[0] if row and row[0] else {}).items()}
