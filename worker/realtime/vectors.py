"""Embeddings written to Postgres in binary (``float4[]``), not as text.

Written as text, a flush of embeddings cost Python a ``repr`` per float plus psycopg's
text-array escaping, and Postgres a ``float4in`` per float: a cProfile of 10,000 texts
(15.4 M floats, tests/bench/peers/FINDINGS.md) spent 13 of 29.5 s there, on the event loop.
Here a flush's vectors are packed, in C (``struct``), into one ``float4[]`` in Postgres's
binary array format (:class:`Float4Array`, dumped by :class:`Float4ArrayBinaryDumper`);
each row's vector is a slice of it (``rt_finish``). No numpy: the worker does not depend
on it. Measured options: tests/bench/bench_vector_write.py.

Stored values are the ones the text path stored: a float from a base64 answer (OpenAI) is
a float32 already, and ``repr`` then ``float4in`` gave back exactly those bits; a float from
a JSON answer (Gemini, Mistral, Ollama) is rounded to the nearest ``real`` both ways. The
text path's errors are kept too: a value beyond ``real``'s range, or a non-zero one that
would round to zero, is refused ("out of range for type real", so the writer fails that
job alone with the reason, as Postgres did). The one difference: a double exactly halfway
between two ``real`` values (25 significant bits, never seen from a provider) is rounded
to even here, where ``float4in`` rounded its shortest decimal form.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from psycopg.adapt import Dumper
from psycopg.pq import Format

FLOAT4_OID = 700
FLOAT4_ARRAY_OID = 1021

_HEADER_1D = struct.Struct(">iiiii")  # ndim, has-nulls flag, element oid, size, lower bound
_EMPTY = struct.pack(">iii", 0, 0, FLOAT4_OID)
_LEN4 = struct.pack(">i", 4)
_ZERO_ITEMS = (_LEN4 + b"\x00\x00\x00\x00", _LEN4 + b"\x80\x00\x00\x00")  # 0.0 and -0.0


class Float4Array:
    """A one-dimensional ``float4[]`` without NULLs, packed for the binary protocol."""

    __slots__ = ("count", "payload")

    def __init__(self, values: Sequence[float]) -> None:
        self.count = len(values)
        self.payload = pack_float4_array(values)


def pack_float4_array(values: Sequence[float]) -> bytes:
    """``values`` as Postgres's binary ``float4[]`` (big-endian; each element prefixed by
    its length, 4). Raises ValueError where ``float4in`` would have refused the text."""
    n = len(values)
    if n == 0:
        return _EMPTY
    try:
        floats = struct.pack(f">{n}f", *values)  # OverflowError beyond real's range
    except OverflowError:
        raise ValueError("a vector value is out of range for type real") from None
    except struct.error as exc:
        raise ValueError(f"a vector value is not a number ({exc})") from None
    body = bytearray(8 * n)
    words = memoryview(body).cast("I")
    words[0::2] = memoryview(_LEN4 * n).cast("I")
    words[1::2] = memoryview(floats).cast("I")
    zeros = body.count(_ZERO_ITEMS[0]) + body.count(_ZERO_ITEMS[1])  # aligned matches only
    if zeros and zeros > list(values).count(0.0):
        raise ValueError("a vector value is out of range for type real (rounds to zero)")
    return _HEADER_1D.pack(1, 0, FLOAT4_OID, n, 1) + body


class Float4ArrayBinaryDumper(Dumper):
    """Dumps :class:`Float4Array` as a binary ``float4[]`` parameter."""

    format = Format.BINARY
    oid = FLOAT4_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        payload: bytes = obj.payload
        return payload


def flatten(
    vectors: Sequence[Sequence[float] | None],
) -> tuple[Float4Array, list[int | None], list[int | None]]:
    """One ``float4[]`` holding every vector, and each vector's offset and length in it
    (None for an outcome without one): the flush sends one parameter, not one per row."""
    flat: list[float] = []
    offsets: list[int | None] = []
    lengths: list[int | None] = []
    for vec in vectors:
        if vec is None:
            offsets.append(None)
            lengths.append(None)
        else:
            offsets.append(len(flat))
            lengths.append(len(vec))
            flat.extend(vec)
    return Float4Array(flat), offsets, lengths
