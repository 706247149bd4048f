"""Realtime provider calls for ai_jobs: chat with a full message list, and embeddings.

The commentary adapters (:mod:`worker.providers.instant`) answer one system + one user
prompt; realtime jobs need conversation history and plain-text answers, so this module
calls the official SDKs directly - ``openai.AsyncOpenAI`` for OpenAI and the
OpenAI-compatible endpoints (OpenRouter with its ``HTTP-Referer``/``X-Title`` headers,
Perplexity, DeepSeek, Ollama), ``genai.Client(...).aio`` for Gemini and
``Mistral(...).chat.complete_async`` / ``embeddings.create_async`` for Mistral - pointed at
the base URLs of :func:`worker.config.get_settings`. Every SDK failure is translated with
:func:`worker.providers.error_policy.classify`, and every answer that arrives is judged by
:func:`worker.providers.answer_rules.check_answer` - the rules the commentary lane applies:
a truncated answer raises ``truncated``, a refusal or blocked prompt ``content_refused``.

SDK-internal retries are off (``max_retries=0``): a failed call frees its concurrency slot
at once and the job goes back to the queue with our own backoff, which honours
``retry-after`` and is visible in the table.

The one exception is the hot path, chat on OpenAI and the OpenAI-compatible endpoints: it
goes through :class:`~worker.providers.lean_http.LeanClient` (plain JSON over pooled
HTTP/1.1 keep-alive), because the SDK's per-call CPU (~1.5 ms) capped a worker process at
about 600 calls/s (see that module). The request body is the same dict the SDK would send,
errors go through the same :func:`worker.providers.error_policy.classify_http`, and both send the
same extra headers (:meth:`worker.config.Settings.provider_headers`: ``OPENAI_ORG_ID``,
``OPENAI_PROJECT_ID``, OpenRouter's attribution headers). The SDK is used instead when
httpx would use a proxy (``HTTP(S)_PROXY``/``ALL_PROXY``, read by the same
``urllib.request.getproxies``: the lean client does not do proxies) or when
``REALTIME_HTTP_CLIENT=sdk``. Embeddings keep the SDK: one request
carries up to 2048 texts, so its overhead does not matter there, and it decodes base64.

``mock`` answers locally and deterministically (same input, same output), for development
without cost.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from google import genai
from google.genai import types
from mistralai.client import Mistral
from openai import AsyncOpenAI, omit

from worker.config import Settings, get_settings
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.providers import mock
from worker.providers.answer_rules import check_answer, schema_instruction
from worker.providers.error_policy import classify, classify_http
from worker.providers.gemini import make_genai_client
from worker.providers.lean_http import LeanClient, Response
from worker.providers.mistral import make_mistral_client
from worker.providers.registry import OPENAI_COMPATIBLE
from worker.realtime.sessions import Prompt

#: Providers without an embeddings API (jobs fail at once with invalid_request).
NO_EMBEDDINGS = frozenset({"perplexity", "deepseek"})

#: Most inputs one embeddings request may carry, per provider (documented limits: OpenAI
#: 2048 inputs; Gemini batchEmbedContents 100 requests; Mistral and Ollama kept moderate).
EMBEDDING_GROUP_LIMITS: dict[str, int] = {
    "openai": 2048,
    "openrouter": 2048,
    "gemini": 100,
    "mistral": 128,
    "ollama": 256,
    "mock": 2048,
}
#: Token budget of one embeddings request (OpenAI allows 300k; stay well below).
EMBEDDING_GROUP_TOKENS = 100_000

MOCK_EMBEDDING_DIMS = mock.EMBEDDING_DIMS

#: SDK clients per OpenAI-compatible provider (see RealtimeClients.openai_compat).
CLIENT_SHARDS = 8

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
#: The proxy schemes httpx takes from ``urllib.request.getproxies()`` (its own source).
_PROXY_SCHEMES = ("http", "https", "all")


def lean_chat_enabled(settings: Settings | None = None) -> bool:
    """Whether OpenAI-compatible chat goes through the lean client (see the module doc)."""
    if (settings or get_settings()).realtime_http_client == "sdk":
        return False
    proxies = urllib.request.getproxies()  # what httpx (trust_env) would use
    return not any(proxies.get(scheme) for scheme in _PROXY_SCHEMES)


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


@dataclass(frozen=True)
class Reply:
    text: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    input_tokens: int


def _json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema, "strict": True},
    }


class RealtimeClients:
    """SDK clients per provider, created on first use and reused (connection pools)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._openai: dict[str, list[AsyncOpenAI]] = {}
        self._lean: dict[str, LeanClient] = {}
        self.lean_chat = lean_chat_enabled(self.settings)
        self._turn = 0
        self._gemini: genai.Client | None = None
        self._mistral: Mistral | None = None

    def _key(self, provider: str) -> str:
        key = self.settings.api_key(provider)
        if key is None or not key.get_secret_value():
            raise ConfigError(f"{provider} is not configured: set {provider.upper()}_API_KEY")
        return key.get_secret_value()

    def openai_compat(self, provider: str) -> AsyncOpenAI:
        """One of :data:`CLIENT_SHARDS` clients of ``provider``, round-robin.

        httpcore's pool scans every pooled connection on each request (``has_expired`` polls
        each socket), so one client with 100 busy connections spends more CPU on the scan
        than on the request; a few smaller pools keep that cost flat."""
        shards = self._openai.get(provider)
        if shards is None:
            if provider not in OPENAI_COMPATIBLE:
                raise ConfigError(f"no OpenAI-compatible API for provider {provider!r}")
            default_url, _mode = OPENAI_COMPATIBLE[provider]
            key = self._key(provider)
            shards = [
                AsyncOpenAI(
                    api_key=key,
                    base_url=self.settings.base_url(provider) or default_url,
                    timeout=self.settings.provider_timeout_seconds,
                    max_retries=0,
                    default_headers=self.settings.provider_headers(provider) or None,
                )
                for _ in range(CLIENT_SHARDS)
            ]
            self._openai[provider] = shards
        self._turn += 1
        return shards[self._turn % len(shards)]

    def lean(self, provider: str) -> LeanClient:
        """The lean HTTP client of an OpenAI-compatible provider (one pool per provider)."""
        client = self._lean.get(provider)
        if client is None:
            if provider not in OPENAI_COMPATIBLE:
                raise ConfigError(f"no OpenAI-compatible API for provider {provider!r}")
            default_url, _mode = OPENAI_COMPATIBLE[provider]
            headers = {
                "Authorization": f"Bearer {self._key(provider)}",
                **self.settings.provider_headers(provider),
            }
            url = self.settings.base_url(provider) or default_url or OPENAI_DEFAULT_URL
            try:
                client = LeanClient(url, headers)
            except ValueError as exc:
                raise ConfigError(f"{provider}: {exc}") from exc
            self._lean[provider] = client
        return client

    def gemini(self) -> genai.Client:
        if self._gemini is None:
            self._gemini = make_genai_client(
                self._key("gemini"),
                self.settings.base_url("gemini"),
                self.settings.provider_timeout_seconds,
            )
        return self._gemini

    def mistral(self) -> Mistral:
        if self._mistral is None:
            self._mistral = make_mistral_client(
                self._key("mistral"),
                self.settings.base_url("mistral"),
                self.settings.provider_timeout_seconds,
            )
        return self._mistral

    # ------------------------------------------------------------------ chat

    async def chat(
        self, provider: str, model: str, prompt: Prompt, keep: int | None = None
    ) -> Reply:
        """One chat call with the last ``keep`` history turns. Raises ProviderError (or
        ConfigError for an unconfigured provider)."""
        messages = prompt.messages(keep)
        if provider == "mock":
            return mock_chat(model, prompt, messages)
        try:
            if provider == "gemini":
                return await self._gemini_chat(model, prompt, messages)
            if provider == "mistral":
                return await self._mistral_chat(model, prompt, messages)
            return await self._openai_chat(provider, model, prompt, messages)
        except (ProviderError, ConfigError):
            raise
        except Exception as exc:
            raise classify(exc, provider) from exc

    async def _openai_chat(
        self, provider: str, model: str, prompt: Prompt, messages: list[dict[str, str]]
    ) -> Reply:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if prompt.json_output:
            _url, mode = OPENAI_COMPATIBLE.get(provider, (None, "json_schema"))
            if prompt.json_schema is not None and mode == "json_schema":
                body["response_format"] = _json_schema_format(prompt.json_schema)
            else:
                # json_object-only endpoints (DeepSeek): the schema travels in the prompt.
                body["response_format"] = {"type": "json_object"}
                if prompt.json_schema is not None:
                    hint = schema_instruction(prompt.json_schema)
                    body["messages"] = [{"role": "system", "content": hint}, *messages]
        if prompt.max_output_tokens is not None:
            field = "max_completion_tokens" if provider == "openai" else "max_tokens"
            body[field] = prompt.max_output_tokens
        if prompt.temperature is not None:
            body["temperature"] = prompt.temperature
        if self.lean_chat:
            resp = await self.lean(provider).post_json("/chat/completions", body)
            return _lean_reply(provider, resp, messages)
        completion = await self.openai_compat(provider).chat.completions.create(**cast(Any, body))
        choice = completion.choices[0] if completion.choices else None
        text = choice.message.content if choice is not None else None
        finish = choice.finish_reason if choice is not None else None
        usage = completion.usage
        return _reply(
            provider,
            text,
            finish,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            messages,
            refusal=choice.message.refusal if choice is not None else None,
        )

    async def _mistral_chat(
        self, model: str, prompt: Prompt, messages: list[dict[str, str]]
    ) -> Reply:
        extra: dict[str, Any] = {}
        if prompt.json_output:
            extra["response_format"] = (
                _json_schema_format(prompt.json_schema)
                if prompt.json_schema is not None
                else {"type": "json_object"}
            )
        if prompt.max_output_tokens is not None:
            extra["max_tokens"] = prompt.max_output_tokens
        if prompt.temperature is not None:
            extra["temperature"] = prompt.temperature
        response = await self.mistral().chat.complete_async(
            model=model, messages=cast(Any, messages), **extra
        )
        choice = response.choices[0] if response.choices else None
        content = choice.message.content if choice is not None and choice.message else None
        text = content if isinstance(content, str) or content is None else str(content)
        usage = response.usage
        return _reply(
            "mistral",
            text,
            str(choice.finish_reason) if choice is not None else None,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            messages,
        )

    async def _gemini_chat(
        self, model: str, prompt: Prompt, messages: list[dict[str, str]]
    ) -> Reply:
        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in messages
            if m["role"] != "system"
        ]
        config = types.GenerateContentConfig(
            system_instruction=prompt.system or None,
            response_mime_type="application/json" if prompt.json_output else None,
            response_json_schema=prompt.json_schema if prompt.json_output else None,
            max_output_tokens=prompt.max_output_tokens,
            temperature=prompt.temperature,
        )
        response = await self.gemini().aio.models.generate_content(
            model=model, contents=cast(Any, contents), config=config
        )
        finish = None
        if response.candidates:
            fr = response.candidates[0].finish_reason
            finish = str(fr.value if hasattr(fr, "value") else fr) if fr is not None else None
        block = None
        if response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            br = response.prompt_feedback.block_reason
            block = str(br.value if hasattr(br, "value") else br)
        meta = response.usage_metadata
        text: str | None
        try:
            text = response.text
        except ValueError:
            text = None
        return _reply(
            "gemini",
            text,
            finish,
            meta.prompt_token_count if meta else None,
            meta.candidates_token_count if meta else None,
            messages,
            block_reason=block,
        )

    # ------------------------------------------------------------------ embeddings

    async def embed(self, provider: str, model: str, texts: Sequence[str]) -> Embedded:
        """Embed ``texts`` in one request (the caller groups within the provider's limit)."""
        if provider in NO_EMBEDDINGS:
            raise ProviderError(
                f"{provider} has no embeddings API",
                kind=ErrorKind.INVALID_REQUEST,
                provider=provider,
                code="no_embeddings_api",
            )
        if provider == "mock":
            return mock_embed(model, texts)
        try:
            if provider == "gemini":
                result = await self.gemini().aio.models.embed_content(
                    model=model, contents=cast(Any, list(texts))
                )
                vectors = [list(e.values or []) for e in (result.embeddings or [])]
                tokens = sum(estimate_tokens(t) for t in texts)
            elif provider == "mistral":
                response = await self.mistral().embeddings.create_async(
                    model=model, inputs=list(texts)
                )
                data = sorted(response.data, key=lambda d: d.index or 0)
                vectors = [list(d.embedding or []) for d in data]
                tokens = response.usage.prompt_tokens or 0
            else:
                # base64 (the SDK's default, decoded by the SDK) is ~4x smaller on the wire
                # and far cheaper to parse than JSON floats; Ollama gets plain floats.
                emb = await self.openai_compat(provider).embeddings.create(
                    model=model,
                    input=list(texts),
                    encoding_format="float" if provider == "ollama" else omit,
                )
                vectors = [list(d.embedding) for d in sorted(emb.data, key=lambda d: d.index)]
                tokens = emb.usage.prompt_tokens if emb.usage else 0
        except (ProviderError, ConfigError):
            raise
        except Exception as exc:
            raise classify(exc, provider) from exc
        if len(vectors) != len(texts):
            raise ProviderError(
                f"embeddings answer has {len(vectors)} vectors for {len(texts)} inputs",
                kind=ErrorKind.UNKNOWN,
                provider=provider,
                code="embedding_count",
            )
        return Embedded(vectors, int(tokens))

    async def aclose(self) -> None:
        for lean in self._lean.values():
            await lean.aclose()
        self._lean.clear()
        for shards in self._openai.values():
            for client in shards:
                await client.close()
        self._openai.clear()
        if self._gemini is not None:
            await self._gemini.aio.aclose()
            self._gemini = None
        if self._mistral is not None:
            cfg = self._mistral.sdk_configuration
            if cfg.async_client is not None and not cfg.async_client_supplied:
                await cfg.async_client.aclose()
            cfg.async_client = None
            self._mistral = None


def _reply(
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
    """The answer, or the ProviderError of :func:`answer_rules.check_answer` (the rules the
    commentary lane applies to the same answer)."""
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


def _lean_reply(provider: str, resp: Response, messages: list[dict[str, str]]) -> Reply:
    """A chat completion answer of the lean client (what the SDK path reads, from plain
    JSON); an error answer is classified exactly as the SDK's ``APIStatusError`` would be."""
    if resp.status >= 300:
        raise classify_http(provider, resp.status, resp.body, resp.headers)
    try:
        data = resp.json()
    except ValueError as exc:
        raise ProviderError(
            f"the answer is not JSON: {exc}",
            kind=ErrorKind.UNKNOWN,
            provider=provider,
            status_code=resp.status,
            code="response_validation",
        ) from exc
    if not isinstance(data, dict):
        data = {}
    choices = data.get("choices")
    if not choices and isinstance(data.get("error"), dict):
        # An error in a 2xx envelope (some OpenAI-compatible gateways): classify it by the
        # code it carries, as a server error when that is not an HTTP status.
        code = data["error"].get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise classify_http(provider, status, data, resp.headers)
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return _reply(
        provider,
        content if isinstance(content, str) else None,
        finish if isinstance(finish, str) else None,
        prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens if isinstance(completion_tokens, int) else None,
        messages,
        refusal=refusal if isinstance(refusal, str) else None,
    )


def mock_chat(model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
    """Deterministic answer seeded by model and messages (schema-valid JSON for JSON jobs)."""
    text = mock.chat_answer(
        model, messages, json_output=prompt.json_output, json_schema=prompt.json_schema
    )
    return Reply(text, estimate_tokens(mock.conversation_text(messages)), estimate_tokens(text))


def mock_embed(model: str, texts: Sequence[str]) -> Embedded:
    return Embedded(
        mock.embeddings(model, texts, MOCK_EMBEDDING_DIMS),
        sum(estimate_tokens(t) for t in texts),
    )


def monotonic_ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
