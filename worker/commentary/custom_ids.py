"""Request ids that say which question and model a line belongs to.

``q-<question uuid>-<model key>``: at most 2 + 36 + 1 + 24 characters, inside every
provider's limit (OpenAI's is believed to be 64). Results are matched on this id, never
by position (failure mode 14)."""

from __future__ import annotations

import re
import uuid

_RE = re.compile(
    r"^q-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-([a-z0-9_]{1,24})$"
)


def make(question_id: uuid.UUID | str, model_key: str) -> str:
    cid = f"q-{question_id}-{model_key}"
    if not _RE.match(cid):
        raise ValueError(f"cannot build a request id from {question_id!r}, {model_key!r}")
    return cid


def parse(custom_id: str) -> tuple[uuid.UUID, str]:
    """(question id, model key); ValueError for an id we did not make."""
    m = _RE.match(custom_id or "")
    if not m:
        raise ValueError(f"unknown request id {custom_id[:80]!r}")
    return uuid.UUID(m.group(1)), m.group(2)


def lock_key(job_id: uuid.UUID) -> int:
    """A signed 64-bit advisory-lock key for a batch intent."""
    return int.from_bytes(job_id.bytes[:8], "big", signed=True)
