"""Realtime (one request, one answer) chat adapters implementing ``ChatProvider``.

* :class:`OpenAICompatibleChat` - OpenAI itself and OpenAI-compatible servers (OpenRouter,
  Perplexity, DeepSeek, Ollama) through ``AsyncOpenAI(base_url=...)``.
* :class:`GeminiChat` - ``client.aio.models.generate_content``.
* :class:`MistralChat` - ``client.chat.complete_async``.

All ask for schema-constrained JSON, return a :class:`ResultLine` (text, usage, model
version; ``ok=False`` for a refusal/truncation/empty answer that did arrive) and translate
every SDK failure with :func:`worker.providers.error_policy.classify` (via ``translate_errors``).
Request bodies and response parsing are shared with the batch adapters (``jsonl``), so a
prompt sent realtime and in a batch is byte-for-byte the same request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

from google import genai
from google.genai import types
from mistralai.client import Mistral
from openai import AsyncOpenAI
from pydantic import SecretStr

from worker.providers.base import ChatRequest, ResultLine, secret_value
from worker.providers.error_policy import translate_errors
from worker.providers.gemini import make_genai_client
from worker.providers.jsonl import (
    openai_chat_body,
    parse_chat_completion,
    parse_generate_content,
)
from worker.providers.mistral import make_mistral_client

JsonMode = Literal["json_schema", "json_object"]


class OpenAICompatibleChat:
    """``ChatProvider`` over ``/chat/completions`` of OpenAI or an OpenAI-compatible API.

    ``json_mode="json_object"`` is the fallback for endpoints without ``json_schema``
    response formats: the schema then travels in the system prompt. ``max_tokens_field``
    defaults to ``max_completion_tokens`` for OpenAI and ``max_tokens`` elsewhere (the
    compatible servers implement the older name)."""

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        name: str = "openai",
        max_retries: int = 2,
        json_mode: JsonMode = "json_schema",
        max_tokens_field: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self.name = name
        self._json_mode: JsonMode = json_mode
        self._max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if name == "openai" else "max_tokens"
        )
        self._client = client or AsyncOpenAI(
            api_key=secret_value(api_key),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=dict(extra_headers) if extra_headers else None,
        )

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        body = openai_chat_body(
            request, model, json_mode=self._json_mode, max_tokens_field=self._max_tokens_field
        )
        with translate_errors(self.name):
            # The body is built (and unit-tested) in jsonl; the SDK's overloads cannot type
            # a prebuilt dict, hence the cast.
            completion = await self._client.chat.completions.create(**cast(Any, body))
        return parse_chat_completion(request.custom_id, completion.model_dump(mode="json"))

    async def aclose(self) -> None:
        await self._client.close()


class GeminiChat:
    """``ChatProvider`` over Gemini ``generateContent`` with ``responseJsonSchema``."""

    name = "gemini"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        api_version: str | None = None,
        client: genai.Client | None = None,
    ) -> None:
        self._client = client or make_genai_client(api_key, base_url, timeout, api_version)

    @staticmethod
    def config(request: ChatRequest) -> types.GenerateContentConfig:
        """The same generation settings as :func:`jsonl.gemini_generate_request`."""
        return types.GenerateContentConfig(
            system_instruction=request.system_prompt,
            response_mime_type="application/json",
            response_json_schema=request.json_schema,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
        )

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        with translate_errors(self.name):
            response = await self._client.aio.models.generate_content(
                model=model,
                contents=[types.Content(role="user", parts=[types.Part(text=request.user_prompt)])],
                config=self.config(request),
            )
        dumped = response.model_dump(mode="json", exclude_none=True, exclude={"sdk_http_response"})
        return parse_generate_content(request.custom_id, dumped)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


class MistralChat:
    """``ChatProvider`` over Mistral ``chat.complete`` with a ``json_schema`` format."""

    name = "mistral"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        json_mode: JsonMode = "json_schema",
        client: Mistral | None = None,
    ) -> None:
        self._json_mode: JsonMode = json_mode
        self._client = client or make_mistral_client(api_key, base_url, timeout)

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        body = openai_chat_body(
            request, None, json_mode=self._json_mode, max_tokens_field="max_tokens"
        )
        # Only set fields are passed: an explicit None would be sent as JSON null.
        optional: dict[str, Any] = {k: body[k] for k in ("max_tokens", "temperature") if k in body}
        with translate_errors(self.name):
            response = await self._client.chat.complete_async(
                model=model,
                messages=cast(Any, body["messages"]),
                response_format=cast(Any, body["response_format"]),
                **optional,
            )
        return parse_chat_completion(request.custom_id, response.model_dump(mode="json"))

    async def aclose(self) -> None:
        cfg = self._client.sdk_configuration
        if cfg.async_client is not None and not cfg.async_client_supplied:
            await cfg.async_client.aclose()
        cfg.async_client = None
