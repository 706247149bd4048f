"""The one redaction step for text that leaves the worker's hands.

Every text written to an error column, ``worker_errors``, ``worker_alerts``, Pushover,
``status`` output or a log line passes through :func:`redact` first. Provider error bodies
are the usual carrier: some gateways echo the key they received ("invalid key sk-…",
"…?key=AIza…", "Authorization: Bearer …").

What is replaced by ``[REDACTED]``:

- every configured secret, verbatim and percent-encoded, whatever its length (the
  ``SecretStr`` settings: provider API keys, the Pushover token and user key, and the
  password of ``DATABASE_URL``), plus anything registered with :func:`register_secret`;
  values shorter than :data:`MIN_SECRET_LENGTH` are skipped, since redacting every "ab"
  in every text would destroy the text and protects nothing;
- ``Bearer <token>``, ``sk-…`` (OpenAI-style), ``AIza…`` (Google API keys), and
  ``key=…`` / ``api_key=…`` / ``token=…`` query or form parameters, and JSON-ish
  ``"api_key": "…"`` pairs.

Logging: :func:`install_log_redaction` wraps the log record factory so every record's
message and traceback is redacted when it is created, whichever handler prints it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

MARK = "[REDACTED]"
MIN_SECRET_LENGTH = 4

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer)\s+(?!\[REDACTED\])[^\s\"',;}\]]+"), rf"\1 {MARK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), f"sk-{MARK}"),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{8,}"), MARK),
    (
        re.compile(
            r"(?i)\b((?:x-goog-)?(?:api[_-]?)?key|(?:access_|auth_|api_)?token|secret|password)"
            r"(=|%3D)(?!\[REDACTED\])[^&\s\"'<>,;)}\]]+"
        ),
        rf"\1\2{MARK}",
    ),
    (
        re.compile(
            r"(?i)([\"']?\b(?:x-goog-api-key|api[_-]?key|authorization|access_token|api_token)"
            r"[\"']?\s*:\s*[\"']?)(?!\[REDACTED\])[^\s\"',;}\]]+"
        ),
        rf"\1{MARK}",
    ),
)

_extra: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Also redact ``value`` from now on (a secret that does not come from the settings)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _extra.add(value)


def _configured_secrets() -> tuple[str, ...]:
    # Lazy on purpose: `import worker` installs the log redaction (worker/__init__.py), and
    # the settings (pydantic-settings, the environment) are read only when a text is redacted.
    from pydantic import SecretStr

    from worker.config import get_settings

    values: set[str] = set(_extra)
    try:
        s = get_settings()
    except Exception:  # invalid settings must not break redaction of the error about them
        return tuple(sorted(values))
    for name in type(s).model_fields:
        v = getattr(s, name, None)
        if isinstance(v, SecretStr):
            values.add(v.get_secret_value())
    if s.database_url:
        try:
            password = urlsplit(s.database_url).password
        except ValueError:
            password = None
        if password:
            values.add(password)
    return tuple(sorted(v for v in values if len(v) >= MIN_SECRET_LENGTH))


@lru_cache(maxsize=8)
def _secret_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    forms: set[str] = set()
    for v in secrets:
        forms.update({v, quote(v, safe=""), quote_plus(v)})
    if not forms:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def redact(text: str | None) -> str:
    """``text`` with every secret replaced (``None`` becomes ``""``)."""
    if not text:
        return ""
    out = str(text)
    pattern = _secret_pattern(_configured_secrets())
    if pattern is not None:
        out = pattern.sub(MARK, out)
    for rx, repl in _PATTERNS:
        out = rx.sub(repl, out)
    return out


def redact_opt(text: str | None) -> str | None:
    """:func:`redact` that keeps ``None``."""
    return None if text is None else redact(text)


def redact_all(texts: Iterable[str | None]) -> list[str | None]:
    return [redact_opt(t) for t in texts]


def redact_value(value: Any) -> Any:
    """Strings anywhere inside dicts and lists redacted (for JSON details and status data)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


# --------------------------------------------------------------------------- logging

_installed = False
_formatter = logging.Formatter()


def install_log_redaction() -> None:
    """Redact every log record's message, traceback and stack when it is created
    (idempotent). Runs before any handler, so caplog, stderr and JSON output all see the
    redacted text."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[0] is not None:
                record.exc_text = redact(_formatter.formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
            for k, v in list(record.__dict__.items()):
                if k in _EXTRA_SKIP or not isinstance(v, str):
                    continue
                record.__dict__[k] = redact(v)
        except Exception:  # a record whose args do not match its format: leave it to logging
            pass
        return record

    logging.setLogRecordFactory(factory)


_EXTRA_SKIP = frozenset(
    {"name", "msg", "levelname", "pathname", "filename", "module", "funcName", "threadName"}
    | {"processName", "exc_text", "stack_info", "taskName"}
)
