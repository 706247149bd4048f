"""Which adapter answers a model route, built once per process from the environment.

A route (provider, model, mode) comes from the settings row; credentials and base URLs come
from the process settings. A provider without a key is "not configured": its work waits and
the reason is recorded, nothing is lost. ``mock`` answers locally and deterministically
(development without cost, :mod:`worker.providers.mock`)."""

from __future__ import annotations

from worker.config import Settings, get_settings
from worker.errors import ConfigError
from worker.providers.base import BatchProvider, ChatProvider
from worker.providers.mock import MockChat


class Providers:
    """Adapters by provider name, created on first use and reused (SDK clients pool)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._batch: dict[str, BatchProvider] = {}
        self._chat: dict[str, ChatProvider] = {}

    def _key(self, provider: str) -> str:
        key = self.settings.api_key(provider)
        if key is None or not key.get_secret_value():
            raise ConfigError(f"{provider} is not configured: set {provider.upper()}_API_KEY")
        return key.get_secret_value()

    def batch(self, provider: str) -> BatchProvider:
        if provider not in self._batch:
            from worker.providers.registry import build_batch_provider

            self._batch[provider] = build_batch_provider(
                provider,
                self._key(provider),
                self.settings.base_url(provider),
                timeout=self.settings.provider_timeout_seconds,
            )
        return self._batch[provider]

    def chat(self, provider: str) -> ChatProvider:
        if provider == "mock":
            return MockChat()
        if provider not in self._chat:
            from worker.providers.registry import build_chat_provider

            self._chat[provider] = build_chat_provider(
                provider,
                self._key(provider),
                self.settings.base_url(provider),
                self.settings.provider_headers(provider),
                timeout=self.settings.provider_timeout_seconds,
            )
        return self._chat[provider]


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
