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

from worker import validation
from worker.errors import ConfigError
from worker.validation import BATCH_PROVIDERS

# The rules themselves (model keys, providers, templates, ranges) have one definition,
# shared with the database triggers: worker.validation and schema/0017_validation.sql.


class ModelRoute(BaseModel):
    """Which provider, model and API (batch or instant) a model key uses."""

    model_config = ConfigDict(extra="ignore")

    provider: str
    model: str = Field(min_length=1)
    mode: Literal["batch", "instant"] = "batch"

    @field_validator("provider")
    @classmethod
    def _supported(cls, v: str) -> str:
        if problem := validation.provider_problem(v):
            raise ValueError(problem)
        return v

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
    batch_size: int = Field(gt=0, le=validation.MAX_BATCH_SIZE)
    processing_delay_minutes: int = Field(ge=0, le=validation.MAX_PROCESSING_DELAY_MINUTES)
    prompt_version: str = "de-v1"
    system_prompt: str | None = Field(default=None, max_length=validation.MAX_PROMPT_CHARS)
    user_prompt_template: str | None = None
    max_attempts: int = Field(default=3, gt=0, le=validation.MAX_ATTEMPTS)
    quota_disables_feature: bool = False
    daily_budget_usd: Decimal | None = Field(default=None, ge=0)
    # Model keys left out of ``models`` because their entry breaks a rule (a row written
    # before schema/0017): key -> the reason, reported by submit in worker_errors.
    dropped_models: dict[str, str] = Field(default_factory=dict)
    # Depth (schema/0021): the cheaper model set of partial-depth questions (keys not in
    # ``models`` or not enabled are simply not used), and the full-depth allowance per user
    # and period.
    partial_models: list[
        Annotated[str, StringConstraints(pattern=validation.MODEL_KEY_PATTERN)]
    ] = Field(default_factory=lambda: ["mistral", "deepseek"])
    full_allowance: int = Field(default=100, ge=0)
    allowance_period_days: int = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _known_keys(self) -> CommentarySettings:
        for key in self.models:
            if key != "summary" and (problem := validation.model_key_problem(key)):
                raise ValueError(f"models: {problem}")
        unknown = sorted(set(self.models_enabled) - set(self.models))
        if unknown:
            raise ValueError(f"models_enabled has unknown model keys: {', '.join(unknown)}")
        if "summary" in self.models:
            raise ValueError("'summary' is reserved for the summary stage")
        return self

    @field_validator("user_prompt_template")
    @classmethod
    def _template_fills(cls, v: str | None) -> str | None:
        # Checked here, not at the first prompt: a template that cannot be filled would
        # otherwise crash every submit run (bad input, issue #5 item 8), and one with a
        # format spec ran out of memory (issue #11): see worker.validation.
        if v is not None and (problem := validation.template_problem(v)):
            raise ValueError(problem)
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
        return CommentarySettings.model_validate(_without_bad_models(row))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ConfigError(f"invalid ai_commentary_settings row: {problems}") from exc


def _without_bad_models(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` without the ``models`` entries that break a rule (issue #11: one entry with
    provider ``anthropic`` stopped every submission). Such an entry is left out, with
    ``models_enabled`` for it, and named in ``dropped_models``; the other models run. Only
    a row written before schema/0017 can hold one: its trigger refuses them."""
    models = row.get("models")
    if not isinstance(models, dict):
        return row
    dropped: dict[str, str] = {}
    for key, route in models.items():
        problem = validation.model_key_problem(key) if key != "summary" else None
        if problem is None:
            try:
                ModelRoute.model_validate(route)
            except ValidationError as exc:
                problem = "; ".join(e["msg"] for e in exc.errors()[:3])
        if problem is not None:
            dropped[str(key)] = problem
    if not dropped:
        return row
    enabled = row.get("models_enabled")
    return {
        **row,
        "models": {k: v for k, v in models.items() if k not in dropped},
        "models_enabled": (
            {k: v for k, v in enabled.items() if k not in dropped}
            if isinstance(enabled, dict)
            else enabled
        ),
        "dropped_models": dropped,
    }
