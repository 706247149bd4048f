-- Named queries of the operations surface: /metrics, /ready, `worker status`, credit checks.
-- Loaded by worker.queries; every value is a bind parameter. Each is cheap enough to run at
-- every scrape (partial indexes, small tables, or today's range of updated_at).

-- name: ops_question_counts
SELECT coalesce(ai_commentary_status, 'not_enrolled') AS status, count(*) AS n
FROM questions GROUP BY 1 ORDER BY 1;

-- name: ops_pending_summary
SELECT * FROM ops_pending;

-- name: ops_jobs_by_queue
SELECT queue_name AS queue, status::text AS status, count(*) AS n
FROM procrastinate_jobs
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_queue_due
-- Jobs due now per queue and how long the oldest has waited (since it was due or deferred).
SELECT j.queue_name AS queue, count(*) AS due,
       coalesce(extract(epoch FROM now() - min(coalesce(j.scheduled_at, e.at))), 0)::float8
           AS oldest_age_seconds
FROM procrastinate_jobs j
LEFT JOIN LATERAL (
    SELECT min(ev.at) AS at FROM procrastinate_events ev
    WHERE ev.job_id = j.id AND ev.type = 'deferred') e ON true
WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
GROUP BY 1 ORDER BY 1;

-- name: ops_batches_live
SELECT provider, state, provider_status, count(*) AS n, max(age_seconds) AS oldest_age_seconds,
       sum(request_count) AS requests
FROM ops_batches_in_flight
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_batches_in_flight_list
SELECT id, provider, stage, model_key, model_name, batch_id, state, provider_status,
       request_count, poll_count, age_seconds, last_polled_at, next_poll_at
FROM ops_batches_in_flight
ORDER BY age_seconds DESC
LIMIT %(limit)s;

-- name: ops_batch_totals
-- Submissions and results per provider (ai_commentary_batch_jobs: one row per batch).
SELECT provider, stage, state, count(*) AS batches,
       count(submitted_at) AS submitted,
       coalesce(sum(request_count) FILTER (WHERE submitted_at IS NOT NULL), 0) AS requests,
       coalesce(sum(succeeded_count), 0) AS succeeded,
       coalesce(sum(failed_count), 0) AS failed,
       coalesce(sum(missing_count), 0) AS missing,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens
FROM ai_commentary_batch_jobs
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_batch_turnaround_buckets
-- Cumulative histogram buckets of submitted -> finished per provider and stage.
WITH d AS (
    SELECT provider, stage, extract(epoch FROM finished_at - submitted_at)::float8 AS s
    FROM ai_commentary_batch_jobs
    WHERE finished_at IS NOT NULL AND submitted_at IS NOT NULL
)
SELECT d.provider, d.stage, le.le, count(*) FILTER (WHERE d.s <= le.le) AS n
FROM d CROSS JOIN unnest(%(buckets)s::float8[]) AS le (le)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_batch_turnaround_totals
SELECT provider, stage, count(*) AS n,
       coalesce(sum(extract(epoch FROM finished_at - submitted_at)), 0)::float8 AS total_seconds
FROM ai_commentary_batch_jobs
WHERE finished_at IS NOT NULL AND submitted_at IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_errors_by_kind
SELECT coalesce(provider, '') AS provider, kind, sum(occurrences) AS occurrences,
       count(*) AS distinct_errors
FROM worker_errors GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_last_errors
SELECT id, kind, provider, question_id, batch_job_id, message, occurrences,
       first_seen_at, last_seen_at,
       extract(epoch FROM now() - last_seen_at)::float8 AS age_seconds
FROM worker_errors
ORDER BY last_seen_at DESC
LIMIT %(limit)s;

-- name: ops_spend_since
-- The ledger from a point in time on (index range scan of updated_at).
SELECT provider, model_name, batch_priced, count(*) AS requests,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd
FROM ai_cost_ledger
WHERE recorded_at >= %(since)s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_today_start
SELECT current_date::timestamptz AS since;

-- name: ops_now
SELECT now() AS now;

-- name: ops_workers
SELECT count(*) AS workers,
       count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => %(fresh_seconds)s))
           AS fresh,
       extract(epoch FROM now() - max(last_heartbeat))::float8 AS newest_heartbeat_age_seconds
FROM procrastinate_workers;

-- name: ops_ping
SELECT 1 AS ok;

-- name: ops_table_exists
SELECT to_regclass(%(name)s) IS NOT NULL AS present;

-- name: ops_table_columns
SELECT a.attname AS name
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(name)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: ops_last_credit_check
SELECT id, provider, checked_at, total_credits, total_usage, remaining_usd, usage_today_usd,
       level, alerts, error,
       extract(epoch FROM now() - checked_at)::float8 AS age_seconds
FROM provider_credit_checks
WHERE provider = %(provider)s
ORDER BY checked_at DESC
LIMIT 1;

-- name: ops_credit_usage_baseline
-- The cumulative usage the day started from: the last successful check before today, else
-- today's first one.
SELECT total_usage FROM (
    (SELECT total_usage, 0 AS pref FROM provider_credit_checks
      WHERE provider = %(provider)s AND total_usage IS NOT NULL AND checked_at < %(day_start)s
      ORDER BY checked_at DESC LIMIT 1)
    UNION ALL
    (SELECT total_usage, 1 AS pref FROM provider_credit_checks
      WHERE provider = %(provider)s AND total_usage IS NOT NULL AND checked_at >= %(day_start)s
      ORDER BY checked_at ASC LIMIT 1)
) b
ORDER BY pref
LIMIT 1;

-- name: ops_credit_alerted_since
-- Alert kinds already raised since a point in time (so an alert is not repeated every hour).
SELECT DISTINCT a ->> 'kind' AS kind
FROM provider_credit_checks c
CROSS JOIN LATERAL jsonb_array_elements(c.alerts) AS a
WHERE c.provider = %(provider)s AND c.checked_at >= %(since)s;

-- name: ops_credit_previous_level
SELECT level FROM provider_credit_checks
WHERE provider = %(provider)s AND level <> 'error'
ORDER BY checked_at DESC LIMIT 1;

-- name: ops_credit_insert
INSERT INTO provider_credit_checks
    (provider, total_credits, total_usage, remaining_usd, usage_today_usd, level, alerts, error)
VALUES (%(provider)s, %(total_credits)s, %(total_usage)s, %(remaining_usd)s,
        %(usage_today_usd)s, %(level)s, %(alerts)s, %(error)s)
RETURNING id, checked_at;

-- name: ops_database
SELECT current_database() AS name, now() AS now;

-- name: ops_errors_24h_summary
SELECT kind, provider, distinct_errors, occurrences, last_seen_at
FROM ops_errors_24h
ORDER BY occurrences DESC, kind
LIMIT 10;

-- name: ops_realtime_open
-- The realtime lane's queue: open ai_jobs by provider and status (partial index ai_jobs_due_idx).
SELECT coalesce(provider, '') AS provider, status, count(*) AS n
FROM ai_jobs WHERE status IN ('pending', 'retrying', 'processing')
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_realtime_due
SELECT count(*) AS due,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
FROM ai_jobs WHERE status IN ('pending', 'retrying') AND next_attempt_at <= now();

-- The all-time counters below read finished rows in a range of their finishing time,
-- [from, to): worker.ops.metrics folds everything older than a few minutes into per-process
-- totals once and afterwards reads only the recent range (index range scans of
-- ai_jobs_finished_idx / the comments' updated_at), so a scrape does not rescan the table.

-- name: ops_realtime_totals
-- Finished realtime jobs per provider, model and kind: completed, failed, their failed
-- provider calls (attempts), rate-limit waits (throttled) and stored tokens. model is the
-- job's model where the configuration knows it (ai_metric_models, schema 0025), else
-- 'other'; kind is bounded by the insert trigger (chat, completion, embedding, a template).
-- Grouped before the models are mapped, so the join sees a few groups, not every row.
WITH g AS (
    SELECT provider, model, kind,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           coalesce(sum(attempts), 0) AS failed_calls,
           coalesce(sum(throttled), 0) AS throttled,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens
    FROM ai_jobs
    WHERE completed_at >= %(from)s AND completed_at < %(to)s AND status IN ('completed', 'failed')
    GROUP BY 1, 2, 3
)
SELECT coalesce(g.provider, '') AS provider,
       CASE WHEN m.model IS NULL THEN 'other' ELSE g.model END AS model, g.kind,
       sum(g.completed) AS completed, sum(g.failed) AS failed,
       sum(g.failed_calls) AS failed_calls, sum(g.throttled) AS throttled,
       sum(g.input_tokens) AS input_tokens, sum(g.output_tokens) AS output_tokens
FROM g LEFT JOIN ai_metric_models m ON m.provider = g.provider AND m.model = g.model
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_realtime_open_calls
-- Failed calls and rate-limit waits of the jobs still open (read at every scrape).
SELECT coalesce(provider, '') AS provider,
       coalesce(sum(attempts), 0) AS failed_calls,
       coalesce(sum(throttled), 0) AS throttled
FROM ai_jobs WHERE status IN ('pending', 'retrying', 'processing')
GROUP BY 1 ORDER BY 1;

-- name: ops_realtime_failures
SELECT coalesce(provider, '') AS provider, coalesce(error_kind, 'unknown') AS error_kind,
       count(*) AS n
FROM ai_jobs
WHERE status = 'failed' AND completed_at >= %(from)s AND completed_at < %(to)s
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_realtime_latency
-- Completed jobs per provider, model and kind (models mapped as in ops_realtime_totals) by
-- latency bucket (width_bucket over the upper bounds, shifted by a nanosecond so that
-- bucket i holds bounds[i] < x <= bounds[i+1]): the successful provider call, and the
-- whole wait from insert to completion.
WITH d AS (
    SELECT provider, model, kind, latency_ms / 1000.0 AS call_s,
           extract(epoch FROM completed_at - created_at)::float8 AS wait_s
    FROM ai_jobs
    WHERE status = 'completed' AND completed_at >= %(from)s AND completed_at < %(to)s
), g AS (
    SELECT provider, model, kind, 'call' AS what,
           width_bucket(call_s::float8, %(bounds)s::float8[]) AS b,
           count(*) AS n, sum(call_s)::float8 AS total
    FROM d WHERE call_s IS NOT NULL GROUP BY 1, 2, 3, 4, 5
    UNION ALL
    SELECT provider, model, kind, 'turnaround', width_bucket(wait_s, %(bounds)s::float8[]),
           count(*), sum(wait_s)
    FROM d GROUP BY 1, 2, 3, 4, 5
)
SELECT coalesce(g.provider, '') AS provider,
       CASE WHEN m.model IS NULL THEN 'other' ELSE g.model END AS model, g.kind, g.what, g.b,
       sum(g.n) AS n, sum(g.total)::float8 AS total
FROM g LEFT JOIN ai_metric_models m ON m.provider = g.provider AND m.model = g.model
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5;

-- name: ops_realtime_spend
-- Priced realtime jobs per provider and model (models mapped as in ops_realtime_totals).
WITH g AS (
    SELECT provider, model, count(*) AS requests,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd
    FROM ai_jobs
    WHERE cost_usd IS NOT NULL AND completed_at >= %(from)s AND completed_at < %(to)s
    GROUP BY 1, 2
)
SELECT coalesce(g.provider, '') AS provider,
       CASE WHEN m.model IS NULL THEN 'other' ELSE g.model END AS model_name,
       sum(g.requests) AS requests, sum(g.input_tokens) AS input_tokens,
       sum(g.output_tokens) AS output_tokens, sum(g.cost_usd) AS cost_usd
FROM g LEFT JOIN ai_metric_models m ON m.provider = g.provider AND m.model = g.model
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: ops_spend_range
-- The ledger in a range of recorded_at (a regenerated comment counts again: it was paid again).
SELECT provider, model_name, batch_priced, count(*) AS requests,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd
FROM ai_cost_ledger
WHERE recorded_at >= %(from)s AND recorded_at < %(to)s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: ops_scrape_clock
SELECT now() AS now, (SELECT oid::bigint FROM pg_database WHERE datname = current_database()) AS db;

-- name: ops_alerts_by_status
SELECT status, count(*) AS n FROM worker_alerts GROUP BY 1 ORDER BY 1;

-- name: ops_processes
SELECT count(*) AS registered,
       count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => %(fresh_seconds)s))
           AS fresh
FROM worker_processes;

-- name: process_beat
INSERT INTO worker_processes (id, hostname, pid, queues)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s)
ON CONFLICT (id) DO UPDATE SET last_heartbeat = now();

-- name: process_gone
DELETE FROM worker_processes
WHERE id = %(id)s OR last_heartbeat < now() - interval '1 day';

-- name: ops_process_list
SELECT id, hostname, pid, queues, started_at,
       extract(epoch FROM now() - last_heartbeat)::float8 AS heartbeat_age_seconds
FROM worker_processes ORDER BY started_at;

-- name: ops_alerts_24h
SELECT id, dedup_key, title, message, priority, status, suppressed, created_at, sent_at,
       delivery_error, delivered_with,
       extract(epoch FROM now() - created_at)::float8 AS age_seconds
FROM worker_alerts
WHERE created_at > now() - interval '24 hours'
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: ops_failed_questions
-- The question's own reason (bad input) first, else its last failed request's.
SELECT q.id, left(q.question, 80) AS question, q.ai_commentary_status AS status,
       CASE WHEN q.ai_commentary_error IS NULL THEN r.model_key END AS model_key,
       coalesce(q.ai_commentary_error, r.last_error) AS last_error
FROM questions q
LEFT JOIN LATERAL (
    SELECT model_key, last_error FROM ai_commentary_requests
    WHERE question_id = q.id AND last_error IS NOT NULL
    ORDER BY updated_at DESC LIMIT 1) r ON true
WHERE q.ai_commentary_status = 'failed'
ORDER BY q.id
LIMIT %(limit)s;

-- name: ops_failed_questions_count
SELECT count(*) AS n FROM questions WHERE ai_commentary_status = 'failed';

-- name: ops_failed_jobs
SELECT id, kind, provider, model, error_kind, error, attempts,
       extract(epoch FROM now() - coalesce(completed_at, updated_at))::float8 AS age_seconds
FROM ai_jobs
WHERE status = 'failed' AND coalesce(completed_at, updated_at) > now() - interval '24 hours'
ORDER BY id DESC
LIMIT %(limit)s;

-- name: ops_failed_jobs_count
SELECT count(*) AS n FROM ai_jobs
WHERE status = 'failed' AND coalesce(completed_at, updated_at) > now() - interval '24 hours';

-- name: ops_failed_batches
SELECT id, provider, stage, model_key, batch_id, state, status AS provider_status, request_count,
       failure_cause, coalesce(failure_reason, error) AS error,
       extract(epoch FROM now() - coalesce(finished_at, updated_at))::float8 AS age_seconds
FROM ai_commentary_batch_jobs
WHERE (state IN ('failed', 'expired', 'cancelled', 'abandoned')
       OR status IN ('failed', 'expired', 'cancelled', 'cancelling'))
  AND coalesce(finished_at, updated_at) > now() - interval '24 hours'
ORDER BY coalesce(finished_at, updated_at) DESC
LIMIT %(limit)s;

-- name: record_task_run
-- One row per task run (worker.queue.task_runs), written when the task ends.
INSERT INTO worker_task_runs (task_name, job_id, worker_pid, started_at, finished_at, outcome, detail)
VALUES (%s, %s, %s, %s, now(), %s, %s);

-- name: ping
SELECT 1;

-- name: notify
SELECT pg_notify(%s, %s);
