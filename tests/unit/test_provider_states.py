"""worker.providers.states: every documented raw state, and unknown ones."""

from __future__ import annotations

from enum import Enum

import pytest
from google.genai import types as genai_types

from worker.providers.base import BatchState
from worker.providers.states import map_state

S = BatchState

ROWS: list[tuple[str, str, BatchState]] = [
    # OpenAI
    ("openai", "validating", S.IN_FLIGHT),
    ("openai", "in_progress", S.IN_FLIGHT),
    ("openai", "finalizing", S.IN_FLIGHT),
    ("openai", "cancelling", S.IN_FLIGHT),
    ("openai", "completed", S.COMPLETED),
    ("openai", "failed", S.FAILED),
    ("openai", "expired", S.EXPIRED),
    ("openai", "cancelled", S.CANCELLED),
    # Gemini server (BATCH_STATE_*) and SDK / Vertex (JOB_STATE_*) spellings
    *[
        (p, f"{prefix}_{suffix}", state)
        for p in ("gemini",)
        for prefix in ("BATCH_STATE", "JOB_STATE")
        for suffix, state in [
            ("PENDING", S.IN_FLIGHT),
            ("QUEUED", S.IN_FLIGHT),
            ("RUNNING", S.IN_FLIGHT),
            ("CANCELLING", S.IN_FLIGHT),
            ("PAUSED", S.IN_FLIGHT),
            ("UPDATING", S.IN_FLIGHT),
            ("SUCCEEDED", S.COMPLETED),
            ("PARTIALLY_SUCCEEDED", S.COMPLETED),
            ("FAILED", S.FAILED),
            ("CANCELLED", S.CANCELLED),
            ("EXPIRED", S.EXPIRED),
            ("UNSPECIFIED", S.UNKNOWN),
        ]
    ],
    # Mistral
    ("mistral", "QUEUED", S.IN_FLIGHT),
    ("mistral", "RUNNING", S.IN_FLIGHT),
    ("mistral", "CANCELLATION_REQUESTED", S.IN_FLIGHT),
    ("mistral", "SUCCESS", S.COMPLETED),
    ("mistral", "FAILED", S.FAILED),
    ("mistral", "TIMEOUT_EXCEEDED", S.EXPIRED),
    ("mistral", "CANCELLED", S.CANCELLED),
    # Unknown / wrong case / wrong provider: UNKNOWN, never terminal
    ("openai", "COMPLETED", S.UNKNOWN),
    ("openai", "archived", S.UNKNOWN),
    ("openai", "", S.UNKNOWN),
    ("gemini", "SUCCEEDED", S.UNKNOWN),
    ("gemini", "BATCH_STATE_WHATEVER", S.UNKNOWN),
    ("mistral", "success", S.UNKNOWN),
    ("mistral", "PAUSED", S.UNKNOWN),
    ("anthropic", "completed", S.UNKNOWN),
]


@pytest.mark.parametrize(("provider", "raw", "state"), ROWS)
def test_map_state(provider: str, raw: str, state: BatchState) -> None:
    assert map_state(provider, raw) is state


def test_unknown_is_never_terminal() -> None:
    assert not map_state("openai", "mystery").terminal
    assert map_state("openai", "completed").terminal


def test_none_is_unknown() -> None:
    assert map_state("openai", None) is S.UNKNOWN


def test_sdk_enums_are_read_by_value() -> None:
    assert map_state("gemini", genai_types.JobState.JOB_STATE_SUCCEEDED) is S.COMPLETED

    class ValueHolder(Enum):
        SUCCESS = "SUCCESS"

    assert map_state("mistral", ValueHolder.SUCCESS) is S.COMPLETED
