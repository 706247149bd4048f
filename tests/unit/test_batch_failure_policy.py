"""worker.providers.error_policy for batch-level failures (issue 12, build 4): which causes spend the
questions' attempts, and Gemini's generic 429 on batch endpoints."""

from __future__ import annotations

from typing import Any

import google.genai.errors as genai_errors
import httpx2
import pytest

from worker.commentary.ingest import line_charges_attempt
from worker.emulator.limits import GEMINI_GENERIC_429
from worker.errors import ErrorKind
from worker.providers.base import ResultLine
from worker.providers.error_policy import BatchCause, classify, classify_batch_failure, redact
from worker.providers.jsonl import parse_openai_line

GENERIC = {"code": 429, "message": GEMINI_GENERIC_429, "status": "RESOURCE_EXHAUSTED"}
BASE = "https://generativelanguage.googleapis.com"


def gemini_error(url: str, error: dict[str, Any]) -> genai_errors.APIError:
    body = {"error": error}
    resp = httpx2.Response(429, request=httpx2.Request("POST", url), json=body)
    return genai_errors.ClientError(429, body, resp)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        # the batch quotas answer this generic body: rate limiting, never an empty account
        ("/v1beta/models/gemini-2.5-flash:batchGenerateContent", ErrorKind.RETRYABLE),
        ("/v1beta/batches?pageSize=100", ErrorKind.RETRYABLE),
        ("/v1beta/batches/abc", ErrorKind.RETRYABLE),
        ("/upload/v1beta/files", ErrorKind.RETRYABLE),
        ("/v1/files/abc:download?alt=media", ErrorKind.RETRYABLE),
        # elsewhere the documented billing phrase still means out of credit
        ("/v1beta/models/gemini-2.5-flash:generateContent", ErrorKind.QUOTA),
    ],
)
def test_gemini_generic_429_depends_on_the_endpoint(path: str, kind: ErrorKind) -> None:
    assert classify(gemini_error(BASE + path, GENERIC), "gemini").kind is kind


def test_an_explicit_billing_signal_on_a_batch_endpoint_still_stops() -> None:
    error = {
        **GENERIC,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}],
            }
        ],
    }
    url = BASE + "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
    assert classify(gemini_error(url, error), "gemini").kind is ErrorKind.QUOTA


C = BatchCause


@pytest.mark.parametrize(
    ("provider", "state", "code", "message", "cause", "charged"),
    [
        (
            "openai",
            "failed",
            "token_limit_exceeded",
            "Enqueued token limit reached",
            C.LIMIT,
            False,
        ),
        ("openai", "failed", "server_error", "internal", C.PROVIDER, False),
        ("openai", "failed", "invalid_json_line", "not JSON (line 3)", C.REQUEST, True),
        ("openai", "failed", "duplicate_custom_id", "dup", C.REQUEST, True),
        ("openai", "failed", "insufficient_quota", "no credit", C.LIMIT, False),
        ("openai", "failed", "something_new", "?", C.UNKNOWN, True),
        ("openai", "failed", None, None, C.UNKNOWN, True),
        ("openai", "expired", None, None, C.EXPIRED, False),
        ("openai", "cancelled", None, None, C.CANCELLED, False),
        ("openai", "completed", None, None, None, True),
        ("gemini", "failed", "INTERNAL", "The batch job failed", C.PROVIDER, False),
        ("gemini", "failed", "RESOURCE_EXHAUSTED", "quota", C.LIMIT, False),
        ("gemini", "failed", "UNAVAILABLE", "later", C.PROVIDER, False),
        ("gemini", "failed", "INVALID_ARGUMENT", "bad request", C.REQUEST, True),
        ("mistral", "failed", None, "The batch job failed: internal error.", C.PROVIDER, False),
        ("mistral", "failed", None, "Invalid input file", C.UNKNOWN, True),
        ("mistral", "expired", None, None, C.EXPIRED, False),
    ],
)
def test_classify_batch_failure(
    provider: str,
    state: str,
    code: str | None,
    message: str | None,
    cause: str | None,
    charged: bool,
) -> None:
    failure = classify_batch_failure(provider, state, code, message)
    assert failure.cause == cause
    assert failure.charges_attempts is charged
    if code and message:
        assert failure.reason == f"{code}: {message}"


def test_reasons_are_redacted_and_bounded() -> None:
    text = redact("Incorrect API key provided: sk-proj-abcdefghijklmnop. " + "x" * 900)
    assert "abcdefgh" not in text and len(text) == 500


@pytest.mark.parametrize(
    ("code", "charged"),
    [
        ("batch_expired", False),
        ("batch_cancelled", False),
        ("timeout_exceeded", False),
        ("server_error", True),  # the line's own outcome: bounded by max_attempts
        ("invalid_request_error", True),
        ("status_code_0", True),
        ("malformed_line", True),
    ],
)
def test_line_charges(code: str, charged: bool) -> None:
    line = ResultLine(custom_id="x", ok=False, error_code=code)
    assert line_charges_attempt(line) is charged


def test_status_code_zero_line_is_a_retryable_failure() -> None:
    line = parse_openai_line(
        {
            "custom_id": "q1",
            "response": {"status_code": 0, "request_id": "r", "body": {}},
            "error": None,
        }
    )
    assert line is not None and not line.ok
    assert line.error_code == "status_code_0"
    assert line.error_kind is ErrorKind.RETRYABLE


def test_the_gemini_client_is_pinned_to_v1beta() -> None:
    from worker.providers.gemini import GEMINI_API_VERSION, make_genai_client

    client = make_genai_client("k", "http://127.0.0.1:9", 1.0)
    assert GEMINI_API_VERSION == "v1beta"
    assert client._api_client._http_options.api_version == "v1beta"
