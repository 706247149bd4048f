"""Provider-neutral types: what the pipeline hands an adapter and what it gets back.

Adapters (``openai``, ``gemini``, ``mistral`` with their Batch and chat APIs, ``compat``
for OpenAI-compatible endpoints, ``mock``) turn these into wire requests with the official
SDKs (or the lean HTTP client), and translate every SDK failure into
:class:`worker.errors.ProviderError` at their boundary. Both lanes reach them through
:mod:`worker.providers.routing`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import SecretStr

from worker.errors import ErrorKind


def secret_value(api_key: SecretStr | str) -> str:
    """The plain API key, read only where an SDK client is built (never logged)."""
    return api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key


class BatchState(StrEnum):
    """A provider batch state, normalised. Every raw provider state maps to one of these
    explicitly; a raw state nobody listed maps to UNKNOWN, which is never finished."""

    IN_FLIGHT = "in_flight"  # validating / queued / pending / running / finalizing / cancelling
    COMPLETED = "completed"  # results can be read (some lines may still have failed)
    FAILED = "failed"  # the whole batch failed (e.g. input validation)
    EXPIRED = "expired"  # the completion window passed; partial results may exist
    CANCELLED = "cancelled"  # cancelled; partial results may exist
    UNKNOWN = "unknown"  # a state we do not know: keep polling, record an error

    @property
    def terminal(self) -> bool:
        return self in (
            BatchState.COMPLETED,
            BatchState.FAILED,
            BatchState.EXPIRED,
            BatchState.CANCELLED,
        )


@dataclass(frozen=True)
class ChatRequest:
    """One structured-output chat request: a system and a user prompt, answered as JSON
    valid against ``json_schema`` (named ``schema_name``)."""

    custom_id: str
    system_prompt: str
    user_prompt: str
    schema_name: str
    json_schema: dict[str, Any]
    max_output_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class SubmittedBatch:
    """What the provider answered when a batch was created."""

    batch_id: str
    input_file_id: str | None
    request_count: int
    raw_state: str


@dataclass(frozen=True)
class BatchStatus:
    batch_id: str
    state: BatchState
    raw_state: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    # Gemini/Mistral inline results travel with the status; kept opaque here.
    inline_results: list[dict[str, Any]] | None = field(default=None, repr=False)
    # The provider's batch-level failure reason (OpenAI ``errors.data[0]``, Mistral
    # ``errors[]``, Gemini the operation's ``error``): classified by
    # worker.providers.error_policy.classify_batch_failure.
    failure_code: str | None = None
    failure_message: str | None = None


@dataclass(frozen=True)
class ResultLine:
    """One request's outcome, parsed from an output/error file line, an inline result, or a
    realtime response. ``text`` is the model's raw message content (expected to be JSON)."""

    custom_id: str
    ok: bool
    text: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    model_version: str | None = None
    # For ok=False: what to do about it, decided by worker.providers.error_policy from the line's
    # HTTP status / error body / finish reason (None when ok).
    error_kind: ErrorKind | None = None


@dataclass(frozen=True)
class BatchLimits:
    max_requests: int
    max_bytes: int


class BatchProvider(Protocol):
    """A Batch API: upload requests, create a batch, poll it, stream its results."""

    name: str  # 'openai' | 'gemini' | 'mistral'
    limits: BatchLimits

    async def submit(
        self,
        model: str,
        requests: Sequence[ChatRequest],
        *,
        intent_id: str,
        created_after: datetime | None = None,
    ) -> SubmittedBatch:
        """Upload the requests (streamed through a temp file) and create one batch, each
        exactly once: no SDK retries, and after an ambiguous failure a lookup by intent
        before trying again (worker.providers.idempotent).

        ``intent_id`` is our own id of the batch row; it is sent as batch metadata or
        display name (and file name) so :meth:`find_by_intent` can adopt a batch created
        before a crash or a lost answer. ``created_after``: when the intent was recorded."""
        ...

    async def find_by_intent(
        self, intent_id: str, created_after: datetime | None = None
    ) -> SubmittedBatch | None:
        """The provider batch created for ``intent_id``, if any (crash reconciliation),
        searched back to ``created_after`` however many batches the account has. Duplicate
        batches of the intent are cancelled; the oldest is returned."""
        ...

    async def status(self, batch_id: str) -> BatchStatus: ...

    def results(self, status: BatchStatus) -> AsyncIterator[ResultLine]:
        """Stream every result line of a finished batch (output file, error file, or inline
        results), downloading to a temp file in chunks and never holding a whole file."""
        ...

    async def cancel(self, batch_id: str) -> None: ...


#: SDK-internal retries, the same for every client of both lanes: none. A failed call
#: frees its slot at once and our own policy (worker.providers.error_policy) decides -
#: backoff that honours ``retry-after`` and shows in the tables, a provider stop, or that
#: request's failure - instead of the SDK waiting and retrying out of sight.
SDK_MAX_RETRIES = 0


@dataclass(frozen=True)
class Prompt:
    """A conversation to answer (realtime lane): system text, history turns, the final user
    turn, and the output wanted."""

    system: str | None
    history: list[dict[str, str]]
    user: str
    json_output: bool = False
    json_schema: dict[str, object] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None

    def messages(self, keep: int | None = None) -> list[dict[str, str]]:
        """OpenAI-style messages with only the last ``keep`` history turns."""
        history = self.history if keep is None else (self.history[-keep:] if keep > 0 else [])
        out: list[dict[str, str]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out.extend(history)
        out.append({"role": "user", "content": self.user})
        return out

    def char_count(self) -> int:
        return sum(len(m["content"]) for m in self.messages())


@dataclass(frozen=True)
class Reply:
    """A usable conversation answer (an unusable one raises ProviderError)."""

    text: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    input_tokens: int


def estimate_tokens(text: str) -> int:
    """About four characters a token: what is recorded when a provider reports no usage."""
    return max(1, len(text) // 4) if text else 0


class ChatProvider(Protocol):
    """A provider's realtime API, used by both lanes: one structured answer (commentary),
    a conversation (realtime ``ai_jobs``) and embeddings. Every failure is a ProviderError
    classified by :mod:`worker.providers.error_policy`; every answer that arrives is judged
    by :mod:`worker.providers.answer_rules`."""

    name: str

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        """Call the model once. Raises ProviderError on transport/API failures; a response
        that arrives but is unusable comes back as ``ResultLine(ok=False)``."""
        ...

    async def converse(self, model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
        """Answer ``messages`` (``prompt.messages(keep)``); raises ProviderError, also for
        a truncated, refused or empty answer."""
        ...

    async def embed(self, model: str, texts: Sequence[str]) -> Embedded:
        """One embeddings request; raises ProviderError (``no_embeddings_api`` where the
        provider has none)."""
        ...

    async def aclose(self) -> None: ...
