"""The chat requests of claimed questions: prompts filled from the settings row, the
answer schema by the question's letters, the summary from the models' comments."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.commentary import custom_ids, prompts, question_input
from worker.commentary.rows import WaitingRequest
from worker.commentary.schemas import COMMENTARY_SCHEMA, COMMENTARY_SCHEMA_FOUR, SUMMARY_SCHEMA
from worker.commentary.settings_row import CommentarySettings
from worker.providers.base import ChatRequest
from worker.queries import q

log = logging.getLogger(__name__)


def _question(row: WaitingRequest) -> prompts.QuestionText:
    # Bad input (issue #5 item 8): text is cleaned before it is sent, and an official
    # answer outside A-E goes to the summary as unknown (worker.commentary.question_input).
    clean = question_input.clean_text
    return prompts.QuestionText(
        question=clean(row.question),
        option_a=clean(row.option_a),
        option_b=clean(row.option_b),
        option_c=clean(row.option_c),
        option_d=clean(row.option_d),
        option_e=clean(row.option_e),
        subject=clean(row.subject) or None,
        correct_answer=question_input.official_answer(row.columns()),
    )


async def build_requests(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    model_key: str,
    rows: Sequence[WaitingRequest],
) -> list[ChatRequest]:
    """The chat requests for ``rows`` (questions) of ``model_key`` (or the summary)."""
    if model_key == "summary":
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q("comments_for_summary"), {"ids": [r.question_id for r in rows]})
        by_q: dict[Any, dict[str, dict[str, Any]]] = {}
        for c in await cur.fetchall():
            by_q.setdefault(c["question_id"], {})[c["model_key"]] = c
        return [
            ChatRequest(
                custom_id=custom_ids.make(r.question_id, "summary"),
                system_prompt=prompts.SUMMARY_SYSTEM_DE_V1,
                user_prompt=prompts.summary_prompt(_question(r), by_q.get(r.question_id, {})),
                schema_name="summary",
                json_schema=SUMMARY_SCHEMA,
            )
            for r in rows
        ]
    out = []
    for r in rows:
        question = _question(r)
        out.append(
            ChatRequest(
                custom_id=custom_ids.make(r.question_id, model_key),
                system_prompt=prompts.system_prompt(question, settings.system_prompt),
                user_prompt=prompts.user_prompt(question, settings.user_prompt_template),
                schema_name="commentary",
                json_schema=COMMENTARY_SCHEMA
                if question.letters == "ABCDE"
                else COMMENTARY_SCHEMA_FOUR,
            )
        )
    return out
