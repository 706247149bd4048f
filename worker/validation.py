"""The one definition of what a setting may hold (issue #11 part 4, "no poison pills").

Each rule is enforced twice from these constants: in the database, by the triggers of
``schema/0017_validation.sql`` (a bad value fails the application's statement with a
readable message), and here, in Python, on every row the worker reads (a row written before
0017, or with the triggers disabled, is reported in ``worker_errors`` and never crashes a
run). The SQL spells the same constants out; ``tests/unit/test_validation.py`` reads the
migration and fails when the two disagree.

Rules
-----
* **model keys**: lowercase letters, digits, underscore (``^[a-z0-9_]+$``); ``summary`` is
  reserved for the summary stage.
* **providers**: :data:`PROVIDER_NAMES`; batch mode only for :data:`BATCH_PROVIDERS`.
* **prompt templates**: literal text, ``{{`` / ``}}`` for literal braces, and bare
  ``{field}`` placeholders from :data:`TEMPLATE_FIELDS` - no format specs
  (``{question:>99999}`` allocated gigabytes), conversions (``{question!r}``), attribute or
  index access (``{question.__class__}`` leaked Python internals). ``{question}`` must occur
  (a template without it sends every model the same text). Rendered by
  :func:`render_template`, plain substitution: ``str.format`` never sees a user template.
* **numbers**: :data:`MAX_PROCESSING_DELAY_MINUTES` bounds the delay (a day: a larger value
  is a typo, and the deferred submit it schedules would sit in the queue for as long);
  budgets are not negative; concurrencies are whole numbers from 1 to
  :data:`MAX_CONCURRENCY`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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
MODEL_KEY_PATTERN = "^[a-z0-9_]+$"
MAX_MODEL_KEY_CHARS = 63
RESERVED_MODEL_KEYS = ("summary",)
# The placeholders a user_prompt_template may use (worker.commentary.prompts.user_prompt fills them).
TEMPLATE_FIELDS = (
    "question",
    "option_a",
    "option_b",
    "option_c",
    "option_d",
    "option_e",
    "subject",
)
REQUIRED_TEMPLATE_FIELD = "question"
MAX_PROMPT_CHARS = 20_000  # system_prompt and user_prompt_template each
MAX_PROCESSING_DELAY_MINUTES = 1440
MAX_ATTEMPTS = 100
MAX_BATCH_SIZE = 50_000
MAX_CONCURRENCY = 10_000

_MODEL_KEY = re.compile(MODEL_KEY_PATTERN)
# One token of a template: an escaped brace, a {...} group, or a lone brace.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def model_key_problem(key: object) -> str | None:
    """Why ``key`` is not a usable model key, or None."""
    if not isinstance(key, str) or not _MODEL_KEY.match(key) or len(key) > MAX_MODEL_KEY_CHARS:
        return (
            f"model key {key!r} must be 1-{MAX_MODEL_KEY_CHARS} lowercase letters, digits or "
            "underscores (e.g. 'chatgpt', 'gpt_4o')"
        )
    if key in RESERVED_MODEL_KEYS:
        return f"model key {key!r} is reserved for the summary stage"
    return None


def provider_problem(provider: object) -> str | None:
    if provider not in PROVIDER_NAMES:
        return f"unknown provider {provider!r} (supported: {', '.join(PROVIDER_NAMES)})"
    return None


def _allowed() -> str:
    return ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a usable user prompt template, or None."""
    if len(template) > MAX_PROMPT_CHARS:
        return f"is {len(template):,} characters, more than the limit of {MAX_PROMPT_CHARS:,}"
    seen: set[str] = set()
    for m in _TOKEN.finditer(template):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        inner = m.group(1)
        if inner is None:
            what = f"a lone {token!r} at position {m.start()}"
        elif inner in TEMPLATE_FIELDS:
            seen.add(inner)
            continue
        elif ":" in inner:
            what = f"{token} has a format spec"
        elif "!" in inner:
            what = f"{token} has a conversion"
        elif "." in inner or "[" in inner:
            what = f"{token} uses attribute or index access"
        else:
            what = f"{token} is not a known placeholder"
        return (
            f"{what}; a template may use only the bare placeholders {_allowed()}"
            " (write {{ and }} for literal braces)"
        )
    if REQUIRED_TEMPLATE_FIELD not in seen:
        return f"does not contain {{{REQUIRED_TEMPLATE_FIELD}}}"
    return None


def render_template(template: str, values: Mapping[str, str]) -> str:
    """``template`` with its placeholders filled: plain substitution, one pass, so a value
    is never read as a template itself and nothing but :data:`TEMPLATE_FIELDS` is looked
    up. Assumes :func:`template_problem` passed; an unknown group is left as it is."""

    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        inner = m.group(1)
        if inner is not None and inner in values and inner in TEMPLATE_FIELDS:
            return values[inner]
        return token

    return _TOKEN.sub(fill, template)


def concurrency_problems(value: Any) -> list[str]:
    """Problems of an ``ai_realtime_settings.provider_concurrency`` value."""
    if not isinstance(value, Mapping):
        return [f"provider_concurrency must be a JSON object provider -> integer (got {value!r})"]
    out: list[str] = []
    for provider, n in value.items():
        if (p := provider_problem(provider)) is not None:
            out.append(f"provider_concurrency: {p}")
        elif isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CONCURRENCY:
            out.append(
                f"provider_concurrency.{provider} must be a whole number from 1 to "
                f"{MAX_CONCURRENCY} (got {n!r})"
            )
    return out
