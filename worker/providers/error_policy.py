"""Classify every provider failure into a :class:`~worker.errors.ProviderError`.

One pure, table-driven module. Adapters call :func:`classify` in their ``except`` blocks
(``raise classify(exc, self.name) from exc``) and :func:`classify_http` for raw HTTP
answers (and for per-request error lines of a batch result file, which carry an HTTP
status and an error body too).

Decision order for an HTTP failure (tables below, in this order):

1. provider-specific *structured* refinements: OpenAI ``error.code`` / ``error.type``;
   Gemini ``ErrorInfo.reason``, ``QuotaFailure.violations[].quotaId`` and ``status``;
   Mistral ``type`` / ``code``;
2. the few *documented* message phrases (context length, "check your plan and billing",
   Mistral billing words) - never a bare digit search, so a request id or a message that
   happens to contain "429" or "402" cannot turn into a quota error;
3. the HTTP status table.

``retry_after`` comes from ``retry-after-ms``, then ``retry-after`` (seconds or an HTTP
date), then Gemini's ``google.rpc.RetryInfo.retryDelay`` (``"37s"``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import google.genai.errors as genai_errors
import httpx
import httpx2
import mistralai.client.errors as mistral_errors
import openai
import pydantic

from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.redact import redact as redact_text

K = ErrorKind

# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

#: HTTP status -> kind, used when nothing more specific decided. 5xx is handled by range.
STATUS_KINDS: Mapping[int, ErrorKind] = {
    400: K.INVALID_REQUEST,
    401: K.AUTH,
    402: K.QUOTA,  # Payment Required: OpenRouter / DeepSeek out of credit
    403: K.AUTH,
    404: K.INVALID_REQUEST,
    405: K.INVALID_REQUEST,
    408: K.RETRYABLE,
    409: K.RETRYABLE,  # OpenAI SDK retries 409 too (lock contention)
    410: K.INVALID_REQUEST,
    413: K.INVALID_REQUEST,
    415: K.INVALID_REQUEST,
    422: K.INVALID_REQUEST,
    425: K.RETRYABLE,
    429: K.RETRYABLE,  # rate limit unless a refinement below says quota
    499: K.RETRYABLE,  # google.rpc CANCELLED (client closed)
}

#: OpenAI (and OpenAI-compatible) ``error.code`` values. Checked before ``error.type``.
OPENAI_CODE_KINDS: Mapping[str, ErrorKind] = {
    "insufficient_quota": K.QUOTA,
    "billing_hard_limit_reached": K.QUOTA,
    "billing_not_active": K.QUOTA,
    "rate_limit_exceeded": K.RETRYABLE,
    "server_error": K.RETRYABLE,
    "invalid_api_key": K.AUTH,
    "context_length_exceeded": K.CONTEXT_TOO_LONG,
    "string_above_max_length": K.CONTEXT_TOO_LONG,
    "content_policy_violation": K.CONTENT_REFUSED,
    "content_filter": K.CONTENT_REFUSED,
    "invalid_prompt": K.CONTENT_REFUSED,
    # per-request codes of batch error files (non-HTTP failures)
    "batch_expired": K.RETRYABLE,
    "batch_cancelled": K.RETRYABLE,
}

#: OpenAI ``error.type`` values.
OPENAI_TYPE_KINDS: Mapping[str, ErrorKind] = {
    "insufficient_quota": K.QUOTA,
    "authentication_error": K.AUTH,
    "permission_error": K.AUTH,
    "server_error": K.RETRYABLE,
    "content_filter": K.CONTENT_REFUSED,
}

#: Gemini ``google.rpc.ErrorInfo.reason`` values.
GEMINI_REASON_KINDS: Mapping[str, ErrorKind] = {
    "API_KEY_INVALID": K.AUTH,
    "API_KEY_EXPIRED": K.AUTH,
    "API_KEY_SERVICE_BLOCKED": K.AUTH,
    "SERVICE_DISABLED": K.AUTH,
    "CONSUMER_SUSPENDED": K.AUTH,
    "BILLING_DISABLED": K.QUOTA,
    "RATE_LIMIT_EXCEEDED": K.RETRYABLE,
}

#: Gemini ``error.status`` (google.rpc.Code name) values. RESOURCE_EXHAUSTED is decided by
#: :func:`_gemini_resource_exhausted`, not here.
GEMINI_STATUS_KINDS: Mapping[str, ErrorKind] = {
    "UNAUTHENTICATED": K.AUTH,
    "PERMISSION_DENIED": K.AUTH,
    "INVALID_ARGUMENT": K.INVALID_REQUEST,
    "FAILED_PRECONDITION": K.INVALID_REQUEST,
    "OUT_OF_RANGE": K.INVALID_REQUEST,
    "NOT_FOUND": K.INVALID_REQUEST,
    "ALREADY_EXISTS": K.INVALID_REQUEST,
    "UNIMPLEMENTED": K.INVALID_REQUEST,
    "UNAVAILABLE": K.RETRYABLE,
    "INTERNAL": K.RETRYABLE,
    "DEADLINE_EXCEEDED": K.RETRYABLE,
    "ABORTED": K.RETRYABLE,
    "CANCELLED": K.RETRYABLE,
    "UNKNOWN": K.RETRYABLE,
}

#: Gemini ``QuotaFailure`` ``quotaId``/``quotaMetric`` token -> kind, first match wins per
#: violation. A quota that refills within a minute is a rate limit (retry); a daily or
#: spend/billing quota will not refill soon (stop the provider).
GEMINI_QUOTA_ID_RULES: tuple[tuple[re.Pattern[str], ErrorKind], ...] = (
    (re.compile(r"billing|spend|credit|prepay|balance", re.I), K.QUOTA),
    (re.compile(r"PerDay|PerMonth|Daily|Monthly", re.I), K.QUOTA),
    (re.compile(r"PerMinute|PerSecond|PerHour", re.I), K.RETRYABLE),
)

#: Mistral ``type`` / ``code`` values.
MISTRAL_CODE_KINDS: Mapping[str, ErrorKind] = {
    "rate_limited": K.RETRYABLE,
    "1300": K.RETRYABLE,  # documented rate-limit code (compared whole, never searched)
    "context_length_exceeded": K.CONTEXT_TOO_LONG,
    "insufficient_quota": K.QUOTA,
    "insufficient_credits": K.QUOTA,
    "billing_limit_reached": K.QUOTA,
}

#: Mistral billing words inside ``type``/``code`` (e.g. ``billing_error``,
#: ``credit_exhausted``): unconfirmed wire shape, so words rather than exact values.
MISTRAL_QUOTA_TOKEN = re.compile(r"billing|credit|quota|payment|spend|insufficient_funds", re.I)

# Documented message phrases (the only message regexes used).
OPENAI_CONTEXT_MESSAGE = re.compile(r"maximum context length is", re.I)
GEMINI_CONTEXT_MESSAGE = re.compile(r"input token count .* exceeds the maximum", re.I | re.S)
GEMINI_BILLING_MESSAGE = re.compile(r"check your plan and billing|spend(ing)? cap", re.I)
MISTRAL_CONTEXT_MESSAGE = re.compile(r"too large for model with .*maximum context length", re.I)
MISTRAL_QUOTA_MESSAGE = re.compile(
    r"\b(billing|credits?|quota|payment required|spend(ing)? limit|usage limit)\b", re.I
)

#: Gemini Batch and Files API paths (a generic 429 there is a batch quota, not billing).
GEMINI_BATCH_PATH = re.compile(
    r":(?:batchGenerateContent|asyncBatchEmbedContent)(?:\?|$)|/batches(?:/|\?|$)"
    r"|/(?:upload/)?v1(?:beta)?/files(?:/|\?|$)"
)

#: Proto3 JSON Duration: "37s", "1.680s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")

_MESSAGE_LIMIT = 500

# ---------------------------------------------------------------------------------------
# Body helpers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """The structured fields of one error body, whatever its envelope."""

    message: str
    code: str | None  # error.code as a string (OpenAI/Mistral) or None
    type: str | None
    status: str | None  # google.rpc status name (Gemini)
    details: tuple[dict[str, Any], ...]  # google.rpc details (Gemini)
    #: OpenRouter's moderation metadata (``error.metadata.reasons`` / ``flagged_input``):
    #: its 403 then means "your input was flagged", not "bad key".
    moderation: bool = False


def _as_body(body: object) -> object:
    """Decode a str/bytes body as JSON when it is JSON; otherwise keep the text."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body.strip()
        if text.startswith(("{", "[")):
            try:
                body = json.loads(text)
            except ValueError:
                return body
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # Google sometimes wraps the envelope in a one-element list
    return body


def _str_or_none(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _parse_body(body: object) -> _Parsed:
    body = _as_body(body)
    if not isinstance(body, dict):
        text = "" if body is None else str(body)
        return _Parsed(text[:_MESSAGE_LIMIT], None, None, None, ())
    inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
    message = inner.get("message")
    if message is None:
        detail = inner.get("detail")  # FastAPI / Mistral 401 & 422 shapes
        message = detail if isinstance(detail, str) else (json.dumps(detail) if detail else "")
    details_raw = inner.get("details")
    details = tuple(d for d in details_raw if isinstance(d, dict)) if details_raw else ()
    status = inner.get("status")
    meta = inner.get("metadata")
    return _Parsed(
        message=str(message)[:_MESSAGE_LIMIT],
        code=_str_or_none(inner.get("code")),
        type=_str_or_none(inner.get("type")),
        status=status if isinstance(status, str) else None,
        details=details,
        moderation=isinstance(meta, dict) and ("reasons" in meta or "flagged_input" in meta),
    )


def _detail_of(parsed: _Parsed, type_suffix: str) -> list[dict[str, Any]]:
    return [d for d in parsed.details if str(d.get("@type", "")).endswith(type_suffix)]


def _lower_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(headers, Mapping):
        items = headers.items()
    elif hasattr(headers, "items"):
        items = headers.items()
    else:
        return {}
    return {str(k).lower(): str(v) for k, v in items}


def parse_duration(value: object) -> float | None:
    """Seconds of a proto3 JSON Duration such as ``"37s"``; None if not one."""
    if not isinstance(value, str):
        return None
    m = _DURATION.match(value)
    return float(m.group(1)) if m else None


def retry_after_seconds(headers: object, *, now: float | None = None) -> float | None:
    """``retry-after-ms``, else ``retry-after`` (delta seconds or HTTP date), in seconds."""
    h = _lower_headers(headers)
    ms = h.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = h.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _gemini_retry_delay(parsed: _Parsed) -> float | None:
    for d in _detail_of(parsed, "google.rpc.RetryInfo"):
        delay = parse_duration(d.get("retryDelay"))
        if delay is not None:
            return delay
    return None


# ---------------------------------------------------------------------------------------
# Provider refinements: return a kind, or None to fall through to the status table
# ---------------------------------------------------------------------------------------


def _openai_kind(status: int, p: _Parsed) -> ErrorKind | None:
    if p.moderation:
        # OpenRouter: "403: Your chosen model requires moderation and your input was
        # flagged" - that request's content, never the key: fail the job, not the provider.
        return K.CONTENT_REFUSED
    if p.code is not None and p.code in OPENAI_CODE_KINDS:
        return OPENAI_CODE_KINDS[p.code]
    if p.type is not None and p.type in OPENAI_TYPE_KINDS:
        return OPENAI_TYPE_KINDS[p.type]
    if status == 400 and OPENAI_CONTEXT_MESSAGE.search(p.message):
        return K.CONTEXT_TOO_LONG
    return None


def _gemini_resource_exhausted(p: _Parsed, batch_endpoint: bool = False) -> ErrorKind:
    """RESOURCE_EXHAUSTED is both "slow down" and "out of quota": decide from quotaIds.

    On the batch endpoints (``batchGenerateContent``, ``batches``, files) the batch quotas
    - concurrent batch jobs, tokens queued per model - answer with only the generic "check
    your plan and billing details" text, no QuotaFailure and no RetryInfo (python-genai
    #1901, js-genai #1264): that is rate limiting (back off, breaker), never an empty
    account. Only an explicit billing signal (a billing/spend/daily quotaId, ErrorInfo
    ``BILLING_DISABLED``) stops the provider there."""
    verdicts: list[ErrorKind] = []
    for failure in _detail_of(p, "google.rpc.QuotaFailure"):
        for v in failure.get("violations") or []:
            if not isinstance(v, dict):
                continue
            ident = f"{v.get('quotaId', '')} {v.get('quotaMetric', '')}"
            for pattern, kind in GEMINI_QUOTA_ID_RULES:
                if pattern.search(ident):
                    verdicts.append(kind)
                    break
    if verdicts:
        # A daily/billing exhaustion dominates: waiting a minute will not help.
        return K.QUOTA if K.QUOTA in verdicts else K.RETRYABLE
    if batch_endpoint:
        return K.RETRYABLE
    if GEMINI_BILLING_MESSAGE.search(p.message):
        return K.QUOTA
    return K.RETRYABLE


def _gemini_kind(status: int, p: _Parsed, batch_endpoint: bool = False) -> ErrorKind | None:
    for info in _detail_of(p, "google.rpc.ErrorInfo"):
        reason = info.get("reason")
        if isinstance(reason, str) and reason in GEMINI_REASON_KINDS:
            if reason == "RATE_LIMIT_EXCEEDED":
                break  # still decide rate vs quota from QuotaFailure below
            return GEMINI_REASON_KINDS[reason]
    if p.status == "RESOURCE_EXHAUSTED" or status == 429:
        return _gemini_resource_exhausted(p, batch_endpoint)
    if status == 400 and GEMINI_CONTEXT_MESSAGE.search(p.message):
        return K.CONTEXT_TOO_LONG
    if p.status is not None and p.status in GEMINI_STATUS_KINDS:
        return GEMINI_STATUS_KINDS[p.status]
    return None


def _mistral_kind(status: int, p: _Parsed) -> ErrorKind | None:
    for value in (p.code, p.type):
        if value is not None and value in MISTRAL_CODE_KINDS:
            return MISTRAL_CODE_KINDS[value]
    if status in (402, 429):
        fields = " ".join(v for v in (p.type, p.code) if v)
        if MISTRAL_QUOTA_TOKEN.search(fields) or MISTRAL_QUOTA_MESSAGE.search(p.message):
            return K.QUOTA
        return K.RETRYABLE
    if status == 400 and MISTRAL_CONTEXT_MESSAGE.search(p.message):
        return K.CONTEXT_TOO_LONG
    return None


_REFINERS: Mapping[str, Callable[[int, _Parsed], ErrorKind | None]] = {
    "gemini": _gemini_kind,
    "mistral": _mistral_kind,
}


def _status_kind(status: int) -> ErrorKind:
    if status >= 500:
        return K.RETRYABLE
    return STATUS_KINDS.get(status, K.UNKNOWN)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def classify_http(
    provider: str,
    status: int,
    body: dict[str, Any] | str | bytes | None,
    headers: object = None,
    *,
    batch_endpoint: bool = False,
) -> ProviderError:
    """Classify a raw HTTP error answer (or a batch result line's status + error body).

    ``body`` may be a decoded JSON dict, raw text, or None; ``headers`` any mapping (case
    does not matter). OpenAI-compatible providers use the OpenAI rules.
    ``batch_endpoint``: the answer came from a Batch or Files API call (see
    :func:`_gemini_resource_exhausted`)."""
    parsed = _parse_body(body)
    if provider == "gemini":
        kind = _gemini_kind(status, parsed, batch_endpoint) or _status_kind(status)
    else:
        refiner = _REFINERS.get(provider, _openai_kind)
        kind = refiner(status, parsed) or _status_kind(status)
    retry_after = retry_after_seconds(headers)
    if retry_after is None and provider == "gemini":
        retry_after = _gemini_retry_delay(parsed)
    # Gemini's error.code repeats the HTTP status; its status name is the useful code.
    if provider == "gemini":
        code = parsed.status or parsed.code
    else:
        code = parsed.code or parsed.type or parsed.status
    message = parsed.message or f"HTTP {status}"
    return ProviderError(
        message,
        kind=kind,
        provider=provider,
        status_code=status,
        code=code,
        retry_after=retry_after if kind in (K.RETRYABLE, K.UNKNOWN) else None,
    )


def _plain(provider: str, exc: BaseException, kind: ErrorKind, code: str) -> ProviderError:
    text = str(exc) or type(exc).__name__
    return ProviderError(text[:_MESSAGE_LIMIT], kind=kind, provider=provider, code=code)


def _from_openai_status(exc: BaseException, provider: str) -> ProviderError:
    assert isinstance(exc, openai.APIStatusError)
    return classify_http(provider, exc.status_code, _body_dict(exc.body), exc.response.headers)


def _body_dict(body: object) -> dict[str, Any] | str | None:
    if isinstance(body, dict):
        return body
    if body is None:
        return None
    return str(body)


def _from_genai(exc: BaseException, provider: str) -> ProviderError:
    assert isinstance(exc, genai_errors.APIError)
    headers = getattr(exc.response, "headers", None)
    details = exc.details
    body: dict[str, Any] | str | None = _body_dict(details)
    status = exc.code if isinstance(exc.code, int) else 0
    if status == 0:
        return _plain(provider, exc, K.UNKNOWN, "api_error")
    url = getattr(exc.response, "url", None)
    batch_endpoint = url is not None and GEMINI_BATCH_PATH.search(str(url)) is not None
    return classify_http(provider, status, body, headers, batch_endpoint=batch_endpoint)


def _from_mistral(exc: BaseException, provider: str) -> ProviderError:
    assert isinstance(exc, mistral_errors.MistralError)
    return classify_http(provider, exc.status_code, exc.body, exc.headers)


def _from_httpx_status(exc: BaseException, provider: str) -> ProviderError:
    assert isinstance(exc, httpx.HTTPStatusError | httpx2.HTTPStatusError)
    resp = exc.response
    try:
        text = resp.text
    except (httpx.ResponseNotRead, httpx2.ResponseNotRead):
        text = ""  # a streamed body we never read: classify from the status alone
    return classify_http(provider, resp.status_code, text, resp.headers)


def _fixed(kind: ErrorKind, code: str) -> Callable[[BaseException, str], ProviderError]:
    def make(exc: BaseException, provider: str) -> ProviderError:
        return _plain(provider, exc, kind, code)

    return make


#: Exception type -> handler, first isinstance match wins (so subclasses come first).
EXCEPTION_TABLE: tuple[
    tuple[tuple[type[BaseException], ...], Callable[[BaseException, str], ProviderError]], ...
] = (
    # OpenAI SDK
    ((openai.APIStatusError,), _from_openai_status),
    ((openai.APITimeoutError,), _fixed(K.RETRYABLE, "timeout")),
    ((openai.APIConnectionError,), _fixed(K.RETRYABLE, "connection")),
    ((openai.APIResponseValidationError,), _fixed(K.UNKNOWN, "response_validation")),
    # Mistral SDK (HTTPValidationError/SDKError carry a status; ResponseValidationError
    # carries the 200 whose body did not validate, so it must not go through the table)
    ((mistral_errors.ResponseValidationError,), _fixed(K.UNKNOWN, "response_validation")),
    ((mistral_errors.MistralError,), _from_mistral),
    ((mistral_errors.NoResponseError,), _fixed(K.RETRYABLE, "no_response")),
    # google-genai
    ((genai_errors.APIError,), _from_genai),
    # raw HTTP (both httpx and the httpx2 fork the SDKs use; SDKs let these through)
    ((httpx.HTTPStatusError, httpx2.HTTPStatusError), _from_httpx_status),
    ((httpx.TimeoutException, httpx2.TimeoutException), _fixed(K.RETRYABLE, "timeout")),
    ((httpx.UnsupportedProtocol, httpx2.UnsupportedProtocol), _fixed(K.UNKNOWN, "bad_url")),
    ((httpx.TransportError, httpx2.TransportError), _fixed(K.RETRYABLE, "connection")),
    ((asyncio.TimeoutError, TimeoutError), _fixed(K.RETRYABLE, "timeout")),
    ((ConnectionError,), _fixed(K.RETRYABLE, "connection")),
    ((pydantic.ValidationError,), _fixed(K.UNKNOWN, "response_validation")),
    ((openai.OpenAIError,), _fixed(K.UNKNOWN, "sdk_error")),
)


def classify(exc: BaseException, provider: str) -> ProviderError:
    """Translate any provider failure into a ProviderError (a ProviderError passes through).

    Use as ``raise classify(exc, "openai") from exc``."""
    if isinstance(exc, ProviderError):
        return exc
    for types_, handler in EXCEPTION_TABLE:
        if isinstance(exc, types_):
            return handler(exc, provider)
    return _plain(provider, exc, K.UNKNOWN, type(exc).__name__)


@contextmanager
def translate_errors(provider: str) -> Iterator[None]:
    """``with translate_errors("openai"): await sdk_call()`` - re-raise any failure as the
    classified ProviderError (``from`` the original). Cancellation (BaseException),
    ProviderError and ConfigError (our own set-up problem, e.g. an unusable base URL) pass
    through untouched."""
    try:
        yield
    except (ProviderError, ConfigError):
        raise
    except Exception as exc:
        raise classify(exc, provider) from exc


class Disposition(StrEnum):
    """What a lane does with a failed call or an unusable answer - the same in both lanes
    (commentary instant models and ai_jobs), whichever client made the call."""

    FAIL_REQUEST = "fail_request"  # this request/job fails (charged); provider untouched
    RETRY = "retry"  # transient: try again later; counts toward the breaker
    STOP_PROVIDER = "stop_provider"  # quota / bad key: stop the provider, charge nothing


#: ErrorKind -> disposition (every kind listed; a test checks it).
DISPOSITIONS: Mapping[ErrorKind, Disposition] = {
    K.RETRYABLE: Disposition.RETRY,
    K.UNKNOWN: Disposition.RETRY,
    K.QUOTA: Disposition.STOP_PROVIDER,
    K.AUTH: Disposition.STOP_PROVIDER,
    K.CONTENT_REFUSED: Disposition.FAIL_REQUEST,
    K.TRUNCATED: Disposition.FAIL_REQUEST,
    K.CONTEXT_TOO_LONG: Disposition.FAIL_REQUEST,
    K.INVALID_REQUEST: Disposition.FAIL_REQUEST,
}


def disposition(kind: ErrorKind) -> Disposition:
    """What to do about a failure of ``kind`` (see :class:`Disposition`)."""
    return DISPOSITIONS[kind]


#: google.rpc.Code number -> (name, HTTP status), for google.rpc.Status bodies that carry a
#: gRPC code instead of an HTTP one (Gemini batch operation errors and result lines).
GRPC_CODES: Mapping[int, tuple[str, int]] = {
    1: ("CANCELLED", 499),
    2: ("UNKNOWN", 500),
    3: ("INVALID_ARGUMENT", 400),
    4: ("DEADLINE_EXCEEDED", 504),
    5: ("NOT_FOUND", 404),
    6: ("ALREADY_EXISTS", 409),
    7: ("PERMISSION_DENIED", 403),
    8: ("RESOURCE_EXHAUSTED", 429),
    9: ("FAILED_PRECONDITION", 400),
    10: ("ABORTED", 409),
    11: ("OUT_OF_RANGE", 400),
    12: ("UNIMPLEMENTED", 501),
    13: ("INTERNAL", 500),
    14: ("UNAVAILABLE", 503),
    15: ("DATA_LOSS", 500),
    16: ("UNAUTHENTICATED", 401),
}


def classify_rpc_status(provider: str, status: Mapping[str, Any]) -> ProviderError:
    """Classify a google.rpc.Status ``{code, message, status?, details?}`` whose ``code`` is
    either an HTTP status (100-599) or a gRPC code number (0-16)."""
    raw_code = status.get("code")
    body: dict[str, Any] = dict(status)
    http_status = 0
    if isinstance(raw_code, int) and 100 <= raw_code <= 599:
        http_status = raw_code
    elif isinstance(raw_code, int) and raw_code in GRPC_CODES:
        name, http_status = GRPC_CODES[raw_code]
        body.setdefault("status", name)
        body["code"] = http_status
    if http_status == 0:
        message = str(status.get("message") or "unclassified error")[:_MESSAGE_LIMIT]
        return ProviderError(message, kind=K.UNKNOWN, provider=provider, code="rpc_status")
    return classify_http(provider, http_status, {"error": body})


#: ResultLine.error_code values our parsers produce for lines without an HTTP status.
RESULT_CODE_KINDS: Mapping[str, ErrorKind] = {
    "content_refused": K.CONTENT_REFUSED,
    "malformed_line": K.UNKNOWN,
    "empty_response": K.UNKNOWN,
    "truncated": K.TRUNCATED,
    "max_tokens": K.TRUNCATED,  # the code before answer_rules (rows already written)
    "invalid_json": K.UNKNOWN,
    **OPENAI_CODE_KINDS,
}


def kind_for_result_code(code: str | None) -> ErrorKind:
    """The kind of a failed ResultLine's ``error_code`` (see worker.providers.jsonl)."""
    if code is None:
        return K.UNKNOWN
    return RESULT_CODE_KINDS.get(code, K.UNKNOWN)


# ---------------------------------------------------------------------------------------
# Batch-level failures: who caused them, and do they cost the questions an attempt?
# ---------------------------------------------------------------------------------------


class BatchCause:
    """Why a batch ended without all its results (``ai_commentary_batch_jobs.failure_cause``)."""

    LIMIT = "limit"  # a provider queue/rate limit (OpenAI token_limit_exceeded, ...)
    PROVIDER = "provider"  # the provider's own failure (internal error, unavailable)
    EXPIRED = "expired"  # the completion window passed
    CANCELLED = "cancelled"  # cancelled (by an operator or by us)
    REQUEST = "request"  # our input was rejected (invalid file, invalid argument)
    UNKNOWN = "unknown"  # no reason given or one we do not know


#: Causes whose unfinished requests go back to waiting without spending an attempt: none of
#: them says anything about the requests. REQUEST and UNKNOWN do count, so a batch that
#: keeps failing for a reason we cannot tell still ends after max_attempts.
FREE_CAUSES = frozenset(
    {BatchCause.LIMIT, BatchCause.PROVIDER, BatchCause.EXPIRED, BatchCause.CANCELLED}
)

#: OpenAI batch ``errors.data[].code`` -> cause (validation codes per stdapi.ai #240 and
#: openai-python #2084). Codes not listed are classified like an HTTP error code.
OPENAI_BATCH_ERROR_CAUSES: Mapping[str, str] = {
    "token_limit_exceeded": BatchCause.LIMIT,
    "rate_limit_exceeded": BatchCause.LIMIT,
    "server_error": BatchCause.PROVIDER,
    "internal_error": BatchCause.PROVIDER,
    "invalid_json_line": BatchCause.REQUEST,
    "missing_custom_id": BatchCause.REQUEST,
    "duplicate_custom_id": BatchCause.REQUEST,
    "url_mismatch": BatchCause.REQUEST,
    "model_mismatch": BatchCause.REQUEST,
    "empty_file": BatchCause.REQUEST,
    "too_many_tasks": BatchCause.REQUEST,
    "file_too_large": BatchCause.REQUEST,
    "invalid_request": BatchCause.REQUEST,
}

#: ErrorKind of a classified batch error -> cause.
_KIND_CAUSES: Mapping[ErrorKind, str] = {
    K.RETRYABLE: BatchCause.PROVIDER,
    K.QUOTA: BatchCause.LIMIT,
    K.AUTH: BatchCause.PROVIDER,
    K.INVALID_REQUEST: BatchCause.REQUEST,
    K.CONTEXT_TOO_LONG: BatchCause.REQUEST,
    K.CONTENT_REFUSED: BatchCause.REQUEST,
    K.TRUNCATED: BatchCause.REQUEST,
    K.UNKNOWN: BatchCause.UNKNOWN,
}

#: Per-line error codes that are batch-level causes surfaced on each line (expiry, cancel):
#: free retries. Every other failed line (4xx, 5xx, status_code 0, refusals, schema
#: violations, unreadable lines) counts an attempt: the line is the request's own outcome,
#: and a request that keeps failing must end after max_attempts.
FREE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled", "timeout_exceeded"})


@dataclass(frozen=True)
class BatchFailure:
    """A terminal batch's cause and the provider's reason (redacted, bounded)."""

    cause: str | None  # None: the batch completed normally
    reason: str | None  # the provider's words, e.g. "token_limit_exceeded: Enqueued ..."

    @property
    def charges_attempts(self) -> bool:
        """Whether requests left without a result spend an attempt."""
        return self.cause not in FREE_CAUSES


def redact(text: str) -> str:
    """Provider text through the one redaction step (:mod:`worker.redact`), bounded."""
    return redact_text(text)[:_MESSAGE_LIMIT]


def classify_batch_failure(
    provider: str,
    state: str,
    code: str | None,
    message: str | None,
) -> BatchFailure:
    """The cause of a terminal batch in normalised ``state`` (``BatchState`` value) with the
    provider's batch-level error ``code``/``message`` (OpenAI ``errors.data[0]``, Gemini the
    operation's google.rpc status name, Mistral ``errors[].message``)."""
    reason = None
    if code or message:
        reason = redact(f"{code}: {message}" if code and message else str(code or message))
    if state == "expired":
        return BatchFailure(BatchCause.EXPIRED, reason or "the completion window expired")
    if state == "cancelled":
        return BatchFailure(BatchCause.CANCELLED, reason or "the batch was cancelled")
    if state != "failed":
        return BatchFailure(None, reason)
    if code is None and message is None:
        return BatchFailure(BatchCause.UNKNOWN, None)
    if provider != "gemini" and code is not None and code in OPENAI_BATCH_ERROR_CAUSES:
        return BatchFailure(OPENAI_BATCH_ERROR_CAUSES[code], reason)
    if provider == "gemini" and code == "RESOURCE_EXHAUSTED":
        return BatchFailure(BatchCause.LIMIT, reason)
    if provider == "gemini" and code:
        # a google.rpc code name (INTERNAL, UNAVAILABLE, INVALID_ARGUMENT, ...)
        http = next((h for name, h in GRPC_CODES.values() if name == code), 0)
        if http:
            err = classify_http(
                provider,
                http,
                {"error": {"status": code, "message": message or ""}},
                batch_endpoint=True,
            )
            return BatchFailure(_KIND_CAUSES[err.kind], reason)
    if provider == "mistral" and message and re.search(r"internal|unavailable", message, re.I):
        return BatchFailure(BatchCause.PROVIDER, reason)
    if provider != "gemini" and code:
        kind = OPENAI_CODE_KINDS.get(code)
        if kind is not None:
            return BatchFailure(_KIND_CAUSES[kind], reason)
    return BatchFailure(BatchCause.UNKNOWN, reason)
