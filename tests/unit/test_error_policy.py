"""worker.providers.error_policy: every row builds a REAL SDK / HTTP exception object.

openai 3.54, google-genai 3.4 and mistralai 3.7 all use the ``httpx2`` fork internally, so
their exceptions are built around ``httpx2.Response``/``httpx2.Request`` objects.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google.genai.errors as genai_errors
import httpx
import httpx2
import mistralai.client.errors as mistral_errors
import openai
import pytest

from worker.errors import ErrorKind, ProviderError
from worker.providers.error_policy import (
    classify,
    classify_http,
    classify_rpc_status,
    kind_for_result_code,
    parse_duration,
    retry_after_seconds,
)

K = ErrorKind


# ---------------------------------------------------------------------------------------
# Builders of real exception objects
# ---------------------------------------------------------------------------------------


def _resp(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    url: str = "https://api.example.test/v1/x",
) -> httpx2.Response:
    req = httpx2.Request("POST", url)
    if isinstance(body, dict | list):
        return httpx2.Response(status, request=req, json=body, headers=headers)
    return httpx2.Response(status, request=req, text=body or "", headers=headers)


_OPENAI_CLASSES: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
    500: openai.InternalServerError,
    503: openai.InternalServerError,
}


def oai(status: int, error: dict[str, Any] | None, headers: dict[str, str] | None = None) -> Any:
    """An openai APIStatusError as the SDK builds it: ``body`` is the inner error object."""
    envelope = {"error": error} if error is not None else None
    cls = _OPENAI_CLASSES.get(status, openai.APIStatusError)
    msg = f"Error code: {status} - {(error or {}).get('message')}"
    return cls(msg, response=_resp(status, envelope, headers), body=error)


def gem(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    envelope = {"error": error}
    cls = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    return cls(status, envelope, _resp(status, envelope, headers))


def mis(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    hdrs = {"content-type": "application/json", **(headers or {})}
    raw = _resp(status, body, hdrs)
    return mistral_errors.SDKError("API error occurred", raw, raw.text)


OPENAI_QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, read the docs: https://platform.openai.com/docs/"
    "guides/error-codes/api-errors.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}
OPENAI_TPM = {
    "message": "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
    "Limit 30000, Used 14567, Requested 24754. Please try again in 18.642s.",
    "type": "tokens",
    "param": None,
    "code": "rate_limit_exceeded",
}


def gemini_429(quota_id: str | None, message: str, delay: str | None = "37s") -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
    ]
    if quota_id is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                    }
                ],
            }
        )
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED", "details": details}


GEMINI_QUOTA_MSG = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)

# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    provider: str
    make: Callable[[], BaseException]
    kind: ErrorKind
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None


def _req() -> httpx2.Request:
    return httpx2.Request("GET", "https://api.example.test/v1/batches")


ROWS: list[Row] = [
    # --- OpenAI ---------------------------------------------------------------------
    Row("openai insufficient_quota 429", "openai", lambda: oai(429, OPENAI_QUOTA), K.QUOTA,
        429, "insufficient_quota"),
    Row("openai old insufficient_quota (code null, type set)", "openai",
        lambda: oai(429, {**OPENAI_QUOTA, "code": None}), K.QUOTA, 429, "insufficient_quota"),
    Row("openai TPM rate limit", "openai", lambda: oai(429, OPENAI_TPM), K.RETRYABLE, 429,
        "rate_limit_exceeded"),
    Row("openai 429 retry-after-ms wins", "openai",
        lambda: oai(429, OPENAI_TPM, {"retry-after-ms": "1500", "retry-after": "9"}),
        K.RETRYABLE, 429, retry_after=1.5),
    Row("openai 429 retry-after seconds", "openai",
        lambda: oai(429, OPENAI_TPM, {"retry-after": "20"}), K.RETRYABLE, 429, retry_after=20.0),
    Row("openai request id containing 429/402 is not quota", "openai",
        lambda: oai(429, {"message": "Rate limit hit, req_429402abc", "type": "requests",
                          "param": None, "code": "rate_limit_exceeded"},
                    {"x-request-id": "req_429_402_insufficient"}),
        K.RETRYABLE, 429),
    Row("openai message mentioning 402 on a 400 stays invalid", "openai",
        lambda: oai(400, {"message": "Field value 402 is invalid (see 429)", "type":
                          "invalid_request_error", "param": "x", "code": None}),
        K.INVALID_REQUEST, 400),
    Row("openai bad key", "openai",
        lambda: oai(401, {"message": "Incorrect API key provided: sk-...xxxx.", "type":
                          "invalid_request_error", "param": None, "code": "invalid_api_key"}),
        K.AUTH, 401, "invalid_api_key"),
    Row("openai 403", "openai", lambda: oai(403, {"message": "forbidden", "type": None,
                                                  "param": None, "code": None}), K.AUTH, 403),
    Row("openai context too long", "openai",
        lambda: oai(400, {"message": "This model's maximum context length is 128000 tokens. "
                          "However, your messages resulted in 130000 tokens.",
                          "type": "invalid_request_error", "param": "messages",
                          "code": "context_length_exceeded"}),
        K.CONTEXT_TOO_LONG, 400, "context_length_exceeded"),
    Row("openai content policy", "openai",
        lambda: oai(400, {"message": "Your request was rejected as a result of our safety "
                          "system.", "type": "invalid_request_error", "param": None,
                          "code": "content_policy_violation"}),
        K.CONTENT_REFUSED, 400, "content_policy_violation"),
    Row("openai 404", "openai", lambda: oai(404, {"message": "No batch found", "type":
                                                  "invalid_request_error", "param": None,
                                                  "code": None}), K.INVALID_REQUEST, 404),
    Row("openai 422", "openai", lambda: oai(422, None), K.INVALID_REQUEST, 422),
    Row("openai 409 conflict retryable", "openai", lambda: oai(409, None), K.RETRYABLE, 409),
    Row("openai 500", "openai", lambda: oai(500, {"message": "The server had an error",
                                                  "type": "server_error", "param": None,
                                                  "code": None}), K.RETRYABLE, 500),
    Row("openai 503 no body", "openai", lambda: oai(503, None), K.RETRYABLE, 503),
    Row("openai 402 payment required", "openai", lambda: oai(402, None), K.QUOTA, 402),
    Row("openai timeout", "openai", lambda: openai.APITimeoutError(request=_req()), K.RETRYABLE,
        None, "timeout"),
    Row("openai connection", "openai", lambda: openai.APIConnectionError(request=_req()),
        K.RETRYABLE, None, "connection"),
    Row("openai response validation", "openai",
        lambda: openai.APIResponseValidationError(_resp(200, {"x": 1}), {"x": 1}), K.UNKNOWN,
        None, "response_validation"),
    Row("openrouter 402 credits (int code)", "openrouter",
        lambda: oai(402, {"code": 402, "message": "Insufficient credits"}), K.QUOTA, 402),
    Row("deepseek 402 insufficient balance", "deepseek",
        lambda: oai(402, {"message": "Insufficient Balance", "type": "unknown_error",
                          "param": None, "code": "invalid_request_error"}), K.QUOTA, 402),
    # --- Gemini ---------------------------------------------------------------------
    Row("gemini per-minute RESOURCE_EXHAUSTED is retryable", "gemini",
        lambda: gem(429, gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                    GEMINI_QUOTA_MSG)),
        K.RETRYABLE, 429, "RESOURCE_EXHAUSTED", 37.0),
    Row("gemini per-day RESOURCE_EXHAUSTED is quota", "gemini",
        lambda: gem(429, gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                    GEMINI_QUOTA_MSG)),
        K.QUOTA, 429, "RESOURCE_EXHAUSTED"),
    Row("gemini billing quotaId is quota", "gemini",
        lambda: gem(429, gemini_429("ProjectSpendCapBillingLimit", "Spend cap reached")),
        K.QUOTA, 429),
    Row("gemini no QuotaFailure + plan-and-billing message is quota", "gemini",
        lambda: gem(429, gemini_429(None, GEMINI_QUOTA_MSG, delay=None)), K.QUOTA, 429),
    Row("gemini no QuotaFailure plain 429 is retryable", "gemini",
        lambda: gem(429, gemini_429(None, "Resource has been exhausted (e.g. check quota).",
                                    delay="1.680s")),
        K.RETRYABLE, 429, retry_after=1.68),
    Row("gemini message with 429 digits but per-minute id stays retryable", "gemini",
        lambda: gem(429, gemini_429("GenerateRequestsPerMinutePerProjectPerModel",
                                    "429 402 quota billing ids req-402")),
        K.RETRYABLE, 429),
    Row("gemini API_KEY_INVALID on 400 is auth", "gemini",
        lambda: gem(400, {"code": 400, "message": "API key not valid. Please pass a valid API "
                          "key.", "status": "INVALID_ARGUMENT", "details": [
                              {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                               "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                               "metadata": {"service": "generativelanguage.googleapis.com"}}]}),
        K.AUTH, 400, "INVALID_ARGUMENT"),
    Row("gemini missing key 403", "gemini",
        lambda: gem(403, {"code": 403, "message": "Method doesn't allow unregistered callers",
                          "status": "PERMISSION_DENIED"}), K.AUTH, 403),
    Row("gemini context too long", "gemini",
        lambda: gem(400, {"code": 400, "message": "The input token count (1200293) exceeds the "
                          "maximum number of tokens allowed (1048576).",
                          "status": "INVALID_ARGUMENT"}), K.CONTEXT_TOO_LONG, 400),
    Row("gemini other 400 invalid", "gemini",
        lambda: gem(400, {"code": 400, "message": "Invalid JSON payload",
                          "status": "INVALID_ARGUMENT"}), K.INVALID_REQUEST, 400),
    Row("gemini 404", "gemini",
        lambda: gem(404, {"code": 404, "message": "not found", "status": "NOT_FOUND"}),
        K.INVALID_REQUEST, 404),
    Row("gemini 500", "gemini",
        lambda: gem(500, {"code": 500, "message": "internal", "status": "INTERNAL"}),
        K.RETRYABLE, 500),
    Row("gemini 503", "gemini",
        lambda: gem(503, {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}),
        K.RETRYABLE, 503),
    # --- Mistral --------------------------------------------------------------------
    Row("mistral rate_limited 1300", "mistral",
        lambda: mis(429, {"object": "error", "message": "Rate limit exceeded", "type":
                          "rate_limited", "param": None, "code": "1300"}),
        K.RETRYABLE, 429, "1300"),
    Row("mistral capacity 429", "mistral",
        lambda: mis(429, {"object": "error", "message": "Service tier capacity exceeded for "
                          "this model.", "type": "invalid_request_error", "param": None,
                          "code": None}), K.RETRYABLE, 429),
    Row("mistral gateway 429 with retry-after", "mistral",
        lambda: mis(429, {"message": "Requests rate limit exceeded"}, {"retry-after": "3"}),
        K.RETRYABLE, 429, retry_after=3.0),
    Row("mistral billing 429 (type)", "mistral",
        lambda: mis(429, {"object": "error", "message": "You have no credits left",
                          "type": "billing_error", "param": None, "code": "3505"}),
        K.QUOTA, 429),
    Row("mistral usage limit 429 (message)", "mistral",
        lambda: mis(429, {"object": "error", "message": "Monthly usage limit reached. Check "
                          "your billing settings.", "type": "invalid_request_error",
                          "param": None, "code": None}), K.QUOTA, 429),
    Row("mistral request id with 429/402 is not quota", "mistral",
        lambda: mis(429, {"message": "Rate limit exceeded", "request_id": "429402429402"},
                    {"x-request-id": "402-402"}), K.RETRYABLE, 429),
    Row("mistral 401 unauthorized", "mistral",
        lambda: mis(401, {"message": "Unauthorized", "request_id": "c61f2f15"}), K.AUTH, 401),
    Row("mistral 401 detail shape", "mistral", lambda: mis(401, {"detail": "Unauthorized"}),
        K.AUTH, 401),
    Row("mistral context too long", "mistral",
        lambda: mis(400, {"object": "error", "message": "Prompt contains 300000 tokens, too "
                          "large for model with 131072 maximum context length",
                          "type": "invalid_request_error", "param": None, "code": None}),
        K.CONTEXT_TOO_LONG, 400),
    Row("mistral 422 validation", "mistral",
        lambda: mistral_errors.HTTPValidationError(
            mistral_errors.HTTPValidationErrorData(detail=[]),
            _resp(422, {"detail": []}, {"content-type": "application/json"}),
        ), K.INVALID_REQUEST, 422),
    Row("mistral 500 text body", "mistral", lambda: mis(500, "upstream exploded"), K.RETRYABLE,
        500),
    Row("mistral no response", "mistral", lambda: mistral_errors.NoResponseError(), K.RETRYABLE,
        None, "no_response"),
    Row("mistral response validation", "mistral",
        lambda: mistral_errors.ResponseValidationError(
            "Response validation failed", _resp(200, {"x": 1}), ValueError("missing errors")
        ), K.UNKNOWN, None, "response_validation"),
    # --- raw HTTP / asyncio -------------------------------------------------------------
    Row("httpx2 status error 503", "perplexity",
        lambda: httpx2.HTTPStatusError("boom", request=_req(), response=_resp(503, "busy")),
        K.RETRYABLE, 503),
    Row("httpx status error 401", "ollama",
        lambda: httpx.HTTPStatusError(
            "no", request=httpx.Request("GET", "http://x"),
            response=httpx.Response(401, request=httpx.Request("GET", "http://x"))),
        K.AUTH, 401),
    Row("httpx read timeout", "gemini", lambda: httpx.ReadTimeout("slow"), K.RETRYABLE, None,
        "timeout"),
    Row("httpx2 connect error", "mistral", lambda: httpx2.ConnectError("refused"), K.RETRYABLE,
        None, "connection"),
    Row("httpx2 remote protocol error", "gemini", lambda: httpx2.RemoteProtocolError("eof"),
        K.RETRYABLE, None, "connection"),
    Row("asyncio.TimeoutError (is TimeoutError on 3.11)", "openai", lambda: TimeoutError(),
        K.RETRYABLE, None, "timeout"),
    Row("anything else", "openai", lambda: RuntimeError("?"), K.UNKNOWN, None, "RuntimeError"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_classify(row: Row) -> None:
    exc = row.make()
    err = classify(exc, row.provider)
    assert isinstance(err, ProviderError)
    assert err.kind is row.kind, str(err)
    assert err.provider == row.provider
    if row.status is not None:
        assert err.status_code == row.status
    if row.code is not None:
        assert err.code == row.code
    if row.retry_after is not None:
        assert err.retry_after == pytest.approx(row.retry_after)


def test_provider_error_passes_through() -> None:
    original = ProviderError("x", kind=K.AUTH, provider="openai")
    assert classify(original, "openai") is original


def test_quota_never_carries_retry_after() -> None:
    err = classify(gem(429, gemini_429("GenerateRequestsPerDayPerProject", "x")), "gemini")
    assert err.kind is K.QUOTA and err.retry_after is None


def test_daily_violation_dominates_minute_violation() -> None:
    body = gemini_429("GenerateRequestsPerMinutePerProjectPerModel", "x")
    body["details"].append(
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}],
        }
    )
    assert classify(gem(429, body), "gemini").kind is K.QUOTA


def test_error_message_is_str_and_bounded() -> None:
    err = classify(mis(500, "x" * 5000), "mistral")
    assert len(err.message) <= 500


# --- classify_http ---------------------------------------------------------------------

HTTP_ROWS: list[tuple[str, int, Any, dict[str, str] | None, ErrorKind]] = [
    ("openai", 429, {"error": OPENAI_QUOTA}, None, K.QUOTA),
    ("openai", 429, json.dumps({"error": OPENAI_TPM}), None, K.RETRYABLE),
    ("openai", 429, "request req_402_429 insufficient", None, K.RETRYABLE),
    ("openai", 402, None, None, K.QUOTA),
    ("openai", 408, None, None, K.RETRYABLE),
    ("openai", 418, None, None, K.UNKNOWN),
    ("openai", 502, "<html>bad gateway</html>", None, K.RETRYABLE),
    ("gemini", 429, [{"error": gemini_429("PerDayQuota", "x")}], None, K.QUOTA),
    ("mistral", 429, {"message": "Rate limit exceeded", "type": "rate_limited"}, None,
     K.RETRYABLE),
    ("mistral", 402, {"message": "Payment required"}, None, K.QUOTA),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "status", "body", "headers", "kind"), HTTP_ROWS)
def test_classify_http(
    provider: str, status: int, body: Any, headers: dict[str, str] | None, kind: ErrorKind
) -> None:
    err = classify_http(provider, status, body, headers)
    assert err.kind is kind
    assert err.status_code == status


def test_retry_after_http_date() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=now) == pytest.approx(30, abs=1.5)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        (None, None),
        ({"retry-after": "garbage"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "-3"}, 0.0),
        (httpx2.Headers({"Retry-After-Ms": "100"}), 0.1),
    ],
)
def test_retry_after_seconds(headers: Any, expected: float | None) -> None:
    assert retry_after_seconds(headers) == (
        pytest.approx(expected) if expected is not None else None
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("37s", 37.0), ("1.680s", 1.68), ("0s", 0.0), ("37", None), (None, None), ("s", None)],
)
def test_parse_duration(value: Any, expected: float | None) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ({"code": 8, "message": "x", "details": []}, K.RETRYABLE),  # RESOURCE_EXHAUSTED, no ids
        ({"code": 3, "message": "bad"}, K.INVALID_REQUEST),
        ({"code": 13, "message": "internal"}, K.RETRYABLE),
        ({"code": 16, "message": "who"}, K.AUTH),
        ({"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}, K.INVALID_REQUEST),
        ({"code": 99, "message": "?"}, K.UNKNOWN),
        ({"message": "no code"}, K.UNKNOWN),
    ],
)
def test_classify_rpc_status(status: dict[str, Any], kind: ErrorKind) -> None:
    assert classify_rpc_status("gemini", status).kind is kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("content_refused", K.CONTENT_REFUSED),
        ("batch_expired", K.RETRYABLE),
        ("max_tokens", K.TRUNCATED),
        ("truncated", K.TRUNCATED),
        ("whatever", K.UNKNOWN),
        (None, K.UNKNOWN),
    ],
)
def test_kind_for_result_code(code: str | None, kind: ErrorKind) -> None:
    assert kind_for_result_code(code) is kind


def test_openrouter_moderation_403_is_the_request_not_the_key() -> None:
    from worker.emulator.faults import moderation_reply

    flagged = moderation_reply("openrouter", "openai/gpt-4.1-mini")
    err = classify_http("openrouter", flagged.status, flagged.body)
    assert (err.status_code, err.kind) == (403, ErrorKind.CONTENT_REFUSED)
    # A 403 without moderation metadata still says the key may not do this.
    denied = classify_http("openrouter", 403, {"error": {"code": 403, "message": "Forbidden"}})
    assert denied.kind is ErrorKind.AUTH
    policy = moderation_reply("openai")
    err = classify_http("openai", policy.status, policy.body)
    assert (err.status_code, err.kind) == (400, ErrorKind.CONTENT_REFUSED)
