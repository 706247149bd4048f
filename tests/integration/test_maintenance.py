"""The tick's healing decisions are made from liveness (session locks, overdue state), not
from Procrastinate job rows that can be left 'doing' by a worker that lost its connection."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.fixtures.pipeline import insert_questions
from worker.commentary import tick


async def test_overdue_batch_gets_a_poll_despite_a_zombie_doing_poll_job(
    db: psycopg.Connection[Any], opened_app: Any
) -> None:
    job_id = db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, batch_id, state, status, model_key,"
        " next_poll_at) VALUES ('openai', 'batch_x', 'in_flight', 'in_progress', 'chatgpt',"
        " now() - interval '10 minutes') RETURNING id"
    ).fetchone()["id"]  # type: ignore[index]
    # A poll job the worker started but could never mark finished.
    db.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, queueing_lock, args, status)"
        " VALUES ('poll', 'poll', %s, %s, 'doing')",
        (f"poll:{job_id}", psycopg.types.json.Jsonb({"batch_job_id": str(job_id)})),
    )
    async with opened_app.connector.pool.connection() as conn:
        assert await tick.restore_polls(conn) == 1
        # once a poll waits, the tick does not pile up more
        assert await tick.restore_polls(conn) == 0
    row = db.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'poll' AND status = 'todo'"
    ).fetchone()
    assert row == {"n": 1}


async def test_a_batch_polled_recently_is_left_alone(
    db: psycopg.Connection[Any], opened_app: Any
) -> None:
    db.execute(
        "INSERT INTO ai_commentary_batch_jobs (provider, batch_id, state, status, model_key,"
        " next_poll_at) VALUES ('openai', 'batch_y', 'in_flight', 'in_progress', 'chatgpt', now())"
    )
    async with opened_app.connector.pool.connection() as conn:
        assert await tick.restore_polls(conn) == 0


async def test_instant_claims_are_released_only_when_their_owner_lock_is_free(
    db_url: str, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    ids = insert_questions(db, 4, status="processing")
    db.execute(
        "INSERT INTO ai_commentary_requests (question_id, model_key, status, claimed_by, claimed_at)"
        " SELECT id, 'perplexity', 'submitted', CASE WHEN row_number() OVER (ORDER BY id) <= 2"
        " THEN 'instant:1:alive' ELSE 'instant:2:dead' END, now() - interval '1 hour'"
        " FROM questions WHERE id = ANY(%s)",
        (ids,),
    )
    with psycopg.connect(db_url, autocommit=True) as holder:
        # the live call's session holds its owner lock (as submit_instant_model does)
        holder.execute("SELECT pg_advisory_lock(hashtext('instant:1:alive'))")
        async with opened_app.connector.pool.connection() as conn:
            released = await tick.release_dead_instant_claims(conn)
        assert released == 2
        rows = db.execute(
            "SELECT claimed_by, status, attempts, orphaned FROM ai_commentary_requests"
            " ORDER BY claimed_by NULLS LAST"
        ).fetchall()
        assert [r["status"] for r in rows] == ["submitted", "submitted", "waiting", "waiting"]
        assert [r["claimed_by"] for r in rows[:2]] == ["instant:1:alive", "instant:1:alive"]
        # a dead worker is not the request's fault: no attempt spent, the release counted
        assert [(r["attempts"], r["orphaned"]) for r in rows[2:]] == [(0, 1), (0, 1)]


async def test_a_call_whose_worker_keeps_dying_fails_with_the_reason(
    db: psycopg.Connection[Any], opened_app: Any
) -> None:
    ids = insert_questions(db, 2, status="processing")
    db.execute(
        "INSERT INTO ai_commentary_requests (question_id, model_key, status, claimed_by,"
        " claimed_at, orphaned) SELECT id, 'perplexity', 'submitted', 'instant:9:dead',"
        " now() - interval '1 hour', CASE WHEN id = %s THEN %s ELSE 2 END"
        " FROM questions WHERE id = ANY(%s)",
        (ids[0], tick.MAX_ORPHANED - 1, ids),
    )
    async with opened_app.connector.pool.connection() as conn:
        assert await tick.release_dead_instant_claims(conn) == 2
    rows = {
        r["question_id"]: r
        for r in db.execute(
            "SELECT question_id, status, orphaned, last_error FROM ai_commentary_requests"
        ).fetchall()
    }
    poison, unlucky = rows[ids[0]], rows[ids[1]]
    assert (poison["status"], poison["orphaned"]) == ("failed", tick.MAX_ORPHANED)
    assert f"{tick.MAX_ORPHANED} times" in poison["last_error"]
    assert (unlucky["status"], unlucky["orphaned"]) == ("waiting", 3)
    q = db.execute(
        "SELECT ai_commentary_status, ai_commentary_error FROM questions WHERE id = %s",
        (ids[0],),
    ).fetchone()
    assert q is not None and q["ai_commentary_status"] == "failed"
    assert "worker running the call stopped" in q["ai_commentary_error"]
