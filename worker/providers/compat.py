"""OpenAI-compatible endpoints: OpenRouter, Perplexity, DeepSeek, Ollama, and any other
server that speaks ``/chat/completions`` (set ``<PROVIDER>_BASE_URL``).

They are served by :class:`worker.providers.openai.OpenAIChat` with the endpoint's defaults
from :data:`OPENAI_COMPATIBLE`: base URL, response-format mode (DeepSeek documents only
``json_object``, so the schema travels in the prompt and the answer is validated), whether it
has an embeddings API, and the extra headers of :meth:`worker.config.Settings.provider_headers`
(OpenRouter's ``HTTP-Referer``/``X-Title``).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from pydantic import SecretStr

from worker.config import Settings, get_settings
from worker.errors import ConfigError
from worker.providers.openai import JsonMode, OpenAIChat

#: Default base URL and response-format mode of each OpenAI-compatible provider.
OPENAI_COMPATIBLE: Mapping[str, tuple[str | None, JsonMode]] = {
    "openai": (None, "json_schema"),  # SDK default https://api.openai.com/v1
    "openrouter": ("https://openrouter.ai/api/v1", "json_schema"),
    "perplexity": ("https://api.perplexity.ai", "json_schema"),
    "deepseek": ("https://api.deepseek.com/v1", "json_object"),
    "ollama": ("http://127.0.0.1:11434/v1", "json_schema"),
}

#: Providers without an embeddings API (jobs fail at once with invalid_request).
NO_EMBEDDINGS = frozenset({"perplexity", "deepseek"})

#: Providers whose embeddings are asked for as plain floats (no base64 support).
FLOAT_EMBEDDINGS = frozenset({"ollama"})

#: The proxy schemes httpx takes from ``urllib.request.getproxies()`` (its own source).
_PROXY_SCHEMES = ("http", "https", "all")


def lean_chat_enabled(settings: Settings | None = None) -> bool:
    """Whether realtime chat goes through the lean HTTP client: not when httpx would use a
    proxy (``HTTP(S)_PROXY``/``ALL_PROXY``; the lean client does not do proxies) or when
    ``REALTIME_HTTP_CLIENT=sdk``."""
    if (settings or get_settings()).realtime_http_client == "sdk":
        return False
    proxies = urllib.request.getproxies()  # what httpx (trust_env) would use
    return not any(proxies.get(scheme) for scheme in _PROXY_SCHEMES)


def compat_chat(
    name: str,
    api_key: SecretStr | str,
    base_url: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 60.0,
    json_mode: JsonMode | None = None,
    lean: bool = False,
) -> OpenAIChat:
    """The chat provider of an OpenAI-compatible endpoint (``openai`` included)."""
    if name not in OPENAI_COMPATIBLE:
        raise ConfigError(f"no OpenAI-compatible API for provider {name!r}")
    default_url, default_mode = OPENAI_COMPATIBLE[name]
    return OpenAIChat(
        api_key,
        base_url or default_url,
        timeout,
        name=name,
        json_mode=json_mode or default_mode,
        extra_headers=extra_headers or None,
        lean=lean,
        embeddings=name not in NO_EMBEDDINGS,
        float_embeddings=name in FLOAT_EMBEDDINGS,
    )
