"""Answer-level faults: a 200 whose answer the worker must not use.

An ``http_faults`` rule of kind ``truncated`` or ``refusal`` (and ``moderation`` on Gemini,
which blocks a prompt with a 200) does not replace the answer with an error: the provider
handler answers, and the answer is then changed the way the real provider would send it:

* ``truncated`` - the text cut in half (a JSON answer no longer parses), ``finish_reason``
  ``length`` (OpenAI, the OpenAI-compatible endpoints, Mistral), ``finishReason``
  ``MAX_TOKENS`` (Gemini).
* ``refusal`` - OpenAI and OpenRouter: ``message.refusal`` set, ``content`` null,
  ``finish_reason`` stop (structured-output refusals); DeepSeek, Perplexity, Ollama:
  empty content with ``finish_reason`` ``content_filter`` (DeepSeek's documented finish
  reasons); Gemini: a candidate without content, ``finishReason`` ``SAFETY`` with a blocked
  safety rating; Mistral [chosen, it has no refusal signal]: a prose refusal as the
  content, which is not the JSON that was asked for.
* ``moderation`` on Gemini - ``promptFeedback.blockReason`` ``SAFETY`` and no candidates.
"""

from __future__ import annotations

from typing import Any

ANSWER_KINDS = frozenset({"truncated", "refusal"})

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."

_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
]


def is_answer_fault(provider: str, kind: str) -> bool:
    """Whether fault ``kind`` is sent as a (changed) 200 answer rather than an error."""
    return kind in ANSWER_KINDS or (kind == "moderation" and provider == "gemini")


def _half(text: Any) -> str:
    s = text if isinstance(text, str) else ""
    return s[: max(1, len(s) // 2)] if s else ""


def chat_answer(provider: str, kind: str, resp: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` changed for answer fault ``kind``."""
    choice = resp["choices"][0]
    message = choice["message"]
    if kind == "truncated":
        message["content"] = _half(message.get("content"))
        choice["finish_reason"] = "length"
    elif provider in ("openai", "openrouter"):
        message["content"] = None
        message["refusal"] = REFUSAL_TEXT
        choice["finish_reason"] = "stop"
    elif provider == "mistral":
        message["content"] = REFUSAL_TEXT
        choice["finish_reason"] = "stop"
    else:
        message["content"] = ""
        choice["finish_reason"] = "content_filter"
    return resp


def gemini_answer(kind: str, resp: dict[str, Any]) -> dict[str, Any]:
    """A ``GenerateContentResponse`` changed for answer fault ``kind``."""
    if kind == "moderation":
        resp.pop("candidates", None)
        resp["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS}
        resp.get("usageMetadata", {}).pop("candidatesTokenCount", None)
        return resp
    cand = resp["candidates"][0]
    if kind == "truncated":
        for part in cand.get("content", {}).get("parts", []):
            if isinstance(part, dict) and "text" in part:
                part["text"] = _half(part["text"])
        cand["finishReason"] = "MAX_TOKENS"
        return resp
    cand.pop("content", None)
    cand["finishReason"] = "SAFETY"
    cand["safetyRatings"] = _SAFETY_RATINGS
    return resp
