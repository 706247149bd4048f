"""Outcomes Postgres can store (issue #11: one bad value must not halt the lane).

A provider answer may hold what Postgres ``text`` and ``jsonb`` cannot: NUL (``\\x00``, also
as the JSON escape ``\\u0000``) and lone UTF-16 surrogates. One such answer used to fail the
writer's whole flush - every job in it - on every retry, and the drain run with it; the
jobs were claimed again after their lease and paid for again. :func:`storable` cleans the
texts of an outcome as :func:`worker.commentary.question_input.clean_text` does for the commentary
lane (NUL and other control characters removed, surrogates replaced by U+FFFD; tab,
newline and carriage return kept). :func:`unstorable` is the last resort of the writer: an
outcome that still cannot be written becomes a failed job with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from worker.commentary.question_input import clean_text
from worker.realtime.model import Outcome


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def storable(outcome: Outcome) -> Outcome:
    """``outcome`` with every text cleaned (the same object when nothing needed it)."""
    changes: dict[str, Any] = {}
    for name in ("result_text", "error", "user_message"):
        text = getattr(outcome, name)
        if text is not None:
            cleaned = clean_text(text)
            if cleaned != text:
                changes[name] = cleaned
    if outcome.result_json is not None:
        cleaned_json = _clean(outcome.result_json)
        if cleaned_json != outcome.result_json:
            changes["result_json"] = cleaned_json
    return dataclasses.replace(outcome, **changes) if changes else outcome


def unstorable(outcome: Outcome, exc: BaseException) -> Outcome:
    """The failed outcome written instead of one that could not be stored."""
    return Outcome(
        job_id=outcome.job_id,
        status="failed",
        provider=outcome.provider,
        model=outcome.model,
        error=clean_text(
            f"the result could not be stored ({type(exc).__name__}: {str(exc)[:300]})"
        ),
        error_kind="unstorable",
        failed_call=1,
        called_at=outcome.called_at,
        latency_ms=outcome.latency_ms,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
    )
