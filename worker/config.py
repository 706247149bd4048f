"""Process configuration: one pydantic-settings class read from the environment and `.env`.

Per-run configuration (which models, batch size, delays) lives in the database row
``ai_commentary_settings`` and is parsed by :mod:`worker.settings_row`; this module only holds
what a process needs before it can reach the database, plus provider credentials.
Secrets are ``SecretStr``: their repr is ``'**********'`` and they are never logged.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROVIDERS = ("openai", "gemini", "mistral", "openrouter", "perplexity", "deepseek", "ollama")


class Settings(BaseSettings):
    """Everything the worker process reads from its environment."""

    # env_ignore_empty: `KEY=` (as in a copied .env.example) means unset, never "".
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", env_file_encoding="utf-8", env_ignore_empty=True
    )

    # Database. Unset: the local server on 127.0.0.1:5432 when it answers, else an
    # embedded Postgres under .data/ (see worker.database).
    database_url: str | None = None

    # Provider credentials (never printed).
    openai_api_key: SecretStr | None = None
    gemini_api_key: SecretStr | None = None
    mistral_api_key: SecretStr | None = None
    openrouter_api_key: SecretStr | None = None
    perplexity_api_key: SecretStr | None = None
    deepseek_api_key: SecretStr | None = None

    # Base-URL overrides (point them at `python -m worker emulator` to run without cost).
    openai_base_url: str | None = None
    gemini_base_url: str | None = None
    mistral_base_url: str | None = None
    openrouter_base_url: str | None = None
    perplexity_base_url: str | None = None
    deepseek_base_url: str | None = None
    ollama_base_url: str | None = None

    # Alerts (silently off without both).
    pushover_user_key: SecretStr | None = None
    pushover_api_token: SecretStr | None = None
    pushover_url: str = "https://api.pushover.net/1/messages.json"

    # Worker tuning.
    worker_processes: int = Field(default=1, ge=1, le=64)
    fetch_job_polling_interval: float = Field(default=2.0, gt=0)
    instant_concurrency: int = Field(default=8, ge=1, le=1000)
    poll_min_seconds: float = Field(default=2.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    tick_seconds: int = Field(default=60, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    provider_timeout_seconds: float = Field(default=120.0, gt=0)
    # How long a batch that reported success may keep its results unreadable (a Gemini
    # batch SUCCEEDED without its responses file, an output file answering 404) before its
    # lines count as missing; polled again with the usual backoff meanwhile.
    results_grace_seconds: float = Field(default=600.0, ge=0)
    metrics_port: int | None = None
    # Connections: one LISTEN connection per process plus a pool of at most
    # min(DB_POOL_MAX, 1 + the jobs the process runs at once); pooled connections idle
    # longer than DB_POOL_IDLE_SECONDS are closed (down to one).
    db_pool_max: int = Field(default=5, ge=2, le=100)
    db_pool_idle_seconds: float = Field(default=10.0, ge=1)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    def api_key(self, provider: str) -> SecretStr | None:
        """The key for ``provider`` (Ollama needs none and gets a placeholder)."""
        if provider == "ollama":
            return SecretStr("ollama")
        key: SecretStr | None = getattr(self, f"{provider}_api_key", None)
        return key

    def base_url(self, provider: str) -> str | None:
        url: str | None = getattr(self, f"{provider}_base_url", None)
        return url


def env(name: str, default: str) -> str:
    """An environment variable read outside :class:`Settings`; empty or blank means unset
    (so ``NAME=`` in ``.env`` gives the default). Every such variable is listed with its
    default in ``.env.example`` (checked by tests/unit/test_env_example.py)."""
    raw = os.environ.get(name)
    return raw.strip() if raw is not None and raw.strip() else default


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()
