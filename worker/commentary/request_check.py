"""The last check before a request is sent: it can be built, and it is not too large.

Issue #11: a 5 MB ``subject`` was not counted by the question checks and became a
1.3M-token summary request; a template that could not be rendered crashed the whole submit
run, for every question, every run. Here each request of a take is built and measured on
the exact text that would be sent (system prompt plus user prompt); a question whose
request cannot be built, or is larger than :data:`MAX_REQUEST_CHARS`, fails with the reason
(``worker.commentary.question_input.fail_questions``: the question's ``ai_commentary_error``, its
requests' ``last_error``, one ``worker_errors`` row naming it) and the others are sent.

:data:`MAX_REQUEST_CHARS` (200,000 characters, ~60 K tokens) is twice what a valid
question can produce: a system prompt and a template of at most 20,000 characters each
(``worker.validation``), 100,000 characters of question and options, a 1,000-character
subject, and for the summary five models' comments. A request above it is a data error,
and would cost dollars per call on every model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from psycopg import AsyncConnection

from worker.commentary import custom_ids
from worker.commentary.question_input import fail_questions
from worker.commentary.rows import WaitingRequest
from worker.commentary.settings_row import CommentarySettings
from worker.providers.base import ChatRequest

MAX_REQUEST_CHARS = 200_000

Builder = Callable[
    [AsyncConnection[Any], CommentarySettings, str, Sequence[WaitingRequest]],
    Awaitable[list[ChatRequest]],
]


def request_chars(request: ChatRequest) -> int:
    return len(request.system_prompt) + len(request.user_prompt)


async def build_checked(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    model_key: str,
    rows: Sequence[WaitingRequest],
    build: Builder,
) -> list[ChatRequest]:
    """The requests of ``rows`` that may be sent; the others' questions are failed, with
    their reason, in the caller's transaction. ``build`` is tried on all rows at once and,
    only if that raises, row by row, to find the rows that cannot be built."""
    stage = "summary" if model_key == "summary" else f"{model_key} comment"
    bad: dict[Any, str] = {}
    try:
        requests = await build(conn, settings, model_key, rows)
    except Exception:
        requests = []
        for row in rows:
            try:
                requests.extend(await build(conn, settings, model_key, [row]))
            except Exception as exc:
                bad[row.question_id] = (
                    f"its {stage} request could not be built ({type(exc).__name__}: "
                    f"{str(exc)[:300]})"
                )
    for request in requests:
        size = request_chars(request)
        if size > MAX_REQUEST_CHARS:
            qid = custom_ids.parse(request.custom_id)[0]
            bad[qid] = (
                f"its {stage} request would be {size:,} characters (system and user prompt), "
                f"more than the limit of {MAX_REQUEST_CHARS:,}"
            )
    if not bad:
        return requests
    await fail_questions(conn, bad)
    return [r for r in requests if custom_ids.parse(r.custom_id)[0] not in bad]
