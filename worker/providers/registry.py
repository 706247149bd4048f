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
from worker.providers.compat import OPENAI_COMPATIBLE, compat_chat
from worker.providers.gemini import GeminiBatch, GeminiChat
from worker.providers.mistral import MistralBatch, MistralChat
from worker.providers.openai import JsonMode, OpenAIBatch

BATCH_PROVIDERS: Mapping[str, Callable[..., BatchProvider]] = {
    "openai": OpenAIBatch,
    "gemini": GeminiBatch,
    "mistral": MistralBatch,
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
    lean: bool = False,
) -> ChatProvider:
    """The chat provider (both lanes) of any provider in :data:`CHAT_PROVIDERS`.
    ``lean``: realtime conversations of OpenAI-compatible endpoints go through the lean
    HTTP client (:func:`worker.providers.compat.lean_chat_enabled`)."""
    if name == "gemini":
        return GeminiChat(api_key, base_url, timeout)
    if name == "mistral":
        return MistralChat(api_key, base_url, timeout)
    if name not in OPENAI_COMPATIBLE:
        raise ConfigError(f"no chat API for provider {name!r} (have {sorted(CHAT_PROVIDERS)})")
    return compat_chat(
        name,
        api_key,
        base_url,
        extra_headers,
        timeout=timeout,
        json_mode=json_mode,
        lean=lean,
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
