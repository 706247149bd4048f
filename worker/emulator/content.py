"""Deterministic fake model output: schema-valid JSON, filler text, token counts, embeddings.

Everything here is a pure function of its inputs (plus an integer seed), so the same request
always gets the same answer, which lets tests compare runs and prove idempotence.

Schemas may be JSON Schema (OpenAI / Mistral ``json_schema``, Gemini ``responseJsonSchema``)
or Gemini's OpenAPI subset (``responseSchema``: upper-case ``"OBJECT"``/``"STRING"`` types,
``nullable``, ``format: "enum"``). Both are handled by the same generator because type names
are compared case-insensitively. ``pattern`` is not honoured (documented limitation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import uuid
from typing import Any

# German-looking filler words: realistic enough for eyeballing results, obviously fake.
_WORDS = (
    "Aufgabe Bericht Daten Ergebnis Forschung Gemeinde Haushalt Inhalt Jahr Kunde Leistung "
    "Markt Nachfrage Ordnung Planung Qualität Rahmen Sachverhalt Umsatz Verfahren Wirtschaft "
    "Zeitraum Antrag Beschluss Entwicklung Grundlage Hinweis Kosten Lösung Mitteilung Prüfung "
    "Regelung Stellungnahme Unterlagen Vertrag Zusammenfassung schnell gründlich wichtig neu "
    "öffentlich deutlich weiterhin jedoch außerdem bereits insgesamt zunächst darüber wird "
    "wurde werden haben sind bleibt zeigt ergibt betrifft enthält beschreibt"
).split()

_MAX_DEPTH = 8


def count_tokens(text: str) -> int:
    """Rough token count: ceil(chars / 4), at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / 4))


def seed_from(*parts: str | bytes | int) -> int:
    """A stable 64-bit seed from arbitrary parts (Python's ``hash`` is salted per process)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        if isinstance(part, str):
            part = part.encode("utf-8", "surrogatepass")
        h.update(part)
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "big")


def unit_fraction(*parts: str | bytes | int) -> float:
    """A deterministic number in [0, 1) derived from ``parts`` (used for per-line dice)."""
    return seed_from(*parts) / 2.0**64


def filler_text(rng: random.Random, min_words: int = 4, max_words: int = 12) -> str:
    """A short German-looking sentence."""
    # rng.choices / rng.random instead of choice / randint: this runs for every string of
    # every result line, and the cheaper calls roughly halve its cost.
    n = min_words + int(rng.random() * (max_words - min_words + 1))
    words = rng.choices(_WORDS, k=n)
    return words[0].capitalize() + " " + " ".join(words[1:]) + "."


def plain_answer(seed: int) -> str:
    """Plain-text answer for a request without a JSON schema."""
    rng = random.Random(seed)
    return " ".join(filler_text(rng) for _ in range(rng.randint(1, 3)))


# --------------------------------------------------------------------------- schema generator


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    if t is None:
        return []
    if isinstance(t, list):
        return [str(x).lower() for x in t]
    return [str(t).lower()]


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``, ``#``)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        seen += 1
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        target: Any = root
        for token in ref[1:].split("/"):
            if not token:
                continue
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and token in target:
                target = target[token]
            else:
                return {}
        schema = target
    return schema if isinstance(schema, dict) else {}


def _is_null_schema(s: dict[str, Any]) -> bool:
    return _types(s) == ["null"]


def _gen_string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = str(schema.get("format", "")).lower()
    if fmt == "date":
        return f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        return (
            f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        )
    if fmt == "time":
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
    if fmt == "email":
        return f"{rng.choice(_WORDS).lower()}.{rng.randint(1, 999)}@example.de"
    if fmt in ("uri", "url"):
        return f"https://example.de/{rng.choice(_WORDS).lower()}/{rng.randint(1, 9999)}"
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    min_len = int(schema.get("minLength", 0) or 0)
    max_len_raw = schema.get("maxLength")
    text = filler_text(rng, 2, 8)
    while len(text) < min_len:
        text += " " + filler_text(rng)
    if max_len_raw is not None:
        max_len = int(max_len_raw)
        text = text[:max_len]
        if len(text) < min_len:  # contradictory bounds: pad to the minimum
            text = text + "x" * (min_len - len(text))
    return text


def _gen_number(schema: dict[str, Any], rng: random.Random, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    ex_lo = schema.get("exclusiveMinimum")
    ex_hi = schema.get("exclusiveMaximum")
    # draft-4 style boolean exclusives apply to minimum/maximum
    if ex_lo is True and lo is not None:
        ex_lo, lo = lo, None
    if ex_hi is True and hi is not None:
        ex_hi, hi = hi, None
    if isinstance(ex_lo, bool):
        ex_lo = None
    if isinstance(ex_hi, bool):
        ex_hi = None
    if integer:
        low = math.ceil(float(lo)) if lo is not None else None
        if ex_lo is not None:
            cand = math.floor(float(ex_lo)) + 1
            low = cand if low is None else max(low, cand)
        high = math.floor(float(hi)) if hi is not None else None
        if ex_hi is not None:
            cand = math.ceil(float(ex_hi)) - 1
            high = cand if high is None else min(high, cand)
        if low is None and high is None:
            low, high = 0, 100
        elif low is None:
            assert high is not None
            low = high - 100
        elif high is None:
            high = low + 100
        if high < low:
            high = low
        return rng.randint(low, high)
    flo = float(lo) if lo is not None else None
    fhi = float(hi) if hi is not None else None
    if ex_lo is not None:
        flo = float(ex_lo) + 1e-6 if flo is None else max(flo, float(ex_lo) + 1e-6)
    if ex_hi is not None:
        fhi = float(ex_hi) - 1e-6 if fhi is None else min(fhi, float(ex_hi) - 1e-6)
    if flo is None and fhi is None:
        flo, fhi = 0.0, 100.0
    elif flo is None:
        assert fhi is not None
        flo = fhi - 100.0
    elif fhi is None:
        fhi = flo + 100.0
    if fhi < flo:
        fhi = flo
    value = round(rng.uniform(flo, fhi), 3)
    return min(max(value, flo), fhi)


def generate_json(schema: dict[str, Any], seed: int) -> Any:
    """A value valid against ``schema``, deterministic for (schema, seed)."""
    rng = random.Random(seed)
    plan = _flat_plan(schema)
    if plan is not None:
        # Same rng calls in the same order as _gen: identical output, without the
        # per-property schema interpretation (this runs for every result line).
        return {
            name: rng.choice(enum) if enum is not None else filler_text(rng, 2, 8)
            for name, enum in plan
        }
    return _gen(schema, schema, rng, 0)


_FlatPlan = list[tuple[str, list[Any] | None]]
_PLANS: dict[str, _FlatPlan | None] = {}


def _flat_plan(schema: dict[str, Any]) -> _FlatPlan | None:
    """For a flat object of plain strings and enums (the structured-output schemas the
    worker sends), the list of (property, enum or None); None for anything else."""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        return None
    if key in _PLANS:
        return _PLANS[key]
    plan = _build_flat_plan(schema)
    if len(_PLANS) < 1024:
        _PLANS[key] = plan
    return plan


def _build_flat_plan(schema: dict[str, Any]) -> _FlatPlan | None:
    if _types(schema) != ["object"] or any(
        k in schema for k in ("$ref", "anyOf", "oneOf", "allOf", "const", "enum", "nullable")
    ):
        return None
    plan: _FlatPlan = []
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict) or any(
            k in sub
            for k in (
                "$ref",
                "anyOf",
                "oneOf",
                "allOf",
                "const",
                "format",
                "minLength",
                "maxLength",
            )
        ):
            return None
        enum = sub.get("enum")
        if isinstance(enum, list) and enum:
            plan.append((name, enum))
            continue
        types = _types(sub)
        if not types or [t for t in types if t != "null"] != ["string"]:
            return None
        plan.append((name, None))
    return plan or None


def _gen(schema: Any, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    s = _resolve(schema, root)
    if not s:
        return filler_text(rng, 2, 5)
    if "const" in s:
        return s["const"]
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for key in ("anyOf", "oneOf"):
        options = s.get(key)
        if isinstance(options, list) and options:
            resolved = [_resolve(o, root) for o in options]
            non_null = [o for o in resolved if not _is_null_schema(o)]
            # Prefer a real value (more useful for callers); null only when nothing else
            # exists or when recursion gets deep.
            if non_null and (depth < _MAX_DEPTH or len(non_null) == len(resolved)):
                if key == "oneOf":
                    # oneOf needs exactly one match; the first branch is the safest pick.
                    return _gen(non_null[0], root, rng, depth + 1)
                return _gen(rng.choice(non_null), root, rng, depth + 1)
            return None
    all_of = s.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {}
        props: dict[str, Any] = {}
        required: list[str] = []
        for part in all_of:
            p = _resolve(part, root)
            merged.update({k: v for k, v in p.items() if k not in ("properties", "required")})
            props.update(p.get("properties") or {})
            required.extend(p.get("required") or [])
        if props:
            merged["properties"] = props
            merged["required"] = required
        return _gen(merged, root, rng, depth + 1)

    types = _types(s)
    nullable = bool(s.get("nullable")) or "null" in types
    types = [t for t in types if t != "null"]
    if not types:
        if nullable and not s.get("properties"):
            return None
        if "properties" in s:
            types = ["object"]
        elif "items" in s:
            types = ["array"]
        else:
            types = ["string"]
    if nullable and depth >= _MAX_DEPTH:
        return None
    t = types[0]
    if t == "object":
        out: dict[str, Any] = {}
        props = s.get("properties") or {}
        required_set = set(s.get("required") or [])
        for name, sub in props.items():
            # Strict mode requires every property; optional ones are emitted too unless
            # recursion is getting deep.
            if depth >= _MAX_DEPTH and name not in required_set:
                continue
            out[name] = _gen(sub, root, rng, depth + 1)
        return out
    if t == "array":
        min_items = int(s.get("minItems", 0) or 0)
        max_items_raw = s.get("maxItems")
        max_items = int(max_items_raw) if max_items_raw is not None else min_items + 3
        if depth >= _MAX_DEPTH - 2:
            n = min_items
        else:
            n = rng.randint(max(min_items, min(1, max_items)), max(min_items, max_items))
        items = s.get("items")
        if isinstance(items, list):  # tuple form
            return [_gen(i, root, rng, depth + 1) for i in items]
        item_schema = items if isinstance(items, dict) else {}
        values = [_gen(item_schema, root, rng, depth + 1) for _ in range(n)]
        if s.get("uniqueItems"):
            unique: list[Any] = []
            for v in values:
                if v not in unique:
                    unique.append(v)
            if len(unique) >= min_items:
                values = unique
        return values
    if t == "string":
        return _gen_string(s, rng)
    if t == "integer":
        return _gen_number(s, rng, integer=True)
    if t == "number":
        return _gen_number(s, rng, integer=False)
    if t == "boolean":
        return rng.random() < 0.5
    return filler_text(rng, 2, 5)


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


def embed(model: str, text: str, dims: int, seed: int = 0) -> list[float]:
    """A deterministic unit-length vector for ``text``."""
    rng = random.Random(seed_from("embed", model.removeprefix("models/"), text, seed))
    vec = [rng.random() * 2.0 - 1.0 for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embedding_b64(vec: list[float]) -> str:
    """Base64 of little-endian float32, as the OpenAI SDK decodes ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
