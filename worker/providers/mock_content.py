"""Deterministic fake model output: the ``mock`` provider's answers.

Schema-valid JSON, filler text, token counts and embeddings, each a pure function of its
inputs (plus an integer seed), so the same request always gets the same answer, which lets
tests compare runs and prove idempotence. The mock provider (:mod:`worker.providers.mock`)
answers with it in-process; the emulator serves the same content over HTTP
(:mod:`worker.emulator.content` builds on this module), so the two agree by construction and
no production module needs the emulator.

Schemas may be JSON Schema (OpenAI / Mistral ``json_schema``, Gemini ``responseJsonSchema``)
or Gemini's OpenAPI subset (``responseSchema``: upper-case ``"OBJECT"``/``"STRING"`` types,
``nullable``, ``format: "enum"``). Both are handled by the same generator because type names
are compared case-insensitively. ``pattern`` is not honoured (documented limitation).

Speed matters here: the generator runs once per result line, tens of thousands of lines per
batch. So a schema is compiled once (:func:`compile_schema`, cached) into closures, random
numbers come from one blake2b digest per line (:class:`Dice`) instead of a freshly seeded
``random.Random``, and filler sentences are picked from tables built once, with their JSON
encodings ready for splicing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from typing import Any, TypeVar

T = TypeVar("T")

# German-looking filler words: realistic enough for eyeballing results, obviously fake.
_WORDS = (
    "Aufgabe Bericht Daten Ergebnis Forschung Gemeinde Haushalt Inhalt Jahr Kunde Leistung "
    "Markt Nachfrage Ordnung Planung Qualität Rahmen Sachverhalt Umsatz Verfahren Wirtschaft "
    "Zeitraum Antrag Beschluss Entwicklung Grundlage Hinweis Kosten Lösung Mitteilung Prüfung "
    "Regelung Stellungnahme Unterlagen Vertrag Zusammenfassung schnell gründlich wichtig neu "
    "öffentlich deutlich weiterhin jedoch außerdem bereits insgesamt zunächst darüber wird "
    "wurde werden haben sind bleibt zeigt ergibt betrifft enthält beschreibt"
).split()
_LOWER_WORDS = tuple(w.lower() for w in _WORDS)

_MAX_DEPTH = 8
_MASK64 = (1 << 64) - 1


def count_tokens(text: str) -> int:
    """Rough token count: ceil(chars / 4), at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / 4))


def seed_from(*parts: str | bytes | int) -> int:
    """A stable 64-bit seed from arbitrary parts (Python's ``hash`` is salted per process).

    blake2b-8 over each part followed by a NUL byte (ints as their decimal text)."""
    if bytes in map(type, parts):
        data = b"\x00".join(
            [p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogatepass") for p in parts]
        )
    else:  # the usual case, in one go: the same bytes, NUL-separated text encoded once
        data = "\x00".join(map(str, parts)).encode("utf-8", "surrogatepass")
    if parts:
        data += b"\x00"
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def unit_fraction(*parts: str | bytes | int) -> float:
    """A deterministic number in [0, 1) derived from ``parts`` (used for per-line dice)."""
    return seed_from(*parts) / 2.0**64


# --------------------------------------------------------------------------- randomness

_BLOCK = struct.Struct("<16I")  # one 64-byte blake2b digest = 16 words of 32 bits


class Dice:
    """Deterministic random numbers for one seed: 32-bit words read from blake2b digests.

    Much cheaper to start than ``random.Random(seed)`` (which fills a 2.5 kB Mersenne Twister
    state, about 4 µs), and one line's answer rarely needs more than the first 16 words."""

    __slots__ = ("_block", "_key", "_pos", "_words")

    def __init__(self, seed: int) -> None:
        if not 0 <= seed <= _MASK64:
            seed = seed_from("dice", seed)
        self._key = seed.to_bytes(8, "little")
        self._words: tuple[int, ...] = _BLOCK.unpack(
            hashlib.blake2b(self._key, digest_size=64).digest()
        )
        self._pos = 0
        self._block = 0

    def _refill(self) -> None:
        self._block += 1
        salt = self._block.to_bytes(16, "little")
        self._words = _BLOCK.unpack(hashlib.blake2b(self._key, digest_size=64, salt=salt).digest())
        self._pos = 0

    def word(self) -> int:
        """A uniform integer in [0, 2**32)."""
        if self._pos >= 16:
            self._refill()
        w = self._words[self._pos]
        self._pos += 1
        return w

    def take(self, k: int) -> Sequence[int]:
        """``k`` words at once."""
        pos = self._pos
        if pos + k <= 16:
            self._pos = pos + k
            return self._words[pos : pos + k]
        return [self.word() for _ in range(k)]

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (n >= 1); multiply-shift, no modulo bias worth naming."""
        if n <= 0x1_0000_0000:
            return (self.word() * n) >> 32
        k = (n.bit_length() + 63) // 32
        acc = 0
        for _ in range(k):
            acc = (acc << 32) | self.word()
        return (acc * n) >> (32 * k)

    def between(self, lo: int, hi: int) -> int:
        """A uniform integer in [lo, hi] (hi >= lo)."""
        return lo + self.below(hi - lo + 1)

    def pick(self, seq: Sequence[T]) -> T:
        return seq[(self.word() * len(seq)) >> 32]

    def fraction(self) -> float:
        """A uniform float in [0, 1) with 53 random bits."""
        return ((self.word() << 21) ^ (self.word() >> 11)) / 9007199254740992.0

    def bits(self, n: int) -> int:
        """``n`` random bits as an integer."""
        acc = 0
        for _ in range((n + 31) // 32):
            acc = (acc << 32) | self.word()
        return acc & ((1 << n) - 1)


# --------------------------------------------------------------------------- filler text

_FILLER_TABLE_SIZE = 8192


class _Filler:
    """A fixed table of filler sentences of ``min_words``..``max_words`` words, and each one's
    JSON encoding (with quotes), built once from a fixed seed."""

    __slots__ = ("encoded", "texts")

    def __init__(self, min_words: int, max_words: int) -> None:
        rng = random.Random(f"filler:{min_words}:{max_words}")
        texts = []
        for _ in range(_FILLER_TABLE_SIZE):
            words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
            sentence = " ".join(words)
            texts.append(sentence[:1].upper() + sentence[1:] + ".")
        self.texts: tuple[str, ...] = tuple(texts)
        self.encoded: tuple[str, ...] = tuple(encode_basestring(t) for t in texts)


_FILLERS: dict[tuple[int, int], _Filler] = {}
_FILLERS_LOCK = threading.Lock()


def _filler(min_words: int, max_words: int) -> _Filler:
    key = (min_words, max(min_words, max_words))
    table = _FILLERS.get(key)
    if table is None:
        with _FILLERS_LOCK:
            table = _FILLERS.get(key)
            if table is None:
                table = _FILLERS[key] = _Filler(*key)
    return table


def filler_text(dice: Dice, min_words: int = 4, max_words: int = 12) -> str:
    """A short German-looking sentence."""
    return dice.pick(_filler(min_words, max_words).texts)


def plain_answer(seed: int) -> str:
    """Plain-text answer for a request without a JSON schema."""
    dice = Dice(seed)
    texts = _filler(4, 12).texts
    return " ".join([dice.pick(texts) for _ in range(1 + dice.below(3))])


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


Gen = Callable[[Dice], Any]
_TEXT_ENCODER = json.JSONEncoder(
    ensure_ascii=False
)  # same output as json.dumps(v, ensure_ascii=False)


def _none(dice: Dice) -> None:
    return None


def _constant(value: Any) -> Gen:
    if isinstance(value, (dict, list)):
        return lambda dice: copy.deepcopy(value)  # callers may edit what they get
    return lambda dice: value


def _choice(options: Sequence[Any]) -> Gen:
    values = tuple(options)
    if any(isinstance(v, (dict, list)) for v in values):
        return lambda dice: copy.deepcopy(dice.pick(values))
    return lambda dice: dice.pick(values)


def _sentence(min_words: int, max_words: int) -> Gen:
    texts = _filler(min_words, max_words).texts
    return lambda dice: dice.pick(texts)


class _Compiler:
    """Turns a schema into a tree of closures, once. Nodes are compiled per (node, depth):
    behaviour changes with depth up to ``_MAX_DEPTH`` and not after, so recursive schemas
    compile to a finite, cyclic set of closures."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.cells: dict[tuple[int, int], list[Gen | None]] = {}
        self.keep: list[Any] = []  # nodes built during compilation (ids must stay unique)

    def node(self, schema: Any, depth: int) -> Gen:
        s = _resolve(schema, self.root)
        self.keep.append(s)
        key = (id(s), min(depth, _MAX_DEPTH))
        cell = self.cells.get(key)
        if cell is not None:
            ready = cell[0]
            if ready is not None:
                return ready
            pending = cell  # a cycle: this node is still being compiled
            return lambda dice: _call(pending, dice)
        cell = self.cells[key] = [None]
        gen = self._compile(s, depth)
        cell[0] = gen
        return gen

    def _compile(self, s: dict[str, Any], depth: int) -> Gen:
        if not s:
            return _sentence(2, 5)
        if "const" in s:
            return _constant(s["const"])
        enum = s.get("enum")
        if isinstance(enum, list) and enum:
            return _choice(enum)
        for key in ("anyOf", "oneOf"):
            options = s.get(key)
            if isinstance(options, list) and options:
                resolved = [_resolve(o, self.root) for o in options]
                non_null = [o for o in resolved if not _is_null_schema(o)]
                # Prefer a real value (more useful for callers); null only when nothing else
                # exists or when recursion gets deep.
                if non_null and (depth < _MAX_DEPTH or len(non_null) == len(resolved)):
                    if key == "oneOf" or len(non_null) == 1:
                        # oneOf needs exactly one match; the first branch is the safest pick.
                        return self.node(non_null[0], depth + 1)
                    branches = tuple(self.node(o, depth + 1) for o in non_null)
                    return lambda dice: dice.pick(branches)(dice)
                return _none
        all_of = s.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            props: dict[str, Any] = {}
            required: list[str] = []
            for part in all_of:
                p = _resolve(part, self.root)
                merged.update({k: v for k, v in p.items() if k not in ("properties", "required")})
                props.update(p.get("properties") or {})
                required.extend(p.get("required") or [])
            if props:
                merged["properties"] = props
                merged["required"] = required
            return self.node(merged, depth + 1)

        types = _types(s)
        nullable = bool(s.get("nullable")) or "null" in types
        types = [t for t in types if t != "null"]
        if not types:
            if nullable and not s.get("properties"):
                return _none
            if "properties" in s:
                types = ["object"]
            elif "items" in s:
                types = ["array"]
            else:
                types = ["string"]
        if nullable and depth >= _MAX_DEPTH:
            return _none
        t = types[0]
        if t == "object":
            return self._object(s, depth)
        if t == "array":
            return self._array(s, depth)
        if t == "string":
            return _string(s)
        if t == "integer":
            return _integer(s)
        if t == "number":
            return _number(s)
        if t == "boolean":
            return lambda dice: dice.word() >= 0x8000_0000
        return _sentence(2, 5)

    def _object(self, s: dict[str, Any], depth: int) -> Gen:
        required_set = set(s.get("required") or [])
        fields = tuple(
            # Strict mode requires every property; optional ones are emitted too unless
            # recursion is getting deep.
            (name, self.node(sub, depth + 1))
            for name, sub in (s.get("properties") or {}).items()
            if depth < _MAX_DEPTH or name in required_set
        )
        return lambda dice: {name: gen(dice) for name, gen in fields}

    def _array(self, s: dict[str, Any], depth: int) -> Gen:
        min_items = int(s.get("minItems", 0) or 0)
        max_items_raw = s.get("maxItems")
        max_items = int(max_items_raw) if max_items_raw is not None else min_items + 3
        items = s.get("items")
        if isinstance(items, list):  # tuple form
            gens = tuple(self.node(i, depth + 1) for i in items)
            return lambda dice: [g(dice) for g in gens]
        item = self.node(items if isinstance(items, dict) else {}, depth + 1)
        if depth >= _MAX_DEPTH - 2:
            lo = hi = min_items
        else:
            lo, hi = max(min_items, min(1, max_items)), max(min_items, max_items)
        unique = bool(s.get("uniqueItems"))

        def gen(dice: Dice) -> list[Any]:
            values = [item(dice) for _ in range(dice.between(lo, hi) if hi > lo else lo)]
            if unique:
                distinct: list[Any] = []
                for v in values:
                    if v not in distinct:
                        distinct.append(v)
                if len(distinct) >= min_items:
                    return distinct
            return values

        return gen


def _call(cell: list[Gen | None], dice: Dice) -> Any:
    gen = cell[0]
    assert gen is not None
    return gen(dice)


def _date(dice: Dice) -> str:
    return f"20{dice.between(10, 29)}-{dice.between(1, 12):02d}-{dice.between(1, 28):02d}"


def _string(schema: dict[str, Any]) -> Gen:
    fmt = str(schema.get("format", "")).lower()
    if fmt == "date":
        return _date
    if fmt == "date-time":
        return lambda dice: f"{_date(dice)}T{dice.between(0, 23):02d}:{dice.between(0, 59):02d}:00Z"
    if fmt == "time":
        return lambda dice: f"{dice.between(0, 23):02d}:{dice.between(0, 59):02d}:00"
    if fmt == "email":
        return lambda dice: f"{dice.pick(_LOWER_WORDS)}.{dice.between(1, 999)}@example.de"
    if fmt in ("uri", "url"):
        return lambda dice: f"https://example.de/{dice.pick(_LOWER_WORDS)}/{dice.between(1, 9999)}"
    if fmt == "uuid":
        return lambda dice: str(uuid.UUID(int=dice.bits(128), version=4))
    min_len = int(schema.get("minLength", 0) or 0)
    max_len_raw = schema.get("maxLength")
    short = _filler(2, 8).texts
    if not min_len and max_len_raw is None:
        return lambda dice: dice.pick(short)
    long = _filler(4, 12).texts
    max_len = int(max_len_raw) if max_len_raw is not None else None

    def gen(dice: Dice) -> str:
        text = dice.pick(short)
        while len(text) < min_len:
            text += " " + dice.pick(long)
        if max_len is not None:
            text = text[:max_len]
            if len(text) < min_len:  # contradictory bounds: pad to the minimum
                text = text + "x" * (min_len - len(text))
        return text

    return gen


def _bounds(schema: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
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
    return lo, hi, ex_lo, ex_hi


def _integer(schema: dict[str, Any]) -> Gen:
    lo, hi, ex_lo, ex_hi = _bounds(schema)
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
    a, b = low, high
    return lambda dice: dice.between(a, b)


def _number(schema: dict[str, Any]) -> Gen:
    lo, hi, ex_lo, ex_hi = _bounds(schema)
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
    a, b = flo, fhi
    return lambda dice: min(max(round(a + (b - a) * dice.fraction(), 3), a), b)


class CompiledSchema:
    """A schema compiled into a value generator; :meth:`text` is the value as JSON text."""

    __slots__ = ("_flat", "_gen", "eq_safe", "schema")

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.eq_safe = _eq_safe(schema)
        self._flat = _flat_fields(schema)
        self._gen = _Compiler(schema).node(schema, 0) if self._flat is None else None

    def value(self, seed: int) -> Any:
        dice = Dice(seed)
        flat = self._flat
        if flat is not None:
            return {
                name: values[(w * len(values)) >> 32]
                for (name, values, _, _), w in zip(flat, dice.take(len(flat)), strict=True)
            }
        assert self._gen is not None
        return self._gen(dice)

    def text(self, seed: int) -> str:
        """``json.dumps(self.value(seed), ensure_ascii=False)``, faster."""
        flat = self._flat
        if flat is None:
            return _TEXT_ENCODER.encode(self.value(seed))
        # Same words as value(): the pre-encoded sentences spliced between pre-encoded keys.
        words = Dice(seed).take(len(flat))
        return (
            "".join(
                [
                    head + encoded[(w * len(encoded)) >> 32]
                    for (_, _, encoded, head), w in zip(flat, words, strict=True)
                ]
            )
            + "}"
        )


# (name, values, JSON encodings of the values, JSON text before the value)
_FlatField = tuple[str, tuple[Any, ...], tuple[str, ...], str]

_FLAT_EXCLUDED = ("$ref", "anyOf", "oneOf", "allOf", "const", "format", "minLength", "maxLength")


def _flat_fields(schema: dict[str, Any]) -> tuple[_FlatField, ...] | None:
    """For a flat object of plain strings and enums (the structured-output schemas the
    worker sends), one entry per property; None for anything else. Every value then costs
    one word of the line's dice and one table lookup."""
    if _types(schema) != ["object"] or any(
        k in schema for k in ("$ref", "anyOf", "oneOf", "allOf", "const", "enum", "nullable")
    ):
        return None
    sentences = _filler(2, 8)
    fields: list[_FlatField] = []
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict) or any(k in sub for k in _FLAT_EXCLUDED):
            return None
        head = ("{" if not fields else ", ") + encode_basestring(name) + ": "
        enum = sub.get("enum")
        if isinstance(enum, list) and enum:
            if any(isinstance(v, (dict, list)) for v in enum):
                return None  # mutable values: the general generator copies them
            values = tuple(enum)
            encoded = tuple(json.dumps(v, ensure_ascii=False) for v in values)
            fields.append((name, values, encoded, head))
            continue
        types = _types(sub)
        if not types or [t for t in types if t != "null"] != ["string"]:
            return None
        fields.append((name, sentences.texts, sentences.encoded, head))
    return tuple(fields) or None


_COMPILED: dict[str, CompiledSchema] = {}
_COMPILED_LOCK = threading.Lock()
_recent: tuple[CompiledSchema, ...] = ()  # most recently used first


def compile_schema(schema: dict[str, Any]) -> CompiledSchema:
    """The cached :class:`CompiledSchema` of ``schema`` (by content; a private copy is
    compiled, so later edits to ``schema`` do not leak into the cache).

    A request's schema is usually equal to one of the last few seen: a dict comparison
    (about 1 µs for the worker's schemas) finds it before the canonical JSON key (about
    11 µs) is computed."""
    global _recent
    for compiled in _recent:
        if compiled.eq_safe and compiled.schema == schema:
            return compiled
    key = json.dumps(schema, sort_keys=True, default=repr)
    found = _COMPILED.get(key)
    if found is None:
        found = CompiledSchema(copy.deepcopy(schema))
        with _COMPILED_LOCK:
            if len(_COMPILED) < 1024:
                found = _COMPILED.setdefault(key, found)
    _recent = (found, *(c for c in _recent if c is not found))[:8]
    return found


def _eq_safe(schema: Any) -> bool:
    """Whether every schema ``==`` to this one compiles to the same generator. ``==`` takes
    ``True``, ``1`` and ``1.0`` for equal; that matters only where values are copied into
    the output (``const``, ``enum``) or a keyword is read as bool or number
    (``exclusiveMinimum``/``exclusiveMaximum``), so schemas with those are looked up by key."""
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in ("exclusiveMinimum", "exclusiveMaximum"):
                return False
            if k in ("const", "enum") and not _no_numbers(v):
                return False
            if not _eq_safe(v):
                return False
    elif isinstance(schema, list):
        return all(_eq_safe(v) for v in schema)
    return True


def _no_numbers(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return False
    if isinstance(value, dict):
        return all(_no_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_numbers(v) for v in value)
    return True


def generate_json(schema: dict[str, Any], seed: int) -> Any:
    """A value valid against ``schema``, deterministic for (schema, seed)."""
    return compile_schema(schema).value(seed)


# --------------------------------------------------------------------------- embeddings


def embed(model: str, text: str, dims: int, seed: int = 0) -> list[float]:
    """A deterministic unit-length vector for ``text``."""
    rng = random.Random(seed_from("embed", model.removeprefix("models/"), text, seed))
    vec = [rng.random() * 2.0 - 1.0 for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
