"""A question with four options is sent as four options: no empty "E)" line, a prompt and a
system prompt that say A to D, and an answer schema that allows only A to D."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from worker.commentary import prompts
from worker.commentary.requests import build_requests
from worker.commentary.rows import WaitingRequest
from worker.commentary.schemas import COMMENTARY_SCHEMA, parse_commentary
from worker.commentary.settings_row import CommentarySettings

FIVE = dict(
    question="Welches Organ produziert Insulin?",
    option_a="Leber",
    option_b="Pankreas",
    option_c="Milz",
    option_d="Niere",
    option_e="Herz",
    subject="Physiologie",
    correct_answer="B",
)


def q(**over: Any) -> prompts.QuestionText:
    return prompts.QuestionText(**{**FIVE, **over})


def test_four_option_prompt_lists_four_and_says_a_to_d() -> None:
    four = q(option_e="")
    assert four.letters == "ABCD"
    text = prompts.user_prompt(four)
    assert "D) Niere" in text and "E)" not in text and "keine Option E" not in text
    assert "A bis D" in text and "A bis E" not in text
    system = prompts.system_prompt(four)
    assert "(A bis D)" in system and "A bis E" not in system
    summary = prompts.summary_prompt(four, {"chatgpt": {"chosen_answer": "B", "comment_e": ""}})
    assert "D) Niere" in summary and "E)" not in summary and "A bis D" in summary


def test_five_option_prompts_are_unchanged() -> None:
    five = q()
    assert five.letters == "ABCDE"
    assert prompts.user_prompt(five) == prompts.USER_DE_V1.format_map(
        {**FIVE, "subject": "Physiologie"}
    )
    assert prompts.system_prompt(five) == prompts.SYSTEM_DE_V1
    assert prompts.system_prompt(q(option_e="  "), "eigener Prompt") == "eigener Prompt"


def _settings() -> CommentarySettings:
    return CommentarySettings.model_validate(
        {
            "feature_enabled": True,
            "models_enabled": {"chatgpt": True},
            "models": {"chatgpt": {"provider": "openai", "model": "m"}},
            "summary_model": {"provider": "openai", "model": "m"},
            "batch_size": 10,
            "processing_delay_minutes": 0,
        }
    )


def test_requests_carry_the_schema_of_the_options_the_question_has() -> None:
    rows = [
        WaitingRequest(question_id=uuid.uuid4(), model_key="chatgpt", **FIVE),
        WaitingRequest(question_id=uuid.uuid4(), model_key="chatgpt", **{**FIVE, "option_e": None}),
    ]
    five, four = asyncio.run(build_requests(None, _settings(), "chatgpt", rows))  # type: ignore[arg-type]
    assert five.json_schema == COMMENTARY_SCHEMA
    assert five.json_schema["properties"]["chosen_answer"]["enum"] == list("ABCDE")
    assert four.json_schema["properties"]["chosen_answer"]["enum"] == list("ABCD")
    assert "E)" not in four.user_prompt and "(A bis D)" in four.system_prompt
    assert set(four.json_schema["required"]) == set(COMMENTARY_SCHEMA["required"])
    # an answer to the four-option schema still parses (comment_e empty)
    parse_commentary(
        '{"chosen_answer": "D", "general_comment": "g", "comment_a": "a", "comment_b": "b",'
        ' "comment_c": "c", "comment_d": "d", "comment_e": "", "regenerated_question": null,'
        ' "regenerated_option_a": null, "regenerated_option_b": null,'
        ' "regenerated_option_c": null, "regenerated_option_d": null,'
        ' "regenerated_option_e": null}'
    )
