"""Provider-shaped error responses and HTTP fault injection.

Bodies per provider and fault kind (what a real provider sends, per
``provider-apis.md``; [chosen] marks shapes the reference could not confirm):

OpenAI (and the OpenAI-compatible aliases), envelope ``{"error": {message,type,param,code}}``:
  rate_limit   429 type=tokens code=rate_limit_exceeded, headers ``retry-after``,
               ``x-ratelimit-*``
  quota        429 type=insufficient_quota code=insufficient_quota, ``x-should-retry: false``
               (so the SDK does not retry a fatal 429)
  auth         401 type=invalid_request_error code=invalid_api_key
  server       500 type=server_error code=null
  unavailable  503 type=server_error code=null [chosen: "overloaded" message]

Gemini, envelope ``{"error": {code, message, status, details?}}``:
  rate_limit   429 RESOURCE_EXHAUSTED, QuotaFailure quotaId ``...PerMinute...`` + RetryInfo,
               ``retry-after`` header (Google omits it; harmless, helps generic clients)
  quota        429 RESOURCE_EXHAUSTED, QuotaFailure quotaId ``...PerDay...``, "check your plan
               and billing details" message, no RetryInfo [chosen]
  auth         400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID
  server       500 INTERNAL;  unavailable 503 UNAVAILABLE

Moderation (the request's input was flagged; fails that request only):
  openrouter   403 ``{"error": {"code": 403, message, "metadata": {reasons, flagged_input,
               provider_name, model_slug}}}`` (OpenRouter docs, "Moderation Errors")
  OpenAI-style 400 type=invalid_request_error code=content_policy_violation
  Gemini       400 INVALID_ARGUMENT, Mistral 400 invalid_request_error [chosen: both
               providers report safety blocks inside a 200 answer instead]

Mistral, flat envelope ``{"object":"error", message, type, param, code}``:
  rate_limit   429 type=rate_limited code="1300", ``retry-after`` header
  quota        429 type=billing_error code="insufficient_quota", message mentions the
               monthly usage limit and billing [chosen: no real body was ever captured]
  auth         401 ``{"message":"Unauthorized","request_id":...}``
  server       500 type=internal_server_error;  unavailable 503 type=service_unavailable

Any of these with the rule flag ``echo_key`` (:func:`echo_key`): the message also repeats the
API key the request carried, plainly, as ``Authorization: Bearer`` and inside a URL, as some
gateways and proxies do; the worker must never store or print it.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.emulator.config import EmulatorConfig, FaultRule


@dataclass
class ErrorReply:
    """An error response ready to send."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()


def _openai_error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> ErrorReply:
    return ErrorReply(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _gemini_error(
    status: int, grpc_status: str, message: str, details: list[dict[str, Any]] | None = None
) -> ErrorReply:
    err: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if details:
        err["details"] = details
    return ErrorReply(status, {"error": err})


def _mistral_error(status: int, message: str, type_: str, code: str | None) -> ErrorReply:
    return ErrorReply(
        status,
        {"object": "error", "message": message, "type": type_, "param": None, "code": code},
    )


def fault_reply(provider: str, kind: str, retry_after: float = 1.0, model: str = "") -> ErrorReply:
    """The error a real ``provider`` sends for fault ``kind``."""
    if kind == "moderation":
        return moderation_reply(provider, model)
    if kind in MORE_HTTP_KINDS:
        return more_fault_reply(provider, kind, model)
    ra = f"{retry_after:g}"
    if provider == "gemini":
        model = model or "gemini-2.5-flash"
        if kind == "rate_limit":
            reply = _gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, head to: "
                f"https://ai.google.dev/gemini-api/docs/rate-limits. Please retry in {ra}s.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                                "quotaDimensions": {"location": "global", "model": model},
                            }
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{ra}s"},
                ],
            )
            reply.headers["retry-after"] = ra
            return reply
        if kind == "quota":
            return _gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/"
                                "generate_content_paid_tier_requests",
                                "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
                                "quotaDimensions": {"location": "global", "model": model},
                            }
                        ],
                    }
                ],
            )
        if kind == "auth":
            msg = "API key not valid. Please pass a valid API key."
            return _gemini_error(
                400,
                "INVALID_ARGUMENT",
                msg,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": msg,
                    },
                ],
            )
        if kind == "server":
            return _gemini_error(
                500, "INTERNAL", "An internal error has occurred. Please retry or report."
            )
        return _gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    if provider == "mistral":
        if kind == "rate_limit":
            reply = _mistral_error(429, "Rate limit exceeded", "rate_limited", "1300")
            reply.headers["retry-after"] = ra
            return reply
        if kind == "quota":
            return _mistral_error(
                429,
                "You have exceeded your monthly usage limit. "
                "Please check your plan and billing details.",
                "billing_error",
                "insufficient_quota",
            )
        if kind == "auth":
            return ErrorReply(401, {"message": "Unauthorized", "request_id": uuid.uuid4().hex})
        if kind == "server":
            return _mistral_error(500, "Internal server error", "internal_server_error", None)
        return _mistral_error(503, "Service unavailable", "service_unavailable", None)
    # OpenAI and the OpenAI-compatible aliases
    model = model or "gpt-4o-mini"
    if kind == "rate_limit":
        reply = _openai_error(
            429,
            f"Rate limit reached for {model} in organization org-emulator on tokens per min "
            f"(TPM): Limit 30000, Used 29000, Requested 2000. Please try again in {ra}s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            "tokens",
            "rate_limit_exceeded",
        )
        reply.headers.update(
            {
                "retry-after": ra,
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": f"{ra}s",
            }
        )
        return reply
    if kind == "quota":
        reply = _openai_error(
            429,
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        )
        reply.headers["x-should-retry"] = "false"
        return reply
    if kind == "auth":
        return _openai_error(
            401,
            "Incorrect API key provided: sk-emu***. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    if kind == "server":
        return _openai_error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        )
    return _openai_error(
        503, "The engine is currently overloaded, please try again later.", "server_error", None
    )


def echo_key(reply: ErrorReply, key: str) -> ErrorReply:
    """``reply`` with the received API key repeated in its message (fault flag ``echo_key``):
    plainly, as the request's ``Authorization`` header and inside a URL, the three ways
    gateways have been seen to echo it."""
    echo = (
        f" [gateway debug: received key {key}; Authorization: Bearer {key};"
        f" upstream https://gateway.example/v1/chat?key={key}&trace=1]"
    )
    err = reply.body.get("error")
    target = err if isinstance(err, dict) else reply.body
    target["message"] = f"{target.get('message') or ''}{echo}"
    return reply


def moderation_reply(provider: str, model: str = "") -> ErrorReply:
    """A request whose input the provider's moderation flagged."""
    if provider == "openrouter":
        slug = model or "openai/gpt-4o-mini"
        return ErrorReply(
            403,
            {
                "error": {
                    "code": 403,
                    "message": f"{slug} requires moderation on OpenAI. "
                    'Your input was flagged for "harassment". No credits were charged.',
                    "metadata": {
                        "reasons": ["harassment"],
                        "flagged_input": "...",
                        "provider_name": "OpenAI",
                        "model_slug": slug,
                    },
                }
            },
        )
    message = (
        "Your request was rejected as a result of our safety system. Your prompt may "
        "contain text that is not allowed by our safety system."
    )
    if provider == "gemini":
        return _gemini_error(400, "INVALID_ARGUMENT", message)
    if provider == "mistral":
        return _mistral_error(400, message, "invalid_request_error", None)
    return _openai_error(400, message, "invalid_request_error", "content_policy_violation")


def missing_key_reply(provider: str) -> ErrorReply:
    """The provider's answer when no API key was sent at all."""
    if provider == "gemini":
        return _gemini_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if provider == "mistral":
        return ErrorReply(401, {"message": "Unauthorized", "request_id": uuid.uuid4().hex})
    return _openai_error(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
        None,
    )


def not_found_reply(provider: str, what: str) -> ErrorReply:
    """404 in the provider's envelope."""
    if provider == "gemini":
        return _gemini_error(404, "NOT_FOUND", f"{what} not found.")
    if provider == "mistral":
        return ErrorReply(404, {"detail": f"{what} not found"})
    return _openai_error(404, f"No such {what}", "invalid_request_error", None)


def bad_request_reply(provider: str, message: str, param: str | None = None) -> ErrorReply:
    """400 (Mistral: 422-free plain 400) in the provider's envelope."""
    if provider == "gemini":
        return _gemini_error(400, "INVALID_ARGUMENT", message)
    if provider == "mistral":
        return _mistral_error(400, message, "invalid_request_error", None)
    return _openai_error(400, message, "invalid_request_error", None, param)


#: Fault kinds added for issue 13 (answered by :func:`more_fault_reply`).
MORE_HTTP_KINDS = frozenset({"context_length", "payment", "request_timeout", "bad_gateway"})


def _openrouter_error(status: int, message: str, metadata: dict[str, Any] | None) -> ErrorReply:
    err: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        err["metadata"] = metadata
    return ErrorReply(status, {"error": err})


def more_fault_reply(provider: str, kind: str, model: str = "") -> ErrorReply:
    """``context_length``, ``payment``, ``request_timeout``, ``bad_gateway`` (``moderation``:
    :func:`moderation_reply`).

    OpenRouter uses its own envelope ``{"error": {code: <int>, message, metadata?}}`` (its
    errors page: 402 insufficient credits, 403 "your input was flagged" with
    ``ModerationErrorMetadata{reasons, flagged_input, provider_name, model_slug}``, 408, 502
    with ``{provider_name, raw}``). DeepSeek's 402 is ``Insufficient Balance`` (its error
    codes page); context-length bodies are provider-apis.md 2.7 / 3.8 / 4.7.
    [chosen]: OpenAI/Perplexity/Ollama 402 and 408 bodies (OpenAI's envelope), Gemini
    ``payment`` (403 PERMISSION_DENIED with ErrorInfo ``BILLING_DISABLED``, the Google APIs
    convention), Gemini ``request_timeout`` (504 DEADLINE_EXCEEDED), Mistral
    ``payment`` / ``request_timeout`` bodies (no real ones were found). Gemini
    ``moderation`` is not an HTTP error at all (a 200 with ``promptFeedback.blockReason``,
    see :mod:`worker.emulator.answer_faults`; the server never asks for it here)."""
    if provider == "gemini":
        if kind == "context_length":
            return _gemini_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200293) exceeds the maximum number of tokens "
                "allowed (1048576).",
            )
        if kind == "payment":
            return _gemini_error(
                403,
                "PERMISSION_DENIED",
                "Billing is disabled for this project. Enable billing to use the API.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "BILLING_DISABLED",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        if kind == "request_timeout":
            return _gemini_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation.")
        if kind == "bad_gateway":
            return _gemini_error(502, "UNAVAILABLE", "Bad Gateway")
        return _gemini_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    if provider == "mistral":
        if kind == "context_length":
            return _mistral_error(
                400,
                "Prompt contains 300000 tokens, too large for model with 131072 maximum "
                "context length",
                "invalid_request_error",
                None,
            )
        if kind == "payment":
            return _mistral_error(
                402, "Payment required: no credits left.", "payment_required", None
            )
        if kind == "request_timeout":
            return _mistral_error(408, "Request timeout", "request_timeout", None)
        return _mistral_error(502, "Bad gateway", "bad_gateway", None)
    model = model or "openai/gpt-4o-mini"
    if provider == "openrouter":
        if kind == "payment":
            return _openrouter_error(
                402,
                "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
                None,
            )
        if kind == "request_timeout":
            return _openrouter_error(408, "Request timed out", None)
        if kind == "bad_gateway":
            return _openrouter_error(
                502, "Provider returned error", {"provider_name": "OpenAI", "raw": "upstream"}
            )
        return _openrouter_error(
            400,
            "This endpoint's maximum context length is 128000 tokens. However, you requested "
            "about 130000 tokens (129000 of text input, 1000 in the output). Please reduce "
            "the length of either one.",
            None,
        )
    if kind == "context_length":
        return _openai_error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
    if kind == "payment":
        return _openai_error(402, "Insufficient Balance", "unknown_error", "invalid_request_error")
    if kind == "request_timeout":
        return _openai_error(408, "Request timed out.", "timeout", None)
    return _openai_error(502, "Bad gateway.", "server_error", None)


class FaultInjector:
    """Decides, per provider request, whether an HTTP fault fires."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(0)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def check(self, config: EmulatorConfig, provider: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any; spends one use of counted rules."""
        if not config.http_faults:
            return None
        with self._lock:
            for rule in config.http_faults:
                if rule.provider not in ("*", provider):
                    continue
                if rule.path and rule.path not in path:
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                return rule
        return None
