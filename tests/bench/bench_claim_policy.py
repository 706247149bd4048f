"""Cost of the eligibility policy in the claim (issue 16, schema/0021): one claim of 40 from
50,000 pending questions, the policy's claim (app tables absent, then present with a third
of the owners entitled, blocking already done) against the claim without a policy (main
before issue 16: index order only), measured side by side in one run, medians of 9.

    python -m tests.bench.bench_claim_policy
"""

from __future__ import annotations

import time
from typing import Any, LiteralString

import psycopg

from tests.bench.common import emit, fresh_database, median
from worker.queries import q

PENDING = 50_000
RUNS = 9
PARAMS = {
    "delay_minutes": 0,
    "limit": 40,
    "models": ["chatgpt", "gemini", "mistral"],
    "partial_models": ["mistral"],
}
# The claim before issue 16: queue order from the index, no policy.
NO_POLICY: LiteralString = """
WITH picked AS (
    SELECT id FROM questions
    WHERE ai_commentary_status = 'pending'
      AND coalesce(ai_commentary_queued_at, '-infinity'::timestamptz)
          <= now() - make_interval(mins => %(delay_minutes)s)
    ORDER BY coalesce(ai_commentary_queued_at, '-infinity'::timestamptz), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE questions q
SET ai_commentary_status = 'processing', ai_commentary_claimed_at = now(),
    ai_commentary_attempts = q.ai_commentary_attempts + 1,
    ai_commentary_models = %(models)s::text[], ai_commentary_error = NULL
FROM picked WHERE q.id = picked.id RETURNING q.id"""


def timed(conn: psycopg.Connection[Any], query: LiteralString) -> float:
    times = []
    for _ in range(RUNS):
        with conn.transaction(force_rollback=True):
            t = time.perf_counter()
            conn.execute(query, PARAMS).fetchall()
            times.append(time.perf_counter() - t)
    return median(times) * 1000


def main() -> None:
    with fresh_database("policy") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # load without triggers
        conn.execute(
            "INSERT INTO questions (question, option_a, option_b, option_c, option_d,"
            " visibility, user_id, ai_commentary_status, ai_commentary_queued_at)"
            " SELECT 'Q' || g, 'a', 'b', 'c', 'd',"
            " CASE WHEN g %% 3 = 0 THEN 'university' ELSE 'private' END,"
            " ('00000000-0000-4000-8000-' || lpad((g %% 2000)::text, 12, '0'))::uuid,"
            " 'pending', now() - interval '1 day' FROM generate_series(1, %s) g",
            (PENDING,),
        )
        conn.execute("SET session_replication_role = origin")
        conn.execute("ANALYZE questions")
        base = timed(conn, NO_POLICY)
        absent = timed(conn, q("claim_pending"))
        conn.execute(
            "CREATE TABLE profiles (id uuid PRIMARY KEY, is_premium boolean NOT NULL);"
            "CREATE TABLE subscribers (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " user_id uuid, subscription_end timestamptz);"
            "INSERT INTO profiles SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))"
            "::uuid, g % 3 = 0 FROM generate_series(0, 1999) g;"
            "ANALYZE profiles"
        )
        conn.execute(q("claim_pending"), PARAMS)  # the one-time blocking, kept
        conn.execute(
            "UPDATE questions SET ai_commentary_status = 'pending'"
            " WHERE ai_commentary_status = 'processing'"
        )
        present = timed(conn, q("claim_pending"))
    emit(
        "claim of 40 from 50k pending, policy (app tables absent)",
        absent,
        "ms",
        baseline=base,
        baseline_label="claim without a policy",
        better="lower",
    )
    emit(
        "claim of 40 from 50k pending, policy (app tables present)",
        present,
        "ms",
        baseline=base,
        baseline_label="claim without a policy",
        better="lower",
    )


if __name__ == "__main__":
    main()
