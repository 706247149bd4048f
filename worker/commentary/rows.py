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


@dataclass(frozen=True)
class WaitingRequest:
    """A request ready to send with its question's text (query ``take_waiting``): what
    the input checks judge and the prompts are built from."""

    question_id: uuid.UUID
    model_key: str
    question: str | None
    option_a: str | None
    option_b: str | None
    option_c: str | None
    option_d: str | None
    option_e: str | None
    subject: str | None
    correct_answer: str | None

    def columns(self) -> dict[str, str | None]:
        """The ``questions`` columns, for the checks of worker.commentary.question_input."""
        return {
            "question": self.question,
            "option_a": self.option_a,
            "option_b": self.option_b,
            "option_c": self.option_c,
            "option_d": self.option_d,
            "option_e": self.option_e,
            "subject": self.subject,
            "correct_answer": self.correct_answer,
        }
