"""The structured output we ask every model for, and validate every answer against.

One pydantic model per kind of answer; its JSON schema is sent to each provider in that
provider's native form (OpenAI json_schema strict, Gemini responseJsonSchema, Mistral
json_schema), and every answer is validated here before anything is written.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.commentary.question_input import clean_text

Letter = Literal["A", "B", "C", "D", "E"]
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Commentary(_Strict):
    """One model's review of one exam question."""

    chosen_answer: Letter
    general_comment: str = Field(min_length=1, max_length=20_000)
    comment_a: str = Field(max_length=5_000)
    comment_b: str = Field(max_length=5_000)
    comment_c: str = Field(max_length=5_000)
    comment_d: str = Field(max_length=5_000)
    comment_e: str = Field(max_length=5_000)
    regenerated_question: str | None = Field(default=None, max_length=20_000)
    regenerated_option_a: str | None = Field(default=None, max_length=5_000)
    regenerated_option_b: str | None = Field(default=None, max_length=5_000)
    regenerated_option_c: str | None = Field(default=None, max_length=5_000)
    regenerated_option_d: str | None = Field(default=None, max_length=5_000)
    regenerated_option_e: str | None = Field(default=None, max_length=5_000)

    @field_validator("chosen_answer", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v


class Summary(_Strict):
    """The summary across all models' comments for one question."""

    general_comment: str = Field(min_length=1, max_length=20_000)
    comment_a: str = Field(max_length=5_000)
    comment_b: str = Field(max_length=5_000)
    comment_c: str = Field(max_length=5_000)
    comment_d: str = Field(max_length=5_000)
    comment_e: str = Field(max_length=5_000)
    model_agreement_analysis: str = Field(max_length=10_000)


def _strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A JSON schema every provider's structured-output mode accepts: all properties
    required (nullable where optional), no additional properties, no $defs."""
    schema = model.model_json_schema()
    props: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        p = {k: v for k, v in prop.items() if k in ("type", "enum", "anyOf", "description")}
        if "anyOf" in p:  # Optional[str] -> ["string", "null"]
            p = {"type": ["string", "null"]}
        if "enum" in prop and "type" not in p:
            p["type"] = "string"
        props[name] = p
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


COMMENTARY_SCHEMA = _strict_schema(Commentary)
# For a question with four options: the same, but the answer can only be A to D.
COMMENTARY_SCHEMA_FOUR: dict[str, Any] = json.loads(json.dumps(COMMENTARY_SCHEMA))
COMMENTARY_SCHEMA_FOUR["properties"]["chosen_answer"]["enum"] = ["A", "B", "C", "D"]
SUMMARY_SCHEMA = _strict_schema(Summary)


class OutputError(ValueError):
    """A model answer that is not usable; the message is safe to store (no raw text)."""


def parse_commentary(text: str | None) -> Commentary:
    return _parse(Commentary, text)


def parse_summary(text: str | None) -> Summary:
    return _parse(Summary, text)


def _parse(model: type[M], text: str | None) -> M:
    if text is None or not text.strip():
        raise OutputError("empty model output")
    raw = text.strip()
    if raw.startswith("```"):
        # Some OpenAI-compatible endpoints wrap JSON in a fence despite json mode.
        raw = raw.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OutputError(f"model output is not JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(data, dict):
        raise OutputError(f"model output is JSON {type(data).__name__}, not an object")
    # JSON escapes can carry what no answer should (NUL, lone surrogates, which pydantic
    # rejects and Postgres cannot store): cleaned, not a reason to throw the answer away.
    data = {k: clean_text(v) if isinstance(v, str) else v for k, v in data.items()}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise OutputError(f"model output violates the {model.__name__} schema: {problems}") from exc
