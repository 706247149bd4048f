"""Build provider adapters from configuration.

Which provider (and which API - batch or realtime) serves a model is data: a
:class:`ProviderConfig` says how to reach a provider; which provider and API answer a
model is the settings row's route (:class:`worker.commentary.settings_row.ModelRoute`). Nothing else
in the worker needs to know adapter classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from worker.errors import ConfigError
from worker.providers.base import BatchProvider, ChatProvider
from worker.providers.gemini import GeminiBatch
from worker.providers.instant import GeminiChat, JsonMode, MistralChat, OpenAICompatibleChat
from worker.providers.mistral import MistralBatch
from worker.providers.openai import OpenAIBatch

BATCH_PROVIDERS: Mapping[str, Callable[..., BatchProvider]] = {
    "openai": OpenAIBatch,
    "gemini": GeminiBatch,
    "mistral": MistralBatch,
}

#: OpenAI-compatible realtime endpoints: default base URL and response-format mode.
#: DeepSeek documents only ``json_object`` mode, so the schema goes into the prompt there.
OPENAI_COMPATIBLE: Mapping[str, tuple[str | None, JsonMode]] = {
    "openai": (None, "json_schema"),  # SDK default https://api.openai.com/v1
    "openrouter": ("https://openrouter.ai/api/v1", "json_schema"),
    "perplexity": ("https://api.perplexity.ai", "json_schema"),
    "deepseek": ("https://api.deepseek.com/v1", "json_object"),
    "ollama": ("http://127.0.0.1:11434/v1", "json_schema"),
}

CHAT_PROVIDERS = (*OPENAI_COMPATIBLE, "gemini", "mistral")


class ProviderConfig(BaseModel):
    """How to reach one provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    api_key: SecretStr
    base_url: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    extra_headers: dict[str, str] | None = None
    json_mode: JsonMode | None = None  # None: the provider's default (OPENAI_COMPATIBLE)


def build_batch_provider(
    name: str, api_key: SecretStr | str, base_url: str | None = None, *, timeout: float = 60.0
) -> BatchProvider:
    """A Batch API adapter for ``openai`` | ``gemini`` | ``mistral``."""
    factory = BATCH_PROVIDERS.get(name)
    if factory is None:
        raise ConfigError(f"no batch API for provider {name!r} (have {sorted(BATCH_PROVIDERS)})")
    return factory(api_key, base_url, timeout)


def build_chat_provider(
    name: str,
    api_key: SecretStr | str,
    base_url: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 60.0,
    json_mode: JsonMode | None = None,
) -> ChatProvider:
    """A realtime chat adapter for any provider in :data:`CHAT_PROVIDERS`."""
    if name == "gemini":
        return GeminiChat(api_key, base_url, timeout)
    if name == "mistral":
        return MistralChat(api_key, base_url, timeout, json_mode=json_mode or "json_schema")
    if name not in OPENAI_COMPATIBLE:
        raise ConfigError(f"no chat API for provider {name!r} (have {sorted(CHAT_PROVIDERS)})")
    default_url, default_mode = OPENAI_COMPATIBLE[name]
    return OpenAICompatibleChat(
        api_key,
        base_url or default_url,
        timeout,
        name=name,
        json_mode=json_mode or default_mode,
        extra_headers=extra_headers or None,
    )


def batch_provider_from_config(cfg: ProviderConfig) -> BatchProvider:
    return build_batch_provider(cfg.name, cfg.api_key, cfg.base_url, timeout=cfg.timeout)


def chat_provider_from_config(cfg: ProviderConfig) -> ChatProvider:
    return build_chat_provider(
        cfg.name,
        cfg.api_key,
        cfg.base_url,
        cfg.extra_headers,
        timeout=cfg.timeout,
        json_mode=cfg.json_mode,
    )
