"""How to write a flush of embeddings: the options measured side by side, one run.

``python -m tests.bench.bench_vector_write [--rows 500] [--dims 1536] [--runs 5]``

Each option writes the same ``rows`` vectors (float32 values, as an OpenAI base64 answer
decodes to) into ``real[]`` columns of a scratch table on the shared server, in one
transaction, and the CPU seconds of this Python process and the wall time are reported
(medians), with the ratio to the text path the drain used before:

* text: ``'{' + ','.join(map(repr, v)) + '}'`` per vector, a ``text[]`` parameter, cast;
* binary-slices: every vector packed into one binary ``float4[]`` parameter
  (:mod:`worker.realtime.vectors`), each row a slice of it - what ``rt_finish`` does;
* binary-executemany: one ``UPDATE`` per row with a binary ``float4[]`` parameter
  (``%b``, same dumper), pipelined by psycopg's ``executemany``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg
from psycopg import sql

from worker.database import resolve_database_url, with_database
from worker.realtime.vectors import Float4Array, Float4ArrayBinaryDumper, flatten


def _vectors(rows: int, dims: int) -> list[list[float]]:
    rnd = random.Random(7)
    raw = array("f", (rnd.gauss(0, 0.05) for _ in range(rows * dims))).tolist()
    return [raw[i * dims : (i + 1) * dims] for i in range(rows)]


def text_path(conn: psycopg.Connection[Any], ids: list[int], vecs: list[list[float]]) -> None:
    lits = ["{" + ",".join(map(repr, v)) + "}" for v in vecs]
    conn.execute(
        "UPDATE vw SET v = u.e::real[] FROM unnest(%s::bigint[], %s::text[]) AS u(id, e)"
        " WHERE vw.id = u.id",
        (ids, lits),
    )


def binary_slices(conn: psycopg.Connection[Any], ids: list[int], vecs: list[list[float]]) -> None:
    flat, offs, lens = flatten(vecs)
    conn.execute(
        "UPDATE vw SET v = (%s::real[])[u.o + 1 : u.o + u.n]"
        " FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS u(id, o, n) WHERE vw.id = u.id",
        (flat, ids, offs, lens),
    )


def binary_executemany(
    conn: psycopg.Connection[Any], ids: list[int], vecs: list[list[float]]
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE vw SET v = %b WHERE id = %s",
            [(Float4Array(v), i) for i, v in zip(ids, vecs, strict=True)],
        )


OPTIONS = {
    "text": text_path,
    "binary-slices": binary_slices,
    "binary-executemany": binary_executemany,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--dims", type=int, default=1536)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    server = resolve_database_url()
    name = f"aiw_vw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        vecs = _vectors(args.rows, args.dims)
        ids = list(range(1, args.rows + 1))
        stored: dict[str, list[Any]] = {}
        cpu: dict[str, list[float]] = {k: [] for k in OPTIONS}
        wall: dict[str, list[float]] = {k: [] for k in OPTIONS}
        with psycopg.connect(with_database(server, name)) as conn:
            conn.adapters.register_dumper(Float4Array, Float4ArrayBinaryDumper)
            conn.execute("CREATE TABLE vw (id bigint PRIMARY KEY, v real[])")
            conn.execute(
                "INSERT INTO vw SELECT g, NULL FROM generate_series(1, %s) g", (args.rows,)
            )
            conn.commit()
            for _ in range(args.runs):
                for label, fn in OPTIONS.items():  # interleaved: load falls on all alike
                    c0, w0 = time.process_time(), time.perf_counter()
                    fn(conn, ids, vecs)
                    conn.commit()
                    cpu[label].append(time.process_time() - c0)
                    wall[label].append(time.perf_counter() - w0)
                    stored[label] = conn.execute(
                        "SELECT float4send(x) FROM vw, unnest(v) WITH ORDINALITY AS t(x, i)"
                        " ORDER BY id, i"
                    ).fetchall()
                    conn.execute("UPDATE vw SET v = NULL")
                    conn.commit()
        base_c = statistics.median(cpu["text"])
        base_w = statistics.median(wall["text"])
        print(f"{args.rows} vectors x {args.dims} floats, medians of {args.runs}:")
        for label in OPTIONS:
            c, w = statistics.median(cpu[label]), statistics.median(wall[label])
            same = stored[label] == stored["text"]
            print(
                f"  {label:20s} python CPU {c * 1000:7.1f} ms (x{base_c / c:5.1f} less)"
                f"  wall {w * 1000:7.1f} ms (x{base_w / w:5.1f} faster)  stored bits = text: {same}"
            )
    finally:
        with psycopg.connect(with_database(server, "postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
