"""Runtime configuration of the emulator: timing, per-line failures and HTTP faults.

Every field can be changed while the server runs, with ``Emulator.configure(**changes)`` or
``POST /_emulator/config`` (JSON object of the same field names); ``GET /_emulator/config``
returns the current values. Batch-shaping fields (rates, ``batch_outcome``, ``no_output_file``,
``seed``) are snapshotted when a batch is *created*, so changing them later does not alter
batches already in flight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = (
    "rate_limit",
    "quota",
    "auth",
    "server",
    "unavailable",
    # issue 13: every class the answer rules and the error policy tell apart
    "moderation",
    "context_length",
    "payment",
    "request_timeout",
    "bad_gateway",
    "truncated",
    "refusal",
)
BATCH_OUTCOMES = (None, "failed", "expired", "cancelled")
PROVIDERS = ("openai", "gemini", "mistral", "openrouter", "perplexity", "deepseek", "ollama")


@dataclass
class FaultRule:
    """One HTTP fault injection rule.

    ``kind``: ``rate_limit`` (429 + ``retry-after``), ``quota`` (out of credit), ``auth``
    (bad key), ``server`` (500), ``unavailable`` (503), ``moderation`` (OpenRouter 403 with
    moderation metadata, OpenAI-style 400
    ``content_policy_violation``, Gemini a 200 whose prompt is
    blocked), ``context_length`` (400), ``payment`` (402), ``request_timeout`` (408),
    ``bad_gateway`` (502), or the answer-level ``truncated`` (a 200 cut off at the token
    limit) and ``refusal`` (a 200 the model refused); see :mod:`worker.emulator.faults`
    for the exact bodies. ``provider`` is a provider name or ``"*"``. ``path`` optionally
    limits the rule to request paths containing that substring (e.g. ``"/batches"``).
    ``count`` = fire for the next N matching requests, then the rule is spent; ``None`` =
    fire forever with ``probability`` (a seeded dice roll per matching request).
    ``echo_key``: the error body repeats the API key the request carried, in the message, as a
    ``Bearer`` header line and inside a URL, as careless gateways and proxies do (the worker
    must never store or print it).
    """

    kind: str
    provider: str = "*"
    count: int | None = 1
    probability: float = 1.0
    path: str | None = None
    retry_after: float = 1.0
    echo_key: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.provider != "*" and self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")

    @classmethod
    def from_any(cls, value: FaultRule | dict[str, Any]) -> FaultRule:
        """Accept a rule object or a plain dict (from JSON)."""
        if isinstance(value, FaultRule):
            return value
        return cls(**value)


@dataclass
class EmulatorConfig:
    """Tunable behaviour. Defaults model a healthy, fast provider."""

    state_seconds: float = 1.0
    """Seconds a batch stays in each non-terminal state; 0 = terminal on its first poll."""
    line_failure_rate: float = 0.0
    """Share of batch lines (chosen by hash of seed + custom_id) that fail."""
    line_failure_status: int = 500
    """HTTP-style status of failed lines: 500 (server_error) or 400 (invalid_request_error)."""
    batch_outcome: str | None = None
    """Force the whole-batch outcome: None (normal), "failed", "expired" or "cancelled"
    (an operator's cancel while the batch runs: OpenAI and Mistral pass through
    cancelling; OpenAI keeps the lines done so far, see ``cancel_done_share``)."""
    batch_failure_code: str | None = None
    """Reason of a forced "failed" outcome: None = a provider-side internal error
    (OpenAI ``errors.data[0].code = "server_error"``, Gemini operation error 13 INTERNAL,
    Mistral "internal error"); any other string is used as the OpenAI error code, and a
    code starting with "invalid" makes it Gemini INVALID_ARGUMENT (3) [chosen]."""
    http_faults: list[FaultRule] = field(default_factory=list)
    """HTTP fault rules, evaluated in order; the first one that fires wins."""
    latency_ms: float = 0.0
    """Extra delay added to realtime chat / embedding calls."""
    hang_seconds: float = 0.0
    """Sleep this long before answering any provider request (client-timeout tests)."""
    malformed_line_rate: float = 0.0
    """Share of successful result lines written as broken (non-JSON) text."""
    no_output_file: bool = False
    """Completed batches report no output file (and no inline results)."""
    schema_violation_rate: float = 0.0
    """Share of JSON answers that parse but violate the requested schema."""
    down: bool = False
    """Close every provider connection without answering (control endpoints still work)."""
    seed: int = 0
    """Mixed into every deterministic choice (content, failures, fault dice)."""
    openrouter_total_credits: float = 100.0
    """``total_credits`` reported by ``GET /openrouter/v1/credits``."""
    openrouter_total_usage: float = 0.0
    """``total_usage`` reported by ``GET /openrouter/v1/credits``."""
    max_batch_lines: int = 50_000
    """OpenAI batch input line limit (``too_many_tasks`` above it)."""
    max_batch_bytes: int = 200 * 1024 * 1024
    """OpenAI batch input size limit."""

    # ------------------------------------------------------------ real provider limits
    # (provider-apis.md section 5). Every one is off by default so existing tests keep
    # their meaning; turn them on per test or run.
    openai_enqueued_tokens_per_model: int | None = None
    """OpenAI enqueued-token limit per model: prompt tokens (estimated from the request
    text, :func:`worker.emulator.limits.estimate_openai_line_tokens`) of the organisation's
    unfinished batches. A batch that would go over is accepted, then fails validation with
    ``token_limit_exceeded``. None = unlimited."""
    openai_failed_tokens_hold_seconds: float = 0.0
    """How long a batch failed for the token limit keeps counting against it ("a failed
    batch's tokens count for a while": the real duration is unknown)."""
    openai_batches_per_hour: int | None = None
    """OpenAI batch creations allowed per ``openai_batch_window_seconds`` (2,000 per hour
    for real); creates over it get a 429. None = unlimited."""
    openai_batch_window_seconds: float = 3600.0
    """The window of ``openai_batches_per_hour`` (shorten it to scale time in tests)."""
    gemini_max_concurrent_batches: int | None = None
    """Gemini unfinished batch jobs per project (100 for real); over it
    ``batchGenerateContent`` and ``batches.list`` answer the generic 429."""
    gemini_enqueued_tokens_per_model: int | None = None
    """Gemini enqueued tokens per model (prompt tokens of unfinished batches); over it
    ``batchGenerateContent`` answers the generic 429."""
    lost_response_rate: float = 0.0
    """Share of batch creates and file uploads whose side effect happens (the batch or
    file exists and will be billed) but whose answer is lost: a 500 or a dropped
    connection (half each, by seeded dice)."""
    cancel_seconds: float | None = None
    """Seconds a cancel stays in ``cancelling`` (OpenAI, Mistral); None = state_seconds."""
    cancel_done_share: float = 0.5
    """Share of lines already done when an OpenAI batch is cancelled while in progress:
    they are billed and written to the output file (partial results)."""
    gemini_output_delay_polls: int = 0
    """A succeeded Gemini batch shows no ``output`` (results file not readable yet) for
    this many more ``batches.get`` calls after it succeeded."""
    file_ttl_seconds: float | None = None
    """Lifetime of every file (uploaded and generated); None = the provider defaults
    (OpenAI 30 days or ``expires_after``, Gemini 48 h, Mistral never). An expired file
    is gone: 404 on get/download, batches referring to it are refused."""
    strict_api_versions: bool = False
    """Gemini batch and file routes only under ``v1beta`` (as published); ``v1`` answers
    404 for them."""
    openai_empty_error_file_id: bool = False
    """A clean OpenAI batch reports ``error_file_id: ""`` instead of null (seen live)."""
    status_code_zero_rate: float = 0.0
    """Share of OpenAI result lines written with ``response.status_code: 0`` (reported on
    the community forum) and an error body instead of the answer."""

    def validate(self) -> None:
        """Raise ValueError on out-of-range values."""
        for name in (
            "line_failure_rate",
            "malformed_line_rate",
            "schema_violation_rate",
            "lost_response_rate",
            "cancel_done_share",
            "status_code_zero_rate",
        ):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.state_seconds < 0:
            raise ValueError("state_seconds must be >= 0")
        if self.batch_outcome not in BATCH_OUTCOMES:
            raise ValueError(f"batch_outcome must be one of {BATCH_OUTCOMES}")
        if self.line_failure_status not in (400, 500):
            raise ValueError("line_failure_status must be 400 or 500")
        for name in (
            "openai_enqueued_tokens_per_model",
            "openai_batches_per_hour",
            "gemini_max_concurrent_batches",
            "gemini_enqueued_tokens_per_model",
        ):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be a non-negative integer or null")
        for name in ("cancel_seconds", "file_ttl_seconds"):
            v = getattr(self, name)
            if v is not None and float(v) < 0:
                raise ValueError(f"{name} must be >= 0 or null")
        if self.openai_batch_window_seconds <= 0:
            raise ValueError("openai_batch_window_seconds must be > 0")
        if self.openai_failed_tokens_hold_seconds < 0:
            raise ValueError("openai_failed_tokens_hold_seconds must be >= 0")
        if self.gemini_output_delay_polls < 0:
            raise ValueError("gemini_output_delay_polls must be >= 0")

    def updated(self, **changes: Any) -> EmulatorConfig:
        """A validated copy with ``changes`` applied (unknown names raise ValueError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config field(s): {sorted(unknown)}")
        if "http_faults" in changes:
            changes["http_faults"] = [FaultRule.from_any(r) for r in changes["http_faults"] or []]
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``GET /_emulator/config`` returns)."""
        return dataclasses.asdict(self)
