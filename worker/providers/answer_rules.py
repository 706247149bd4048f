"""One set of answer rules for both lanes: when an answer that *did* arrive is unusable.

Used by the commentary lane (:mod:`worker.providers.jsonl`, so batch lines and the instant
models) and by the realtime lane
(``converse`` of every chat provider, SDK and lean HTTP paths alike):

* **refusal** - OpenAI's ``message.refusal``, ``finish_reason=content_filter`` (OpenAI,
  DeepSeek, OpenRouter), Gemini's ``promptFeedback.blockReason`` and the Gemini finish reasons
  of :data:`GEMINI_REFUSAL_REASONS` -> :attr:`ErrorKind.CONTENT_REFUSED`, code
  ``content_refused``: that request fails, never the provider.
* **truncation** - ``finish_reason`` ``length`` (OpenAI and compatible), ``model_length``
  (Mistral), ``MAX_TOKENS`` (Gemini) -> :attr:`ErrorKind.TRUNCATED`, code ``truncated``: the
  JSON is cut off; a bigger ``max_output_tokens`` (or a shorter input) is needed.
* **empty** - no text at all -> :attr:`ErrorKind.UNKNOWN`, code ``empty_response`` (retried
  with a bounded attempt count).

JSON-object mode (DeepSeek; any endpoint without ``json_schema`` response formats) cannot
constrain the answer, so the schema travels in the system prompt
(:func:`schema_instruction`) and the answer is validated (:func:`schema_problem`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from worker.errors import ErrorKind, ProviderError
from worker.providers.base import Reply, estimate_tokens

#: Finish reasons meaning "cut off at the output token limit".
TRUNCATED_FINISH = frozenset({"length", "model_length", "MAX_TOKENS"})

#: OpenAI-style finish reasons meaning "the content filter stopped the answer".
REFUSAL_FINISH = frozenset({"content_filter"})

#: Gemini finish reasons / block reasons that mean the model or its filter refused. ``OTHER``
#: counts only as a *block* reason (promptFeedback.blockReason OTHER: blocked for an
#: unlisted reason); as a finish reason it is not a refusal.
GEMINI_REFUSAL_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "OTHER",
    }
)
_GEMINI_REFUSAL_FINISH = GEMINI_REFUSAL_REASONS - {"OTHER"}

JSON_OBJECT_INSTRUCTION = (
    "Answer with one JSON object only, no prose, valid against this JSON Schema:\n{schema}"
)


@dataclass(frozen=True)
class AnswerProblem:
    """Why an answer that arrived is unusable: a ResultLine ``error_code`` and its kind."""

    code: str
    kind: ErrorKind
    message: str


def _bare(finish: str | None) -> str | None:
    # SDK enums may print as "FinishReason.SAFETY"
    return finish.rsplit(".", 1)[-1] if isinstance(finish, str) else None


def check_answer(
    text: str | None,
    finish_reason: str | None,
    *,
    refusal: str | None = None,
    block_reason: str | None = None,
) -> AnswerProblem | None:
    """The problem with an answer, or None when ``text`` is usable. Checked in this order:
    prompt blocked, refusal, truncation, empty."""
    finish = _bare(finish_reason)
    block = _bare(block_reason)
    if block:
        return AnswerProblem(
            "content_refused", ErrorKind.CONTENT_REFUSED, f"prompt blocked: {block}"
        )
    if refusal:
        return AnswerProblem("content_refused", ErrorKind.CONTENT_REFUSED, str(refusal)[:500])
    if finish in REFUSAL_FINISH or finish in _GEMINI_REFUSAL_FINISH:
        return AnswerProblem(
            "content_refused", ErrorKind.CONTENT_REFUSED, f"the model refused (finish {finish})"
        )
    if finish in TRUNCATED_FINISH:
        return AnswerProblem(
            "truncated",
            ErrorKind.TRUNCATED,
            f"the answer was cut off at the output token limit (finish {finish})",
        )
    if not text:
        return AnswerProblem("empty_response", ErrorKind.UNKNOWN, f"empty answer (finish {finish})")
    return None


def schema_instruction(schema: dict[str, Any]) -> str:
    """The system-prompt text carrying ``schema`` for JSON-object-mode endpoints."""
    return JSON_OBJECT_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator | None:
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None  # not ours to judge: the template's schema was accepted upstream
    return Draft202012Validator(schema)


def schema_problem(value: Any, schema: dict[str, Any]) -> AnswerProblem | None:
    """A parsed JSON answer checked against ``schema`` (JSON Schema 2020-12)."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return None
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "$"
    return AnswerProblem(
        "invalid_output",
        ErrorKind.UNKNOWN,
        f"the answer violates the JSON schema at {where}: {error.message[:300]}",
    )


def to_reply(
    provider: str,
    text: str | None,
    finish: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    messages: list[dict[str, str]],
    *,
    refusal: str | None = None,
    block_reason: str | None = None,
) -> Reply:
    """A conversation answer, or the ProviderError of :func:`check_answer` (the rules the
    commentary lane applies to the same answer). Missing usage is estimated."""
    problem = check_answer(text, finish, refusal=refusal, block_reason=block_reason)
    if problem is not None or not text:
        problem = problem or check_answer(None, finish)
        assert problem is not None
        raise ProviderError(
            problem.message, kind=problem.kind, provider=provider, code=problem.code
        )
    return Reply(
        text=text,
        input_tokens=input_tokens
        if input_tokens is not None
        else estimate_tokens(" ".join(m["content"] for m in messages)),
        output_tokens=output_tokens if output_tokens is not None else estimate_tokens(text),
    )
