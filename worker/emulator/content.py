"""The emulator's model output: what :mod:`worker.providers.mock_content` generates (the
same deterministic JSON, filler text, token counts and embeddings the ``mock`` provider
answers with, re-exported here), plus what only the emulator needs: answers in a request's
response format (:class:`Answer`), deliberate schema violations, a small schema validator
for the tests, per-model embedding sizes and base64 embeddings.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from worker.providers.mock_content import (
    CompiledSchema,
    Dice,
    compile_schema,
    count_tokens,
    embed,
    filler_text,
    generate_json,
    plain_answer,
    seed_from,
    unit_fraction,
)
from worker.providers.mock_content import _resolve as _resolve
from worker.providers.mock_content import _types as _types

__all__ = [
    "DEFAULT_EMBEDDING_DIMS",
    "Answer",
    "CompiledSchema",
    "Dice",
    "answer_text",
    "compile_schema",
    "count_tokens",
    "embed",
    "embedding_b64",
    "embedding_dims",
    "filler_text",
    "generate_json",
    "plain_answer",
    "schema_errors",
    "seed_from",
    "unit_fraction",
    "violate_schema",
]


def violate_schema(schema: dict[str, Any], seed: int) -> Any:
    """JSON that parses but is *not* valid against ``schema`` (for schema_violation_rate)."""
    s = _resolve(schema, schema)
    valid = generate_json(schema, seed)
    if isinstance(valid, dict):
        required = [r for r in (s.get("required") or []) if r in valid]
        if required:
            del valid[required[0]]  # a missing required property
            return valid
        return ["not", "an", "object"]
    if isinstance(valid, str):
        return 12345
    return "kein gültiger Wert"


class Answer:
    """What a request asks for: JSON valid against a schema, any JSON object, or plain text.
    Built once per distinct response format (a batch interns them), it turns a seed into
    the answer text."""

    __slots__ = ("_compiled", "schema", "wants_json")

    def __init__(self, wants_json: bool, schema: dict[str, Any] | None) -> None:
        self.wants_json = wants_json
        self.schema = schema
        self._compiled = compile_schema(schema) if schema is not None else None

    def matches(self, wants_json: bool, schema: dict[str, Any] | None) -> bool:
        """Cheap check that a request's format is this one (False when unsure)."""
        if wants_json != self.wants_json:
            return False
        compiled = self._compiled
        if compiled is None:
            return schema is None
        return compiled.eq_safe and compiled.schema == schema

    def text(self, seed: int, violate: bool = False) -> str:
        """The model's message content."""
        if self._compiled is not None:
            if violate:
                return json.dumps(violate_schema(self._compiled.schema, seed), ensure_ascii=False)
            return self._compiled.text(seed)
        if self.wants_json:
            return json.dumps({"antwort": plain_answer(seed)}, ensure_ascii=False)
        return plain_answer(seed)


def answer_text(wants_json: bool, schema: dict[str, Any] | None, seed: int, violate: bool) -> str:
    """The model's message content for one request (realtime calls)."""
    return Answer(wants_json, schema).text(seed, violate)


# --------------------------------------------------------------------------- validator


def schema_errors(
    value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None
) -> list[str]:
    """Validate ``value`` against the subset of JSON Schema the generator supports.

    Returns human-readable problems (empty list = valid). Used by the tests and by nothing
    on the request path; it is deliberately small, not a full JSON Schema implementation.
    """
    root = schema if root is None else root
    return _check(value, schema, root, "$")


def _type_ok(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    return True


def _check(value: Any, schema: Any, root: dict[str, Any], path: str) -> list[str]:
    s = _resolve(schema, root)
    if not s:
        return []
    errs: list[str] = []
    if "const" in s and value != s["const"]:
        return [f"{path}: expected const {s['const']!r}"]
    if isinstance(s.get("enum"), list) and value not in s["enum"]:
        if not (value is None and s.get("nullable")):
            return [f"{path}: {value!r} not in enum"]
    for key in ("anyOf", "oneOf"):
        options = s.get(key)
        if isinstance(options, list) and options:
            matches = sum(1 for o in options if not _check(value, o, root, path))
            if matches == 0 or (key == "oneOf" and matches > 1):
                return [f"{path}: {key} matched {matches} branches"]
    if isinstance(s.get("allOf"), list):
        for o in s["allOf"]:
            errs.extend(_check(value, o, root, path))
    types = _types(s)
    if s.get("nullable"):
        if value is None:
            return errs
    if types and not any(_type_ok(value, t) for t in types):
        return [*errs, f"{path}: {value!r} is not of type {types}"]
    if isinstance(value, dict):
        props = s.get("properties") or {}
        for r in s.get("required") or []:
            if r not in value:
                errs.append(f"{path}: missing required property {r!r}")
        for k, v in value.items():
            if k in props:
                errs.extend(_check(v, props[k], root, f"{path}.{k}"))
            elif s.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected property {k!r}")
    elif isinstance(value, list):
        if "minItems" in s and len(value) < int(s["minItems"]):
            errs.append(f"{path}: fewer than {s['minItems']} items")
        if "maxItems" in s and len(value) > int(s["maxItems"]):
            errs.append(f"{path}: more than {s['maxItems']} items")
        items = s.get("items")
        if isinstance(items, dict):
            for i, v in enumerate(value):
                errs.extend(_check(v, items, root, f"{path}[{i}]"))
    elif isinstance(value, str):
        if "minLength" in s and len(value) < int(s["minLength"]):
            errs.append(f"{path}: shorter than {s['minLength']}")
        if "maxLength" in s and len(value) > int(s["maxLength"]):
            errs.append(f"{path}: longer than {s['maxLength']}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in s and not isinstance(s["minimum"], bool) and value < s["minimum"]:
            errs.append(f"{path}: below minimum")
        if "maximum" in s and not isinstance(s["maximum"], bool) and value > s["maximum"]:
            errs.append(f"{path}: above maximum")
        ex_lo = s.get("exclusiveMinimum")
        if isinstance(ex_lo, (int, float)) and not isinstance(ex_lo, bool) and value <= ex_lo:
            errs.append(f"{path}: not above exclusiveMinimum")
        ex_hi = s.get("exclusiveMaximum")
        if isinstance(ex_hi, (int, float)) and not isinstance(ex_hi, bool) and value >= ex_hi:
            errs.append(f"{path}: not below exclusiveMaximum")
    return errs


# --------------------------------------------------------------------------- embeddings


DEFAULT_EMBEDDING_DIMS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "gemini-embedding-001": 768,
    "text-embedding-004": 768,
    "mistral-embed": 1024,
}


def embedding_dims(model: str, requested: int | None) -> int:
    """Dimension from the request parameter, else the per-model default, else 768."""
    if requested:
        return int(requested)
    name = model.removeprefix("models/")
    return DEFAULT_EMBEDDING_DIMS.get(name, 768)


def embedding_b64(vec: list[float]) -> str:
    """Base64 of little-endian float32, as the OpenAI SDK decodes ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")


# --------------------------------------------------------------------------- JSON-object mode


def schema_in_text(text: str) -> dict[str, Any] | None:
    """The JSON schema a JSON-object-mode prompt carries ("... valid against this JSON
    Schema: {...}"): the first JSON object after the word "schema" that looks like a schema
    (has ``type``, ``properties`` or ``$ref``). None when the prompt carries none."""
    lower = text.lower()
    decoder = json.JSONDecoder()
    at = lower.find("schema")
    while at >= 0:
        brace = text.find("{", at)
        if brace < 0:
            return None
        try:
            value, _end = decoder.raw_decode(text, brace)
        except ValueError:
            value = None
        if isinstance(value, dict) and ({"type", "properties", "$ref"} & value.keys()):
            return value
        at = lower.find("schema", at + 6)
    return None
