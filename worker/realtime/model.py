"""Plain data of the realtime lane: the settings row, a claimed job, and a job's outcome.

Kept free of I/O so the policy modules (sessions, retries, grouping) are unit-testable."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker import validation

KIND_CHAT = "chat"
KIND_COMPLETION = "completion"
KIND_EMBEDDING = "embedding"


@dataclass(frozen=True)
class RealtimeSettings:
    """The ``ai_realtime_settings`` row (see schema/0010_ai_jobs.sql for each field)."""

    claim_batch: int = 500
    max_in_flight: int = 2000
    default_concurrency: int = 50
    provider_concurrency: dict[str, int] = field(default_factory=lambda: {"mock": 2000})
    linger_seconds: float = 1.0
    context_messages: int = 10
    context_floor: int = 1
    message_max_chars: int = 4000
    session_max_jobs: int = 10
    max_input_chars: int = 32000
    max_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    provider_down_wait_seconds: float = 60.0
    lease_seconds: int = 600

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> RealtimeSettings:
        return cls.parse(row)[0]

    @classmethod
    def parse(cls, row: dict[str, Any] | None) -> tuple[RealtimeSettings, list[str]]:
        """The settings of ``row`` and the problems found in it. No row: the built-in
        limits (issue #11: a deleted row switched every limit off). A value of the wrong
        type or range (possible only in a row written before schema/0017, whose trigger
        rejects it) is replaced by its built-in value and reported, never raised: a bad
        setting must not crash every drain run."""
        if row is None:
            return cls(), ["ai_realtime_settings has no row; the built-in limits apply"]
        defaults = cls()
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            if name == "provider_concurrency" or row.get(name) is None:
                continue
            raw = row[name]
            want = int if f.type in ("int", int) else float
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            if ok and want is int and raw != int(raw):
                ok = False
            if not ok or raw < 0:
                problems.append(
                    f"ai_realtime_settings.{name} = {raw!r} is invalid; using "
                    f"{getattr(defaults, name)!r}"
                )
                continue
            values[name] = want(raw)
        conc = row.get("provider_concurrency")
        if conc is not None:
            bad = validation.concurrency_problems(conc)
            problems.extend(f"ai_realtime_settings.{p}; ignored" for p in bad)
            if isinstance(conc, dict):
                values["provider_concurrency"] = {
                    str(k): v
                    for k, v in conc.items()
                    if not validation.concurrency_problems({k: v})
                }
        return cls(**values), problems

    def concurrency(self, provider: str) -> int:
        return max(1, self.provider_concurrency.get(provider, self.default_concurrency))


@dataclass(frozen=True)
class Template:
    """A named task kind (``ai_job_templates`` row)."""

    name: str
    system_prompt: str
    user_template: str
    output: str  # 'text' | 'json'
    json_schema: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None

    def render(self, text: str) -> str:
        # Plain replacement, not str.format: user text may contain braces.
        return self.user_template.replace("{text}", text)


@dataclass
class Job:
    """A claimed ``ai_jobs`` row plus what the claim looked up for it."""

    id: int
    kind: str
    provider: str
    model: str
    system_prompt: str | None = None
    input_text: str | None = None
    messages: list[dict[str, str]] | None = None
    session_id: str | None = None
    priority: int = 0
    attempts: int = 0
    throttled: int = 0
    max_attempts: int | None = None
    context_messages: int | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # session context

    @property
    def lane(self) -> str:
        return f"{self.provider}:embed" if self.kind == KIND_EMBEDDING else self.provider

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            kind=row["kind"],
            provider=row["provider"],
            model=row["model"],
            system_prompt=row.get("system_prompt"),
            input_text=row.get("input_text"),
            messages=row.get("messages"),
            session_id=row.get("session_id"),
            priority=row.get("priority") or 0,
            attempts=row.get("attempts") or 0,
            throttled=row.get("throttled") or 0,
            max_attempts=row.get("max_attempts"),
            context_messages=row.get("context_messages"),
        )


@dataclass
class Outcome:
    """What happened to one job; written back by the drain's writer in a flush.

    ``status`` is completed | failed | retrying | pending (pending = waited for a provider
    that is down or unconfigured, no attempt used). ``failed_call``/``throttle`` are added to
    the job's ``attempts``/``throttled`` counters; ``delay`` is seconds until it is due again.
    """

    job_id: int
    status: str
    provider: str = ""
    model: str = ""
    result_text: str | None = None
    result_json: Any = None
    embedding: list[float] | None = None
    error: str | None = None
    error_kind: str | None = None
    failed_call: int = 0
    throttle: int = 0
    delay: float = 0.0
    context_messages: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: int | None = None
    called_at: datetime | None = None
    user_message: str | None = None  # for the session's history
    token_estimate: int = 0  # what the rate limiter reserved (settled against real usage)
    exc: BaseException | None = field(default=None, repr=False)
