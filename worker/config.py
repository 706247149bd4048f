"""Process configuration: ONE pydantic-settings class, read from the environment and `.env`.

Every variable the worker reads is a field of :class:`Settings` (breaker, alert, credit
monitor, heartbeat, tick, shutdown and realtime client tunables included); no other module
reads ``os.environ`` but for the exceptions below (tests/unit/test_config.py checks). An
empty variable (``KEY=`` as in a copied ``.env.example``) means unset, i.e. the default; an
invalid value is a set-up error naming the variable
(``python -m worker`` prints one line and exits 2) rather than a silent fallback.
``.env.example`` lists every field with its default and meaning (checked by
tests/unit/test_env_example.py).

Exceptions, read from the process environment on purpose and listed in
:data:`PLATFORM_VARIABLES`:

- the proxy and CA variables (``HTTPS_PROXY``, ``SSL_CERT_FILE``, ...) belong to the
  platform: httpx (inside every SDK) reads them from ``os.environ`` itself, so the lean
  HTTP client must decide from the same place, through the same functions
  (``urllib.request.getproxies``), or the two clients would disagree;
- ``DATABASE_URL`` is a field here too, but :func:`worker.database.resolve_database_url`
  prefers the live environment value: whatever server it resolves (possibly an embedded
  one this process started) is exported there so child processes and later callers use
  the same server.

Per-run configuration (which models, batch size, delays, attempts) lives in the database
rows ``ai_commentary_settings`` / ``ai_realtime_settings`` (:mod:`worker.commentary.settings_row`,
:mod:`worker.realtime.model`). In particular attempts are per-run policy, not process
settings: ``ai_commentary_settings.max_attempts`` for questions, ``ai_jobs.max_attempts``
(or the route's) for realtime jobs; the former ``MAX_ATTEMPTS`` variable, read by nothing,
is gone.

Secrets are ``SecretStr``: their repr is ``'**********'`` and they are never logged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROVIDERS = ("openai", "gemini", "mistral", "openrouter", "perplexity", "deepseek", "ollama")

#: Read from the process environment by httpx/ssl (and, to agree with them, by the lean
#: HTTP client), never through Settings; documented in .env.example like the fields.
PLATFORM_VARIABLES = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


class Settings(BaseSettings):
    """Everything the worker process reads from its environment."""

    # env_ignore_empty: `KEY=` (as in a copied .env.example) means unset, never "".
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", env_file_encoding="utf-8", env_ignore_empty=True
    )

    # Database. Unset: the local server on 127.0.0.1:5432 when it answers, else an
    # embedded Postgres under .data/ (see worker.database).
    database_url: str | None = None
    # The local server tried when DATABASE_URL is unset, and where an embedded Postgres
    # keeps its cluster (in pg/ below it) when that server does not answer.
    ai_worker_local_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    ai_worker_data_dir: str = ".data"
    # The database `python -m worker demo` fills (unset: ai_worker_demo on the server above).
    demo_database_url: str | None = None

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

    # Realtime clients. OpenAI's organisation and project headers (the SDK clients and the
    # lean client send the same); OpenRouter's attribution headers (both lanes);
    # `sdk` sends OpenAI-compatible realtime chat through the openai SDK instead of the
    # lean HTTP client (which a configured proxy also does).
    openai_org_id: str | None = None
    openai_project_id: str | None = None
    openrouter_referer: str = "https://github.com/pg-ai-worker"
    openrouter_title: str = "pg-ai-worker"
    realtime_http_client: Literal["lean", "sdk"] = "lean"

    # Alerts (silently off without both).
    pushover_user_key: SecretStr | None = None
    pushover_api_token: SecretStr | None = None
    pushover_url: str = "https://api.pushover.net/1/messages.json"
    # worker.ops.alerts: the same key at most once per dedup window; at most ALERT_RATE_LIMIT
    # messages per ALERT_RATE_WINDOW_SECONDS (more are held for a digest); HTTP timeout.
    alert_dedup_seconds: float = Field(default=3600.0, ge=0)
    alert_rate_limit: int = Field(default=5, ge=0)
    alert_rate_window_seconds: float = Field(default=600.0, ge=0)
    alert_http_timeout: float = Field(default=5.0, ge=0.1)
    # The day boundary of ai_commentary_settings.daily_budget_usd (an IANA zone name).
    budget_timezone: str = "UTC"

    # Circuit breakers (worker.ops.breaker): consecutive counted failures that open a
    # provider's breaker; open -> one half-open probe after the cooldown; an unresolved
    # probe is handed out again after the probe timeout.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=60.0, ge=0)
    breaker_probe_timeout_seconds: float = Field(default=60.0, ge=0)

    # OpenRouter credit monitor (worker.ops.credits, hourly).
    openrouter_credit_warn_usd: float = Field(default=5.0, ge=0)
    openrouter_credit_critical_usd: float = Field(default=1.0, ge=0)
    # None or 0: no daily-usage alert.
    openrouter_daily_usage_alert_usd: float | None = Field(default=10.0, ge=0)
    openrouter_alert_repeat_hours: float = Field(default=24.0, ge=0)
    openrouter_credit_timeout_seconds: float = Field(default=15.0, gt=0)

    # Worker tuning.
    worker_processes: int = Field(default=1, ge=1, le=64)
    fetch_job_polling_interval: float = Field(default=2.0, gt=0)
    instant_concurrency: int = Field(default=8, ge=1, le=1000)
    poll_min_seconds: float = Field(default=2.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    tick_seconds: int = Field(default=60, ge=1)
    # A worker without a heartbeat this long is dead (its Procrastinate jobs are requeued).
    worker_stalled_seconds: float = Field(default=30.0, ge=1)
    # SIGTERM: running jobs get this long to finish.
    shutdown_graceful_seconds: float = Field(default=60.0, ge=0)
    provider_timeout_seconds: float = Field(default=120.0, gt=0)
    # How long a batch that reported success may keep its results unreadable (a Gemini
    # batch SUCCEEDED without its responses file, an output file answering 404) before its
    # lines count as missing; polled again with the usual backoff meanwhile.
    results_grace_seconds: float = Field(default=600.0, ge=0)
    # A batch the provider refused for its token queue keeps its token reservation this long
    # (the provider keeps counting it for a while too; worker.commentary.budget).
    token_limit_hold_seconds: float = Field(default=10.0, ge=0)
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

    @field_validator("realtime_http_client", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "must be an IANA time zone name such as UTC or Europe/Berlin"
            ) from None
        return v.strip()

    def api_key(self, provider: str) -> SecretStr | None:
        """The key for ``provider`` (Ollama needs none and gets a placeholder)."""
        if provider == "ollama":
            return SecretStr("ollama")
        key: SecretStr | None = getattr(self, f"{provider}_api_key", None)
        return key

    def base_url(self, provider: str) -> str | None:
        url: str | None = getattr(self, f"{provider}_base_url", None)
        return url

    def provider_headers(self, provider: str) -> dict[str, str]:
        """Headers sent with every call to ``provider`` besides its key, by both lanes and
        every client: OpenRouter's attribution headers, OpenAI's organisation and project."""
        if provider == "openrouter":
            return {"HTTP-Referer": self.openrouter_referer, "X-Title": self.openrouter_title}
        if provider == "openai":
            pairs = (
                ("OpenAI-Organization", self.openai_org_id),
                ("OpenAI-Project", self.openai_project_id),
            )
            return {name: value for name, value in pairs if value}
        return {}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()
