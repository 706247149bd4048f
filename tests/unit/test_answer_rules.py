"""The answer rules both lanes share, the one error policy, and the emulator's fault bodies
as the worker classifies them."""

from __future__ import annotations

import json

import pytest

from worker.emulator.config import FAULT_KINDS, PROVIDERS, FaultRule
from worker.emulator.content import schema_in_text
from worker.emulator.faults import fault_reply
from worker.errors import ErrorKind as K
from worker.providers.answer_rules import (
    check_answer,
    schema_instruction,
    schema_problem,
)
from worker.providers.error_policy import DISPOSITIONS, Disposition, classify_http, disposition

SCHEMA = {
    "type": "object",
    "properties": {"chosen_answer": {"type": "string", "enum": ["A", "B"]}},
    "required": ["chosen_answer"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text", "finish", "refusal", "block", "code", "kind"),
    [
        ('{"a": 1}', "stop", None, None, None, None),
        ('{"a": 1}', "STOP", None, None, None, None),
        ('{"a"', "length", None, None, "truncated", K.TRUNCATED),
        ('{"a"', "model_length", None, None, "truncated", K.TRUNCATED),
        ('{"a"', "MAX_TOKENS", None, None, "truncated", K.TRUNCATED),
        ('{"a"', "FinishReason.MAX_TOKENS", None, None, "truncated", K.TRUNCATED),
        (None, "stop", "I can't help", None, "content_refused", K.CONTENT_REFUSED),
        ("", "content_filter", None, None, "content_refused", K.CONTENT_REFUSED),
        (None, "SAFETY", None, None, "content_refused", K.CONTENT_REFUSED),
        (None, "PROHIBITED_CONTENT", None, None, "content_refused", K.CONTENT_REFUSED),
        (None, "IMAGE_SAFETY", None, None, "content_refused", K.CONTENT_REFUSED),
        (None, None, None, "SAFETY", "content_refused", K.CONTENT_REFUSED),
        (None, None, None, "OTHER", "content_refused", K.CONTENT_REFUSED),
        # OTHER as a finish reason is not a refusal
        ('{"a": 1}', "OTHER", None, None, None, None),
        ("", "OTHER", None, None, "empty_response", K.UNKNOWN),
        ("", "stop", None, None, "empty_response", K.UNKNOWN),
        (None, None, None, None, "empty_response", K.UNKNOWN),
    ],
)
def test_check_answer(
    text: str | None,
    finish: str | None,
    refusal: str | None,
    block: str | None,
    code: str | None,
    kind: K | None,
) -> None:
    problem = check_answer(text, finish, refusal=refusal, block_reason=block)
    assert (problem.code if problem else None, problem.kind if problem else None) == (code, kind)


def test_schema_problem_and_instruction() -> None:
    assert schema_problem({"chosen_answer": "A"}, SCHEMA) is None
    bad = schema_problem({"chosen_answer": "Z"}, SCHEMA)
    assert bad is not None and bad.code == "invalid_output" and bad.kind is K.UNKNOWN
    assert "chosen_answer" in bad.message
    missing = schema_problem({}, SCHEMA)
    assert missing is not None and "required" in missing.message
    # an invalid schema is not the answer's fault
    assert schema_problem({"x": 1}, {"type": "no-such-type"}) is None
    # the emulator finds the schema the instruction carries (JSON-object mode)
    prompt = "Du kommentierst.\n\n" + schema_instruction(SCHEMA)
    assert schema_in_text(prompt) == SCHEMA
    assert schema_in_text('no schema here {"a": 1}') is None


def test_every_kind_has_one_disposition() -> None:
    assert set(DISPOSITIONS) == set(K)
    assert disposition(K.QUOTA) is disposition(K.AUTH) is Disposition.STOP_PROVIDER
    assert {k for k in K if disposition(k) is Disposition.FAIL_REQUEST} == {
        K.CONTENT_REFUSED,
        K.TRUNCATED,
        K.CONTEXT_TOO_LONG,
        K.INVALID_REQUEST,
    }


def test_openrouter_moderation_403_is_not_a_bad_key() -> None:
    flagged = {
        "error": {
            "code": 403,
            "message": "Your input was flagged",
            "metadata": {"reasons": ["violence"], "flagged_input": "...", "model_slug": "m"},
        }
    }
    assert classify_http("openrouter", 403, flagged).kind is K.CONTENT_REFUSED
    # the SDK's exception body is the inner error object
    assert classify_http("openrouter", 403, flagged["error"]).kind is K.CONTENT_REFUSED
    plain = {"error": {"code": 403, "message": "Key disabled"}}
    assert classify_http("openrouter", 403, plain).kind is K.AUTH


#: HTTP fault kind -> the kind the worker must read from every provider's body.
HTTP_FAULT_KINDS = {
    "rate_limit": K.RETRYABLE,
    "quota": K.QUOTA,
    "auth": K.AUTH,
    "server": K.RETRYABLE,
    "unavailable": K.RETRYABLE,
    "moderation": K.CONTENT_REFUSED,
    "context_length": K.CONTEXT_TOO_LONG,
    "payment": K.QUOTA,
    "request_timeout": K.RETRYABLE,
    "bad_gateway": K.RETRYABLE,
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", sorted(HTTP_FAULT_KINDS))
def test_emulator_fault_bodies_classify_as_their_class(provider: str, kind: str) -> None:
    if provider == "gemini" and kind == "moderation":
        pytest.skip("Gemini blocks a prompt with a 200 (an answer-level fault)")
    reply = fault_reply(provider, kind)
    got = classify_http(provider, reply.status, json.loads(reply.encoded()), reply.headers)
    want = HTTP_FAULT_KINDS[kind]
    if provider == "mistral" and kind == "moderation":
        want = K.INVALID_REQUEST  # no moderation code known for Mistral [chosen body]
    assert got.kind is want, (reply.status, reply.body)
    assert disposition(got.kind) is disposition(want)
    expected_status = {"payment": 402, "request_timeout": 408, "bad_gateway": 502}.get(kind)
    if expected_status and provider != "gemini":
        assert reply.status == expected_status


def test_fault_rules_accept_every_kind() -> None:
    for kind in FAULT_KINDS:
        assert FaultRule(kind=kind).kind == kind
    with pytest.raises(ValueError):
        FaultRule(kind="nonsense")
