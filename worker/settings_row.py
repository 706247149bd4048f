"""The per-run configuration: the ``ai_commentary_settings`` row, parsed and validated.

Read at the start of every submit; an invalid row is reported (worker_errors) and nothing
is submitted, rather than silently replaced by defaults as the old system did."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.errors import ConfigError

PROVIDER_NAMES = (
    "openai",
    "gemini",
    "mistral",
    "openrouter",
    "perplexity",
    "deepseek",
    "ollama",
    "mock",
)
BATCH_PROVIDERS = ("openai", "gemini", "mistral")
MODEL_KEY_PATTERN = r"^[a-z0-9_]+$"
# The placeholders a user_prompt_template may use (worker.prompts.user_prompt fills them).
TEMPLATE_FIELDS = (
    "question",
    "option_a",
    "option_b",
    "option_c",
    "option_d",
    "option_e",
    "subject",
)


class ModelRoute(BaseModel):
    """Which provider, model and API (batch or instant) a model key uses."""

    model_config = ConfigDict(extra="ignore")

    provider: Literal[
        "openai", "gemini", "mistral", "openrouter", "perplexity", "deepseek", "ollama", "mock"
    ]
    model: str = Field(min_length=1)
    mode: Literal["batch", "instant"] = "batch"

    @model_validator(mode="after")
    def _batch_needs_batch_api(self) -> ModelRoute:
        if self.mode == "batch" and self.provider not in BATCH_PROVIDERS:
            raise ValueError(f"provider {self.provider!r} has no Batch API; use mode 'instant'")
        return self


class CommentarySettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    feature_enabled: bool
    models_enabled: dict[str, bool]
    models: dict[str, ModelRoute]
    summary_model: ModelRoute
    batch_size: int = Field(gt=0, le=50_000)
    processing_delay_minutes: int = Field(ge=0)
    prompt_version: str = "de-v1"
    system_prompt: str | None = None
    user_prompt_template: str | None = None
    max_attempts: int = Field(default=3, gt=0)
    quota_disables_feature: bool = False
    daily_budget_usd: Decimal | None = None
    # Depth (schema/0021): the cheaper model set of partial-depth questions, and the full-
    # depth allowance per user and period.
    partial_models: list[Annotated[str, StringConstraints(pattern=MODEL_KEY_PATTERN)]] = Field(
        default_factory=lambda: ["mistral", "deepseek"]
    )
    full_allowance: int = Field(default=100, ge=0)
    allowance_period_days: int = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _known_keys(self) -> CommentarySettings:
        unknown = sorted(set(self.models_enabled) - set(self.models))
        if unknown:
            raise ValueError(f"models_enabled has unknown model keys: {', '.join(unknown)}")
        unknown = sorted(set(self.partial_models) - set(self.models))
        if unknown:
            raise ValueError(f"partial_models has unknown model keys: {', '.join(unknown)}")
        if "summary" in self.models:
            raise ValueError("'summary' is reserved for the summary stage")
        return self

    @field_validator("user_prompt_template")
    @classmethod
    def _template_fills(cls, v: str | None) -> str | None:
        # Checked here, not at the first prompt: a template that cannot be filled would
        # otherwise crash every submit run (bad input, issue #5 item 8).
        if v is not None:
            try:
                v.format_map(dict.fromkeys(TEMPLATE_FIELDS, ""))
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ValueError(
                    f"cannot be filled ({type(exc).__name__}: {exc}); it may use only "
                    + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
                    + " (write {{ and }} for literal braces)"
                ) from exc
        return v

    @property
    def enabled_models(self) -> list[str]:
        return sorted(k for k, on in self.models_enabled.items() if on)

    @property
    def partial_set(self) -> list[str]:
        """The models of a partial-depth question: partial_models that are enabled."""
        return sorted(set(self.partial_models) & set(self.enabled_models))

    def route(self, model_key: str) -> ModelRoute:
        return self.summary_model if model_key == "summary" else self.models[model_key]


SETTINGS_QUERY = "SELECT * FROM ai_commentary_settings ORDER BY updated_at DESC LIMIT 1"


def parse_settings(row: dict[str, Any] | None) -> CommentarySettings:
    if row is None:
        raise ConfigError("ai_commentary_settings has no row: run `python -m worker db migrate`")
    try:
        return CommentarySettings.model_validate(row)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ConfigError(f"invalid ai_commentary_settings row: {problems}") from exc
