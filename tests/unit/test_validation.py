"""worker.validation: the one definition of valid settings, and its copy in the database
triggers (schema/0017_validation.sql) - the two must agree, value for value."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from worker import validation
from worker.commentary import prompts
from worker.commentary.settings_row import parse_settings
from worker.realtime.model import RealtimeSettings

SQL = resources.files("worker.schema").joinpath("0017_validation.sql").read_text("utf-8")


def sql_array(function: str) -> list[str]:
    m = re.search(rf"FUNCTION {function}\(\).*?ARRAY\[(.*?)\]", SQL, re.S)
    assert m, function
    return re.findall(r"'([^']*)'", m.group(1))


def sql_value(name: str) -> str:
    values = set(re.findall(rf"\b{name} \w+ := '?([^;']+)'?;", SQL))
    assert len(values) == 1, (name, values)
    return values.pop()


# ----------------------------------------------------------------------------- one definition


def test_the_triggers_use_the_same_provider_sets() -> None:
    assert sql_array("worker_supported_providers") == list(validation.PROVIDER_NAMES)
    assert sql_array("worker_batch_providers") == list(validation.BATCH_PROVIDERS)


def test_the_triggers_use_the_same_template_fields_and_limits() -> None:
    m = re.search(r"fields text\[\] := ARRAY\[(.*?)\];", SQL)
    assert m
    assert re.findall(r"'([^']*)'", m.group(1)) == list(validation.TEMPLATE_FIELDS)
    assert sql_value("key_pattern") == validation.MODEL_KEY_PATTERN
    assert int(sql_value("max_key_chars")) == validation.MAX_MODEL_KEY_CHARS
    assert int(sql_value("max_delay")) == validation.MAX_PROCESSING_DELAY_MINUTES
    assert int(sql_value("max_attempts")) == validation.MAX_ATTEMPTS
    assert int(sql_value("max_prompt_chars")) == validation.MAX_PROMPT_CHARS
    assert int(sql_value("max_chars")) == validation.MAX_PROMPT_CHARS
    assert int(sql_value("max_concurrency")) == validation.MAX_CONCURRENCY


def test_the_builtin_realtime_limits_are_the_python_defaults() -> None:
    defaults = RealtimeSettings()
    assert int(sql_value("builtin_max_input_chars")) == defaults.max_input_chars
    assert int(sql_value("builtin_session_max_jobs")) == defaults.session_max_jobs


# --------------------------------------------------------------------------------- model keys


@pytest.mark.parametrize("key", ["chatgpt", "gpt_4o", "m2", "a" * 63])
def test_model_keys_accepted(key: str) -> None:
    assert validation.model_key_problem(key) is None


@pytest.mark.parametrize("key", ["Chat-GPT", "GPT-4o", "gpt-4o", "", "a b", "a" * 64, "ä"])
def test_model_keys_refused(key: str) -> None:
    problem = validation.model_key_problem(key)
    assert problem is not None and "lowercase letters, digits or underscores" in problem


# ---------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{question:>100000000000000}", "{question:>100000000000000} has a format spec"),
        ("{question:>20000000}", "has a format spec"),
        ("{question!r}", "{question!r} has a conversion"),
        ("{question.__class__.__mro__}", "uses attribute or index access"),
        ("{question[0]}", "uses attribute or index access"),
        ("{frage} {question}", "{frage} is not a known placeholder"),
        ("{} {question}", "{} is not a known placeholder"),
        ("{question", "a lone '{' at position 0"),
        ("{question}}", "a lone '}' at position 10"),
        ("Frage: {{question}}", "does not contain {question}"),
        ("x" * 20_001, "is 20,001 characters"),
    ],
)
def test_templates_refused(template: str, problem: str) -> None:
    found = validation.template_problem(template)
    assert found is not None and problem in found


def test_a_template_is_filled_by_plain_substitution() -> None:
    q = prompts.QuestionText(
        question="Was ist {question:>99}?",
        option_a="{0}",
        option_b="b",
        option_c="c",
        option_d="d",
        option_e="",
        subject="Physiologie",
    )
    template = "{{literal}} {subject}: {question} A={option_a} E={option_e} }}"
    assert validation.template_problem(template) is None
    # A value is never read as a template; braces in the text stay as they are.
    assert prompts.user_prompt(q, template) == (
        "{literal} Physiologie: Was ist {question:>99}? A={0} E=(keine Option E) }"
    )


def test_the_default_template_is_valid() -> None:
    assert validation.template_problem(prompts.USER_DE_V1) is None


# --------------------------------------------------------------------------- settings parsing


def settings_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "feature_enabled": True,
        "models_enabled": {"chatgpt": True},
        "models": {"chatgpt": {"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"}},
        "summary_model": {"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"},
        "batch_size": 40,
        "processing_delay_minutes": 3,
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"user_prompt_template": "{question:>20000000}"}, "has a format spec"),
        ({"processing_delay_minutes": 1441}, "processing_delay_minutes"),
        ({"daily_budget_usd": -1}, "daily_budget_usd"),
        ({"max_attempts": 101}, "max_attempts"),
    ],
)
def test_the_worker_refuses_what_the_trigger_refuses(
    changes: dict[str, object], problem: str
) -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid ai_commentary_settings row") as info:
        parse_settings(settings_row(**changes))
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("key", "route", "problem"),
    [
        ("Chat-GPT", {"provider": "openai", "model": "gpt-4o"}, "model key 'Chat-GPT' must be"),
        ("GPT-4o", {"provider": "openai", "model": "gpt-4o"}, "model key 'GPT-4o' must be"),
        (
            "claude",
            {"provider": "anthropic", "model": "c", "mode": "instant"},
            "unknown provider 'anthropic'",
        ),
        ("px", {"provider": "perplexity", "model": "sonar"}, "has no Batch API"),
    ],
)
def test_a_bad_model_entry_is_left_out_and_the_others_run(
    key: str, route: dict[str, str], problem: str
) -> None:
    base = settings_row()
    settings = parse_settings(
        settings_row(
            models={**base["models"], key: route},  # type: ignore[dict-item]
            models_enabled={"chatgpt": True, key: True},
        )
    )
    assert settings.enabled_models == ["chatgpt"]
    assert list(settings.models) == ["chatgpt"]
    assert list(settings.dropped_models) == [key]
    assert problem in settings.dropped_models[key]


# ---------------------------------------------------------------------- realtime settings


def test_realtime_settings_without_a_row_use_the_builtin_limits() -> None:
    settings, problems = RealtimeSettings.parse(None)
    assert settings == RealtimeSettings()
    assert problems == ["ai_realtime_settings has no row; the built-in limits apply"]


def test_a_bad_concurrency_value_is_reported_and_ignored() -> None:
    settings, problems = RealtimeSettings.parse(
        {"claim_batch": 100, "provider_concurrency": {"openai": "abc", "mock": 7, "x": 1}}
    )
    assert settings.claim_batch == 100
    assert settings.provider_concurrency == {"mock": 7}
    assert settings.concurrency("openai") == settings.default_concurrency
    assert problems == [
        "ai_realtime_settings.provider_concurrency.openai must be a whole number from 1 to "
        "10000 (got 'abc'); ignored",
        "ai_realtime_settings.provider_concurrency: unknown provider 'x' (supported: "
        + ", ".join(validation.PROVIDER_NAMES)
        + "); ignored",
    ]


def test_a_bad_number_is_replaced_by_its_builtin_value() -> None:
    settings, problems = RealtimeSettings.parse({"max_in_flight": "many", "claim_batch": 2.5})
    assert (settings.max_in_flight, settings.claim_batch) == (2000, 500)
    assert len(problems) == 2
