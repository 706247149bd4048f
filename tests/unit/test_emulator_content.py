"""Pure tests of the emulator's content generator: schema-valid JSON, tokens, embeddings."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from worker.emulator.content import (
    count_tokens,
    embed,
    embedding_b64,
    embedding_dims,
    generate_json,
    schema_errors,
    violate_schema,
)

SCHEMAS: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "integer", "minimum": 3, "maximum": 3},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "boolean"},
    {"type": "null"},
    {"enum": ["a", "b", 3]},
    {"const": "fixed"},
    {"type": "string", "minLength": 50, "maxLength": 60},
    {"type": "string", "format": "date"},
    {"type": "string", "format": "uuid"},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    {"type": ["string", "null"]},
    {
        "anyOf": [
            {"type": "null"},
            {
                "type": "object",
                "properties": {"x": {"type": "string"}},
                "required": ["x"],
                "additionalProperties": False,
            },
        ]
    },
    {"oneOf": [{"type": "integer"}, {"type": "null"}]},
    {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            "c": {
                "allOf": [
                    {"type": "object", "properties": {"d": {"type": "integer"}}, "required": ["d"]}
                ]
            },
        },
        "required": ["a", "b", "c"],
        "additionalProperties": False,
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"n": {"type": "number"}},
                "required": ["n"],
                "additionalProperties": False,
            }
        },
    },
    # Gemini OpenAPI subset: upper-case types, nullable, format enum
    {
        "type": "OBJECT",
        "properties": {
            "s": {"type": "STRING", "nullable": True},
            "e": {"type": "STRING", "format": "enum", "enum": ["X", "Y"]},
            "i": {"type": "INTEGER"},
            "l": {"type": "ARRAY", "items": {"type": "BOOLEAN"}},
        },
        "required": ["s", "e", "i", "l"],
    },
    # recursive schema must terminate
    {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["v", "children"],
            }
        },
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", [0, 1, 42, 2**40])
def test_generated_values_validate(schema: dict[str, Any], seed: int) -> None:
    value = generate_json(schema, seed)
    assert schema_errors(value, schema) == []
    assert generate_json(schema, seed) == value, "deterministic per seed"


def test_different_seeds_differ() -> None:
    schema = {"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"]}
    values = {generate_json(schema, s)["t"] for s in range(20)}
    assert len(values) > 10


@pytest.mark.parametrize("schema", [SCHEMAS[0], SCHEMAS[14], SCHEMAS[15]])
def test_violation_is_invalid(schema: dict[str, Any]) -> None:
    assert schema_errors(violate_schema(schema, 3), schema) != []


def test_validator_catches_errors() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 2}},
        "required": ["n"],
        "additionalProperties": False,
    }
    assert schema_errors({"n": 1}, schema) == []
    assert schema_errors({"n": 3}, schema)
    assert schema_errors({"n": "x"}, schema)
    assert schema_errors({}, schema)
    assert schema_errors({"n": 1, "extra": 0}, schema)
    assert schema_errors(True, {"type": "integer"})


def test_token_counting() -> None:
    assert count_tokens("") == 0
    assert count_tokens("a") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 400) == 100


def test_embeddings() -> None:
    v = embed("text-embedding-3-small", "hallo", 256)
    assert len(v) == 256
    assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9)
    assert v == embed("text-embedding-3-small", "hallo", 256)
    assert v != embed("text-embedding-3-small", "hallo!", 256)
    assert embedding_dims("text-embedding-3-small", None) == 1536
    assert embedding_dims("models/gemini-embedding-001", None) == 768
    assert embedding_dims("mistral-embed", None) == 1024
    assert embedding_dims("whatever", None) == 768
    assert embedding_dims("whatever", 12) == 12
    decoded = struct.unpack("<4f", base64.b64decode(embedding_b64([0.5, -1.0, 0.25, 0.0])))
    assert decoded == (0.5, -1.0, 0.25, 0.0)
