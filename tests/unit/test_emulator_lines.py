"""The emulator's fast result-line path: templates render exactly what ``json.dumps`` of the
record gives, prepared lines answer exactly as a realtime call would."""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

import pytest

from worker.emulator.gemini_api import _RESULT_LINE, generate_content, prepare_request
from worker.emulator.lifecycle import LineTemplate, PreparedLines, shuffled_blocks, slot
from worker.emulator.openai_api import (
    _CHAT_LINE,
    chat_completion,
    prepare_chat_line,
    render_chat_line,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pick": {"type": "string", "enum": ["A", "B"]},
        "why": {"type": "string"},
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
    },
    "required": ["pick", "why", "n"],
    "additionalProperties": False,
}
FLAT = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"enum": ["x", "y"]}}}


def body(i: int, schema: dict[str, Any] | None = SCHEMA, json_mode: bool = True) -> Any:
    out: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f'Frage {i}: "Zitat" 100% {{x}} ü'}],
    }
    if schema is not None:
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": schema, "strict": True},
        }
    elif json_mode:
        out["response_format"] = {"type": "json_object"}
    return out


def test_template_renders_like_json_dumps() -> None:
    template = LineTemplate({"a": slot("x"), "b": [1, {"c": slot("y")}], "d": "50% {z}"})
    tricky = 'quote " backslash \\ newline \n percent %s braces {0} ü \u2028'
    line = template.render(x=encode_basestring(tricky), y="12")
    assert line == json.dumps(
        {"a": tricky, "b": [1, {"c": 12}], "d": "50% {z}"},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert template.slots == {"x", "y"}
    assert LineTemplate({"only": slot("v")}).render(v="null") == '{"only":null}'


@pytest.mark.parametrize(
    "make",
    [
        lambda i: body(i),
        lambda i: body(i, FLAT),
        lambda i: body(i, None),
        lambda i: body(i, None, json_mode=False),
        lambda i: body(i, SCHEMA if i % 2 else FLAT),  # formats alternate line by line
    ],
)
def test_prepared_openai_lines_match_realtime_answers(make: Any) -> None:
    prepared = PreparedLines()
    bodies = [make(i) for i in range(30)]
    for b in bodies:
        prepare_chat_line(prepared, b, config_seed=7)
    assert len(prepared) == 30
    assert len(prepared.answers) <= 2, "formats are interned"
    for i, b in enumerate(bodies):
        violate = i % 5 == 0
        line, tin, tout = render_chat_line(
            _CHAT_LINE,
            prepared,
            i,
            violate,
            "1700000000",
            "chatcmpl-",
            req_id='"r"',
            cid=encode_basestring(f"c-{i}"),
        )
        expected, e_tin, e_tout = chat_completion(b, 7, violate)
        expected["created"] = 1700000000
        record = {
            "id": "r",
            "custom_id": f"c-{i}",
            "response": {"status_code": 200, "request_id": "r", "body": expected},
            "error": None,
        }
        assert line == json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        assert (tin, tout) == (e_tin, e_tout)


def test_prepared_gemini_lines_match_realtime_answers() -> None:
    prepared = PreparedLines()
    requests = [
        {
            "contents": [{"role": "user", "parts": [{"text": f"Frage {i}"}]}],
            "systemInstruction": {"parts": [{"text": "System"}]},
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": FLAT,
            },
        }
        for i in range(10)
    ]
    for r in requests:
        prepare_request(prepared, "models/gemini-2.5-flash", r, 3)
    for i, r in enumerate(requests):
        resp, tin, tout = generate_content("models/gemini-2.5-flash", r, 3, False)
        seed = prepared.seeds[i]
        text = prepared.answers[prepared.answer_of[i]].text(seed)
        line = _RESULT_LINE.render(
            key='"k"',
            text=encode_basestring(text),
            tin=str(tin),
            tout=str(tout),
            ttotal=str(tin + tout),
            model='"gemini-2.5-flash"',
            rid=f'"{seed:016x}"',
        )
        assert json.loads(line) == {"key": "k", "response": resp}
        assert prepared.tokens_in[i] == tin


def test_unreadable_requests_are_marked() -> None:
    prepared = PreparedLines()
    prepare_chat_line(prepared, ["not", "an", "object"], 0)
    prepare_chat_line(prepared, {"response_format": {"type": "json_schema", "json_schema": 5}}, 0)
    prepare_chat_line(prepared, None, 0)  # no body: answered with the defaults
    assert list(prepared.answer_of) == [-1, -1, 0]


def test_shuffled_blocks_is_a_permutation_independent_of_payload() -> None:
    n = 2500
    order = list(shuffled_blocks(range(n), 42))
    assert sorted(order) == list(range(n)) and order != list(range(n))
    assert [i for i, _ in shuffled_blocks(((i, str(i)) for i in range(n)), 42)] == order
