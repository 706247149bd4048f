"""Which adapter answers a provider, built once per process from the environment - the one
entry to the provider layer for both lanes.

A route (provider, model, mode) comes from the settings row (commentary) or the job row
(realtime); credentials and base URLs come from the process settings. A provider without a
key is "not configured": its work waits and the reason is recorded, nothing is lost.
``mock`` answers locally and deterministically (development without cost,
:mod:`worker.providers.mock`).

- :meth:`Providers.batch` - the Batch API of ``openai`` | ``gemini`` | ``mistral``;
- :meth:`Providers.chat` - the chat provider (:class:`~worker.providers.base.ChatProvider`):
  ``complete`` for commentary instant models, ``converse`` and ``embed`` for ``ai_jobs``;
- :meth:`Providers.converse` / :meth:`Providers.embed` - the realtime lane's calls (each
  provider classifies its failures at its boundary with
  :func:`worker.providers.error_policy.translate_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.config import Settings, get_settings
from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.providers.base import BatchProvider, ChatProvider, Embedded, Prompt, Reply
from worker.providers.compat import lean_chat_enabled
from worker.providers.mock import MockChat
from worker.providers.registry import build_batch_provider, build_chat_provider


class Providers:
    """Adapters by provider name, created on first use and reused (SDK clients pool)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.lean_chat = lean_chat_enabled(self.settings)
        self._batch: dict[str, BatchProvider] = {}
        self._chat: dict[str, ChatProvider] = {}

    def _key(self, provider: str) -> str:
        key = self.settings.api_key(provider)
        if key is None or not key.get_secret_value():
            raise ConfigError(f"{provider} is not configured: set {provider.upper()}_API_KEY")
        return key.get_secret_value()

    def batch(self, provider: str) -> BatchProvider:
        if provider not in self._batch:
            self._batch[provider] = build_batch_provider(
                provider,
                self._key(provider),
                self.settings.base_url(provider),
                timeout=self.settings.provider_timeout_seconds,
            )
        return self._batch[provider]

    def chat(self, provider: str) -> ChatProvider:
        chat = self._chat.get(provider)
        if chat is None:
            if provider == "mock":
                chat = MockChat()
            else:
                chat = build_chat_provider(
                    provider,
                    self._key(provider),
                    self.settings.base_url(provider),
                    self.settings.provider_headers(provider),
                    timeout=self.settings.provider_timeout_seconds,
                    lean=self.lean_chat,
                )
            self._chat[provider] = chat
        return chat

    async def converse(
        self, provider: str, model: str, prompt: Prompt, keep: int | None = None
    ) -> Reply:
        """One conversation call with the last ``keep`` history turns. Raises
        ProviderError (or ConfigError for an unconfigured provider)."""
        return await self.chat(provider).converse(model, prompt, prompt.messages(keep))

    async def embed(self, provider: str, model: str, texts: Sequence[str]) -> Embedded:
        """Embed ``texts`` in one request (the caller groups within the provider's limit)."""
        embedded = await self.chat(provider).embed(model, texts)
        if len(embedded.vectors) != len(texts):
            raise ProviderError(
                f"embeddings answer has {len(embedded.vectors)} vectors for {len(texts)} inputs",
                kind=ErrorKind.UNKNOWN,
                provider=provider,
                code="embedding_count",
            )
        return embedded

    async def aclose(self) -> None:
        chats, self._chat = list(self._chat.values()), {}
        for chat in chats:
            await chat.aclose()


_providers: Providers | None = None


def providers() -> Providers:
    global _providers
    if _providers is None:
        _providers = Providers()
    return _providers


def reset_providers(p: Providers | None = None) -> None:
    """Forget cached adapters (tests, or after the environment changed)."""
    global _providers
    _providers = p
