-- Token budgets and money reservations (worker.commentary.budget, schema/0019).

-- name: budget_lock
-- One packer per provider at a time: the reservation it writes is seen by the next one.
SELECT pg_advisory_xact_lock(hashtext('worker:budget:' || %(provider)s));

-- name: budget_state
-- The limits, the learned state and what batches of this provider/model hold right now.
WITH lim AS (
    SELECT l.* FROM worker_batch_limits l
    WHERE l.provider = %(provider)s AND l.model IN (%(model)s, '*')
    ORDER BY (l.model = %(model)s) DESC
    LIMIT 1
), learned AS (
    SELECT * FROM worker_token_budget WHERE provider = %(provider)s AND model = %(model)s
), live AS (
    SELECT b.model_name, b.estimated_tokens, b.request_count
    FROM ai_commentary_batch_jobs b
    WHERE b.provider = %(provider)s AND b.state IN ('submitting', 'in_flight', 'ingesting')
), held AS (
    SELECT coalesce(sum(b.estimated_tokens), 0) AS tokens
    FROM ai_commentary_batch_jobs b
    WHERE b.reservation_held_until > now() AND b.provider = %(provider)s
      AND b.model_name = %(model)s
      AND b.state NOT IN ('submitting', 'in_flight', 'ingesting')
)
SELECT (SELECT enqueued_tokens FROM lim) AS limit_tokens,
       (SELECT enqueued_requests FROM lim) AS limit_requests,
       (SELECT live_batches FROM lim) AS limit_live_batches,
       (SELECT batches_per_hour FROM lim) AS limit_batches_per_hour,
       (SELECT learned_enqueued_tokens FROM learned) AS learned_tokens,
       coalesce((SELECT correction_factor FROM learned), 1.0) AS factor,
       (SELECT avg_request_tokens FROM learned) AS avg_request_tokens,
       (SELECT avg_output_tokens FROM learned) AS avg_output_tokens,
       (SELECT coalesce(sum(estimated_tokens), 0) FROM live WHERE model_name = %(model)s)
           + (SELECT tokens FROM held) AS reserved_tokens,
       (SELECT coalesce(sum(request_count), 0) FROM live) AS reserved_requests,
       (SELECT count(*) FROM live) AS live_batches,
       (SELECT count(*) FROM ai_commentary_batch_jobs b
        WHERE b.provider = %(provider)s AND b.submitted_at > now() - interval '1 hour')
           AS created_last_hour;

-- name: waiting_counts
SELECT model_key, count(*) AS n FROM ai_commentary_requests WHERE status = 'waiting'
GROUP BY model_key;

-- name: money_state
-- Today's spend (the ledger) and the estimated cost of batches not yet ingested.
SELECT worker_spent_usd_since(date_trunc('day', clock_timestamp(), %(tz)s)) AS spent,
       worker_reserved_usd() AS reserved;

-- name: estimate_cost
SELECT worker_cost_usd(%(provider)s, %(model)s, %(input)s, %(output)s, true) AS cost;

-- name: record_reservation
UPDATE ai_commentary_batch_jobs
SET estimated_tokens = %(tokens)s, raw_estimated_tokens = %(raw)s,
    estimated_cost_usd = worker_cost_usd(provider, model_name, %(tokens)s, %(output)s, true)
WHERE id = %(id)s;

-- name: budget_ensure
INSERT INTO worker_token_budget (provider, model) VALUES (%(provider)s, %(model)s)
ON CONFLICT (provider, model) DO NOTHING;

-- name: budget_note_requests
-- A running average of the estimated prompt tokens per request (sizes the next claim).
UPDATE worker_token_budget
SET avg_request_tokens = CASE WHEN avg_request_tokens IS NULL THEN %(avg)s
                              ELSE 0.8 * avg_request_tokens + 0.2 * %(avg)s END,
    updated_at = now()
WHERE provider = %(provider)s AND model = %(model)s;

-- name: calibration_samples
-- Ingested batches not yet used to learn the correction factor (each is used once).
UPDATE ai_commentary_batch_jobs
SET calibrated = true
WHERE state = 'ingested' AND NOT calibrated AND provider = %(provider)s
  AND model_name = %(model)s
RETURNING raw_estimated_tokens, estimated_tokens, request_count,
          succeeded_count + failed_count AS answered, input_tokens, output_tokens,
          succeeded_count;

-- name: budget_learn
-- A batch the provider ran proves its queue held at least that batch: a learned limit below
-- it (an older refusal, a tier raised since) grows back to it.
UPDATE worker_token_budget
SET correction_factor = %(factor)s, calibration_samples = calibration_samples + %(samples)s,
    avg_output_tokens = coalesce(%(avg_output)s, avg_output_tokens),
    learned_enqueued_tokens = CASE WHEN learned_enqueued_tokens IS NULL THEN NULL
                                   ELSE greatest(learned_enqueued_tokens, %(proven)s) END,
    updated_at = now()
WHERE provider = %(provider)s AND model = %(model)s;

-- name: budget_shrink
-- The provider refused a batch for its token queue: what was queued (this batch included)
-- was more than this account may queue. Learn the limit the provider named in its message
-- (%(named)s), else half of the smaller of what was queued and the current effective limit;
-- the refused batch keeps its reservation for a while (the provider counts it too).
WITH job AS (
    UPDATE ai_commentary_batch_jobs
    SET reservation_held_until = now() + make_interval(secs => %(hold)s)
    WHERE id = %(id)s
    RETURNING provider, model_name, estimated_tokens
), queued AS (
    SELECT coalesce(sum(b.estimated_tokens), 0) AS tokens
    FROM ai_commentary_batch_jobs b, job
    WHERE b.provider = job.provider AND b.model_name = job.model_name
      AND b.id <> %(id)s AND b.state IN ('submitting', 'in_flight', 'ingesting')
)
INSERT INTO worker_token_budget AS t
    (provider, model, learned_enqueued_tokens, limit_failures, last_limit_failure_at,
     last_limit_failure)
SELECT job.provider, job.model_name,
       coalesce(%(named)s::bigint,
                greatest(1, floor(0.5 * least(
                    coalesce(%(effective)s::bigint, queued.tokens + job.estimated_tokens),
                    greatest(queued.tokens + job.estimated_tokens, 1))))::bigint),
       1, now(), %(reason)s
FROM job, queued
ON CONFLICT (provider, model) DO UPDATE
SET learned_enqueued_tokens = EXCLUDED.learned_enqueued_tokens,
    limit_failures = t.limit_failures + 1, last_limit_failure_at = now(),
    last_limit_failure = EXCLUDED.last_limit_failure, updated_at = now()
RETURNING learned_enqueued_tokens;

-- name: wake_submit_after_hold
SELECT worker_defer_job('submit', 'submit', 'submit:budget-hold', '{}'::jsonb,
                        clock_timestamp() + make_interval(secs => %(delay)s));

-- name: record_cost_events
-- The ledger: every staged result line of this ingest that was answered or reported usage
-- (paid), owned by the batch or not (a line the provider billed is money spent either way).
WITH price AS MATERIALIZED (
    SELECT * FROM worker_price(%(provider)s, %(model_name)s, %(batch_priced)s))
INSERT INTO ai_cost_events (question_id, model_key, provider, model_name, batch_job_id,
                            batch_priced, ok, input_tokens, output_tokens, cost_usd)
SELECT l.question_id, %(model_key)s, %(provider)s, %(model_name)s, %(batch_job_id)s,
       %(batch_priced)s, l.ok, l.input_tokens, l.output_tokens,
       worker_cost_at(l.input_tokens, l.output_tokens, w.input_usd_per_mtok,
                      w.output_usd_per_mtok, w.factor)
FROM worker_ingest_lines l
LEFT JOIN price w ON true
WHERE l.ok OR l.input_tokens > 0 OR l.output_tokens > 0;

-- name: resolve_lost_batch
-- The provider no longer knows the batch (404 on status): it is over. Its requests go back
-- to waiting without an attempt charged (nothing came back to judge them by).
WITH job AS (
    UPDATE ai_commentary_batch_jobs
    SET state = 'lost', status = 'lost', error = %(error)s, finished_at = now(),
        next_poll_at = NULL, updated_at = now()
    WHERE id = %(id)s AND state IN ('in_flight', 'ingesting')
    RETURNING id
)
UPDATE ai_commentary_requests r
SET status = 'waiting', claimed_by = NULL, claimed_at = NULL, batch_job_id = NULL,
    last_error = %(error)s, updated_at = now()
FROM job
WHERE r.claimed_by = job.id::text AND r.status = 'submitted';

-- name: budget_correction
SELECT correction_factor, calibration_samples FROM worker_token_budget
WHERE provider = %(provider)s AND model = %(model)s;
