-- Batch-level failure causes and late results (schema/0018; worker/commentary/poll.py).

-- name: batch_failure
UPDATE ai_commentary_batch_jobs
SET failure_cause = %(cause)s, failure_reason = %(reason)s, updated_at = now()
WHERE id = %(id)s;

-- name: batch_results_pending
-- A batch reported success but its results are not readable yet: poll again after
-- %(delay)s; returns how long it has been waiting for them.
UPDATE ai_commentary_batch_jobs
SET status = %(raw_state)s, poll_count = poll_count + 1, last_polled_at = now(),
    next_poll_at = now() + make_interval(secs => %(delay)s), updated_at = now(),
    results_pending_since = coalesce(results_pending_since, now())
WHERE id = %(id)s
RETURNING extract(epoch FROM now() - results_pending_since)::float8 AS waited;

-- name: ops_batch_failures
-- Batches that ended without all their results, by provider, stage and cause (/metrics).
SELECT provider, stage, failure_cause AS cause, count(*) AS batches,
       coalesce(sum(missing_count), 0) AS missing
FROM ai_commentary_batch_jobs
WHERE failure_cause IS NOT NULL
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
