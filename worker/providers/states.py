"""Raw provider batch states -> :class:`BatchState`, as explicit tables.

Every state a provider documents (and the Vertex-only ``JOB_STATE_*`` values the
google-genai SDK may hand back) is listed. A state nobody listed maps to
``BatchState.UNKNOWN``, which is never terminal: the poller keeps polling and records it,
instead of guessing that an unfamiliar word means "done".
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.providers.base import BatchState

S = BatchState

OPENAI_STATES: Mapping[str, BatchState] = {
    "validating": S.IN_FLIGHT,
    "in_progress": S.IN_FLIGHT,
    "finalizing": S.IN_FLIGHT,
    "cancelling": S.IN_FLIGHT,
    "completed": S.COMPLETED,
    "failed": S.FAILED,
    "expired": S.EXPIRED,
    "cancelled": S.CANCELLED,
}

# The server sends BATCH_STATE_*; the SDK maps those to JOB_STATE_* (t_job_state) and
# passes any other string through, so both spellings are listed.
_GEMINI_SUFFIXES: Mapping[str, BatchState] = {
    "PENDING": S.IN_FLIGHT,
    "QUEUED": S.IN_FLIGHT,
    "RUNNING": S.IN_FLIGHT,
    "CANCELLING": S.IN_FLIGHT,
    "PAUSED": S.IN_FLIGHT,
    "UPDATING": S.IN_FLIGHT,
    "SUCCEEDED": S.COMPLETED,
    # Vertex: some requests failed; the results are readable, lines carry the errors.
    "PARTIALLY_SUCCEEDED": S.COMPLETED,
    "FAILED": S.FAILED,
    "CANCELLED": S.CANCELLED,
    "EXPIRED": S.EXPIRED,
    # UNSPECIFIED deliberately absent -> UNKNOWN.
}

GEMINI_STATES: Mapping[str, BatchState] = {
    f"{prefix}_{suffix}": state
    for prefix in ("BATCH_STATE", "JOB_STATE")
    for suffix, state in _GEMINI_SUFFIXES.items()
}

MISTRAL_STATES: Mapping[str, BatchState] = {
    "QUEUED": S.IN_FLIGHT,
    "RUNNING": S.IN_FLIGHT,
    "CANCELLATION_REQUESTED": S.IN_FLIGHT,
    "SUCCESS": S.COMPLETED,
    "FAILED": S.FAILED,
    "TIMEOUT_EXCEEDED": S.EXPIRED,
    "CANCELLED": S.CANCELLED,
}

STATE_TABLES: Mapping[str, Mapping[str, BatchState]] = {
    "openai": OPENAI_STATES,
    "gemini": GEMINI_STATES,
    "mistral": MISTRAL_STATES,
}


def raw_state_str(raw: object) -> str:
    """The wire string of a raw state: SDK enums (``JobState.JOB_STATE_RUNNING``, Mistral
    ``BatchJobStatus``) are str-valued, unknown ones arrive as plain strings."""
    if raw is None:
        return ""
    value = getattr(raw, "value", raw)
    return str(value)


def map_state(provider: str, raw: object) -> BatchState:
    """The normalised state of ``raw`` for ``provider``; UNKNOWN if not listed.

    Matching is exact (case-sensitive), because each provider documents one spelling."""
    table = STATE_TABLES.get(provider)
    if table is None:
        return S.UNKNOWN
    return table.get(raw_state_str(raw), S.UNKNOWN)
