"""The ``mock`` provider: deterministic, free, offline answers for both lanes.

Same input, same output: schema-valid JSON (or filler text) seeded by the model and the
prompt, from :mod:`worker.providers.mock_content`, the generator the emulator serves too.
Self-contained: it imports nothing of :mod:`worker.emulator`.

- :class:`MockChat` (a :class:`~worker.providers.base.ChatProvider`): ``complete`` for the
  commentary lane, ``converse`` and ``embed`` for the realtime lane (from
  :func:`chat_answer` and :func:`embeddings`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from worker.providers.base import ChatRequest, Embedded, Prompt, Reply, ResultLine, estimate_tokens
from worker.providers.mock_content import (
    count_tokens,
    embed,
    generate_json,
    plain_answer,
    seed_from,
)

NAME = "mock"

#: Size of the mock's embeddings.
EMBEDDING_DIMS = 256

#: The schema of a realtime JSON job without a schema of its own.
DEFAULT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


class MockChat:
    """Commentary lane: schema-valid JSON seeded by the model and the user prompt."""

    name = NAME

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        value = generate_json(request.json_schema, seed_from(model, request.user_prompt))
        text = json.dumps(value, ensure_ascii=False)
        return ResultLine(
            custom_id=request.custom_id,
            ok=True,
            text=text,
            input_tokens=count_tokens(request.system_prompt + request.user_prompt),
            output_tokens=count_tokens(text),
            model_version=f"mock-{model}",
        )

    async def converse(self, model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
        """Deterministic answer seeded by model and messages (schema-valid JSON for JSON
        jobs)."""
        text = chat_answer(
            model, messages, json_output=prompt.json_output, json_schema=prompt.json_schema
        )
        return Reply(text, estimate_tokens(conversation_text(messages)), estimate_tokens(text))

    async def embed(self, model: str, texts: Sequence[str]) -> Embedded:
        return Embedded(
            embeddings(model, texts, EMBEDDING_DIMS), sum(estimate_tokens(t) for t in texts)
        )

    async def aclose(self) -> None:
        return None


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The messages as one text (``role: content`` lines): what a realtime answer is
    seeded by and its input tokens are estimated from."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def chat_answer(
    model: str,
    messages: Sequence[Mapping[str, str]],
    *,
    json_output: bool,
    json_schema: dict[str, Any] | None = None,
) -> str:
    """Realtime lane: the answer to a conversation, seeded by model and messages;
    JSON valid against ``json_schema`` (or :data:`DEFAULT_JSON_SCHEMA`) for JSON jobs."""
    seed = seed_from("mock", model, conversation_text(messages))
    if json_output:
        value = generate_json(json_schema or DEFAULT_JSON_SCHEMA, seed)
        return json.dumps(value, ensure_ascii=False)
    return plain_answer(seed)


def embeddings(model: str, texts: Sequence[str], dims: int = EMBEDDING_DIMS) -> list[list[float]]:
    """Realtime lane: one deterministic unit vector per text."""
    return [embed(model, t, dims) for t in texts]
