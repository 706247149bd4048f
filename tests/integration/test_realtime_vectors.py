"""Embeddings written in binary (worker/realtime/vectors.py) are stored bit for bit as the
text path stored them (``'{' || repr of each float || '}'::real[]``), and what the text path
refused (out of range for ``real``) fails that job alone, with the reason."""

from __future__ import annotations

import math
import random
from array import array
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.realtime.drain import Drain
from worker.realtime.model import Outcome, RealtimeSettings


def _text_literal(vec: list[float]) -> str:
    return "{" + ",".join(map(repr, vec)) + "}"  # the drain's former _vector_literal


def _vectors() -> list[list[float]]:
    rnd = random.Random(15)
    # as an OpenAI base64 answer decodes: float32 values widened to double
    f32 = array("f", (rnd.gauss(0, 0.05) for _ in range(3 * 1536))).tolist()
    # as a JSON answer parses (Gemini, Mistral, Ollama): arbitrary doubles, every magnitude
    doubles = [rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-40, 38) for _ in range(4000)]
    edges = [
        0.0,
        -0.0,
        1,
        -3,
        1.401298464324817e-45,
        -1.401298464324817e-45,
        1e-40,
        3.4028234663852886e38,
        -3.4028234663852886e38,
        1.1754943508222875e-38,
        math.inf,
        -math.inf,
        0.1,
        1 / 3,
        2.0**-126,
        123456789.123,
    ]
    return [f32[:1536], f32[1536:3072], f32[3072:], doubles, edges, [], [0.5]]


def _claimed(db: psycopg.Connection[Any], n: int, owner: str) -> list[int]:
    rows = db.execute(
        "INSERT INTO ai_jobs (kind, provider, model, input_text)"
        " SELECT 'embedding', 'mock', 'mock-embed', 'text ' || g FROM generate_series(1, %s) g"
        " RETURNING id",
        (n,),
    ).fetchall()
    ids = [r["id"] for r in rows]
    db.execute(
        "UPDATE ai_jobs SET status = 'processing', claimed_by = %s,"
        " lease_until = now() + interval '10 minutes' WHERE id = ANY(%s)",
        (owner, ids),
    )
    return ids


def _bits(db: psycopg.Connection[Any], sql: str, param: Any) -> list[bytes] | None:
    row = db.execute(
        f"SELECT CASE WHEN v IS NULL THEN NULL ELSE ARRAY(SELECT float4send(x) FROM unnest(v) x) END"
        f" AS b FROM ({sql}) s(v)",
        (param,),
    ).fetchone()
    return None if row is None else row["b"]


async def _flush(db_url: str, outcomes: list[Outcome], owner: str) -> dict[str, int]:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as pool:
        d = Drain(pool, RealtimeSettings(), {}, cast(Any, None))
        d.owner = owner
        await d._flush(outcomes)
        return dict(d.report)


def test_without_pgvector_nothing_of_embedding_vector_is_expected(db_url: str) -> None:
    from worker.migrate import missing_objects

    # the shared server has no `vector`: 0024 creates nothing, and the start-up schema
    # check must not miss its trigger (it did: `worker run` refused to start)
    assert missing_objects(db_url) == []


async def test_binary_vectors_are_stored_as_the_text_path_stored_them(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    vectors = _vectors()
    owner = "test-vectors"
    ids = _claimed(db, len(vectors) + 1, owner)
    outcomes = [
        Outcome(job_id=i, status="completed", provider="mock", model="mock-embed", embedding=v)
        for i, v in zip(ids, vectors, strict=False)
    ]
    outcomes.append(Outcome(job_id=ids[-1], status="retrying", provider="mock", model="m"))
    await _flush(db_url, outcomes, owner)
    for job_id, vec in zip(ids, vectors, strict=False):
        stored = _bits(db, "SELECT embedding FROM ai_jobs WHERE id = %s", job_id)
        expected = _bits(db, "SELECT %s::real[]", _text_literal(vec))
        assert stored is not None and stored == expected, f"job {job_id}: {len(vec)} floats differ"
    assert (
        db.execute("SELECT embedding FROM ai_jobs WHERE id = %s", (ids[-1],)).fetchone()[
            "embedding"
        ]
        is None
    )
    # NaN is stored as NaN (its bits are the platform's either way)
    ids2 = _claimed(db, 1, owner)
    await _flush(
        db_url,
        [
            Outcome(
                job_id=ids2[0],
                status="completed",
                provider="mock",
                model="m",
                embedding=[math.nan, 1.0],
            )
        ],
        owner,
    )
    row = db.execute(
        "SELECT embedding[1] = 'NaN'::real AS nan, embedding[2] AS one FROM ai_jobs WHERE id = %s",
        (ids2[0],),
    ).fetchone()
    assert row["nan"] and row["one"] == 1.0


async def test_a_value_real_cannot_hold_fails_its_job_alone(
    db: psycopg.Connection[Any], db_url: str
) -> None:
    owner = "test-vectors-range"
    ids = _claimed(db, 4, owner)
    bad = {ids[0]: [0.1, 1e39], ids[1]: [1e-50, 0.2]}  # the text path: "out of range for type real"
    for vec in bad.values():
        try:
            db.execute("SELECT %s::real[]", (_text_literal(vec),))
        except psycopg.errors.NumericValueOutOfRange:
            db.rollback()
        else:
            raise AssertionError(f"{vec} was accepted by float4in")
    good = {ids[2]: [0.25, -0.0], ids[3]: [0.5, -2.0]}
    outcomes = [
        Outcome(job_id=i, status="completed", provider="mock", model="m", embedding=v)
        for i, v in {**bad, **good}.items()
    ]
    await _flush(db_url, outcomes, owner)
    rows = {
        r["id"]: r
        for r in db.execute(
            "SELECT id, status, error, embedding FROM ai_jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
    }
    for i in bad:
        assert rows[i]["status"] == "failed"
        assert "out of range for type real" in rows[i]["error"]
        assert rows[i]["embedding"] is None
    for i, vec in good.items():
        assert rows[i]["status"] == "completed"
        assert rows[i]["embedding"] == vec


def test_embedding_vector_is_filled_where_pgvector_exists() -> None:
    # The shared server has no `vector` extension: a private cluster (the pgserver wheel's
    # binaries, which ship it) in the Supabase shape, the extension in schema `extensions`.
    import asyncio

    from tests.fixtures.private_pg import PrivateCluster
    from worker.migrate import migrate, missing_objects

    with PrivateCluster() as pg:
        admin = pg.url("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE vec")
        url = pg.url("vec")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA extensions")
            conn.execute("CREATE EXTENSION vector SCHEMA extensions")
            # as on Supabase, where the migrating role's search_path includes `extensions`
            conn.execute('ALTER DATABASE vec SET search_path = "$user", public, extensions')
        migrate(url)
        assert missing_objects(url) == []  # `worker run` checks this before it starts
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
            owner = "test-pgvector"
            ids = _claimed(db, 4, owner)
            vectors = {ids[0]: _vectors()[0], ids[1]: [0.5, math.nan], ids[2]: []}
            outcomes = [
                Outcome(job_id=i, status="completed", provider="mock", model="m", embedding=v)
                for i, v in vectors.items()
            ]
            outcomes.append(Outcome(job_id=ids[3], status="retrying", provider="mock", model="m"))
            asyncio.run(_flush(url, outcomes, owner))
            rows = {
                r["id"]: r
                for r in db.execute(
                    "SELECT id, status, embedding_vector IS NULL AS vnull,"
                    " embedding_vector::real[] = embedding AS same,"
                    " extensions.vector_dims(embedding_vector) AS dims FROM ai_jobs"
                ).fetchall()
            }
            assert rows[ids[0]] == {
                "id": ids[0],
                "status": "completed",
                "vnull": False,
                "same": True,
                "dims": 1536,
            }
            # NaN and empty vectors: pgvector refuses them; real[] keeps them, the copy is NULL
            assert rows[ids[1]]["status"] == rows[ids[2]]["status"] == "completed"
            assert rows[ids[1]]["vnull"] and rows[ids[2]]["vnull"]
            assert rows[ids[3]]["vnull"]
            # anyone's write of `embedding` keeps the copy in step
            db.execute("UPDATE ai_jobs SET embedding = '{1,2,3}' WHERE id = %s", (ids[0],))
            db.execute("UPDATE ai_jobs SET embedding = NULL WHERE id = %s", (ids[1],))
            got = db.execute(
                "SELECT id, embedding_vector::text AS v FROM ai_jobs WHERE id = ANY(%s) ORDER BY id",
                (ids[:2],),
            ).fetchall()
            assert [r["v"] for r in got] == ["[1,2,3]", None]
