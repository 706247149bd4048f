"""Typed rows that travel between the batch lane's steps (read with ``class_row``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BatchJob:
    """One ``ai_commentary_batch_jobs`` row as poll, ingest and the budget use it
    (query ``lock_batch``)."""

    id: uuid.UUID
    provider: str
    model_key: str | None
    model_name: str | None
    batch_id: str | None
    state: str
    status: str
    poll_count: int
    created_at: datetime | None
    stage: str | None = None
    request_count: int | None = None
