"""Recording errors where a person looks: ``worker_errors``, one row per distinct problem
with a count, plus the log. Never raises: bookkeeping must not break the work."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from worker.queries import q
from worker.redact import redact, redact_value

log = logging.getLogger("worker.errors")


async def record_error(
    conn: AsyncConnection[Any],
    kind: str,
    message: str,
    *,
    provider: str | None = None,
    question_id: UUID | str | None = None,
    batch_job_id: UUID | str | None = None,
    detail: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> int:
    """Upsert the error; return how often it has now been seen (0 if recording failed)."""
    message = redact(message)
    detail = redact_value(detail) if detail else None
    fp = (
        fingerprint
        or hashlib.sha1(
            f"{kind}|{provider}|{question_id}|{batch_job_id}|{message[:200]}".encode()
        ).hexdigest()
    )
    log.warning(
        "%s: %s",
        kind,
        message,
        extra={
            "provider": provider,
            "question_id": str(question_id or ""),
            "batch_job_id": str(batch_job_id or ""),
        },
    )
    try:
        async with conn.transaction():
            cur = await conn.execute(
                q("record_error"),
                {
                    "fingerprint": fp,
                    "kind": kind,
                    "provider": provider,
                    "question_id": question_id,
                    "batch_job_id": batch_job_id,
                    "message": message[:4000],
                    "detail": Jsonb(detail) if detail else None,
                },
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0
    except Exception:
        log.exception("could not record error")
        return 0
