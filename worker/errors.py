"""The one exception tree of the worker.

    WorkerError
     ├── ConfigError          invalid process configuration or settings row
     ├── MigrationError       a migration file changed after it was applied, or failed
     ├── SetupError           a set-up mistake (database unreachable, not migrated, ...):
                              one line that names the fix (worker.preflight)
     └── ProviderError        any failure talking to an AI provider, already classified
                              (see worker.providers.error_policy for how SDK exceptions map here)

Provider SDK and HTTP exceptions are translated at the adapter boundary with
``raise ProviderError(...) from exc`` so callers never import an SDK to decide what to do.
"""

from __future__ import annotations

from enum import StrEnum

from worker.redact import redact


class ErrorKind(StrEnum):
    """What a caller should do about a provider failure."""

    RETRYABLE = "retryable"  # rate limit, 5xx, timeout, connection: try again later
    QUOTA = "quota"  # out of credit / billing: stop this provider until re-enabled
    AUTH = "auth"  # bad or missing key: stop this provider
    CONTENT_REFUSED = "content_refused"  # moderation / safety / refusal: fail this request
    TRUNCATED = "truncated"  # the answer hit the output token limit: fail this request
    CONTEXT_TOO_LONG = "context_too_long"  # input too large: shrink or fail
    INVALID_REQUEST = "invalid_request"  # our request is wrong: permanent for this input
    UNKNOWN = "unknown"  # unclassified: treated as retryable with a bounded attempt count


class WorkerError(Exception):
    """Root of every exception the worker raises on purpose."""


class ConfigError(WorkerError):
    """Configuration (environment or settings row) is invalid."""


class MigrationError(WorkerError):
    """Applying worker/schema/ migrations failed or an applied file changed."""


class SetupError(WorkerError):
    """A set-up problem a person fixes; the message is one line naming the fix."""


class ProviderError(WorkerError):
    """A provider call failed; ``kind`` says what to do about it."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        provider: str,
        status_code: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Provider text is redacted where it enters: some gateways echo the key they got.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.provider = provider
        self.status_code = status_code
        self.code = redact(code) if code else code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in (ErrorKind.RETRYABLE, ErrorKind.UNKNOWN)

    def __str__(self) -> str:
        parts = [f"{self.provider}: {self.kind.value}"]
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.code:
            parts.append(f"code={self.code}")
        return " ".join(parts) + f": {self.message}"
