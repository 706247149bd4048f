-- Operating the worker: the cost ledger views, the inspection views operators query with psql,
-- and the OpenRouter credit-check log.
--
-- Cheap by construction where /metrics and `python -m worker status` read them at every call
-- (ops_pending, ops_batches_in_flight, ai_cost_ledger filtered to today, ops_errors_24h):
-- they use the partial indexes of 0001/0005 or the indexes below. The others (ai_cost_daily,
-- ai_cost_by_model, ai_cost_by_question, ai_cost_batch_savings, ai_cost_unpriced,
-- ops_tokens_per_day, ops_question_latency) aggregate the whole ledger and are for psql.
--
-- Days are calendar days in the session's TimeZone (the server default unless set).
-- The realtime lane's ai_jobs and the resilience tables (provider_health, provider_stops) are
-- not referenced here: worker.metrics and worker.status read them when they exist.

-- "Spend today" and "tokens today" read a range of updated_at: keep that an index scan.
CREATE INDEX IF NOT EXISTS ai_answer_comments_updated_idx ON ai_answer_comments (updated_at);
CREATE INDEX IF NOT EXISTS ai_commentary_summaries_updated_idx ON ai_commentary_summaries (updated_at);
-- "Failed in the last hour": failed questions are few, so a small partial index.
CREATE INDEX IF NOT EXISTS questions_ai_commentary_failed_idx
    ON questions (ai_commentary_processed_at)
    WHERE ai_commentary_status = 'failed';
-- Batch turnaround by provider over a window.
CREATE INDEX IF NOT EXISTS ai_commentary_batch_jobs_finished_idx
    ON ai_commentary_batch_jobs (finished_at)
    WHERE finished_at IS NOT NULL;

-- ai_cost_ledger: every priced model call the pipeline recorded, one row per comment and per
-- summary (the row's cost is that of its latest generation: a re-queued question's upsert
-- replaces the earlier figures). Rows copied from the old system (no provider) are left out.
CREATE OR REPLACE VIEW ai_cost_ledger AS
SELECT 'comment'::text AS kind, c.question_id, c.model_key, c.provider, c.model_name,
       c.batch_priced, c.input_tokens::bigint AS input_tokens,
       c.output_tokens::bigint AS output_tokens, c.cost_usd, c.updated_at AS recorded_at
FROM ai_answer_comments c
WHERE c.provider IS NOT NULL
UNION ALL
SELECT 'summary'::text, s.question_id, 'summary'::text, s.provider, s.model_name,
       s.batch_priced, s.input_tokens::bigint, s.output_tokens::bigint, s.cost_usd,
       s.updated_at
FROM ai_commentary_summaries s
WHERE s.provider IS NOT NULL;

-- Spend per day, provider and model.
CREATE OR REPLACE VIEW ai_cost_daily AS
SELECT l.recorded_at::date AS day, l.provider, l.model_name,
       count(*) AS requests,
       count(*) FILTER (WHERE l.batch_priced) AS batch_requests,
       sum(l.input_tokens) AS input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.cost_usd) AS cost_usd
FROM ai_cost_ledger l
GROUP BY 1, 2, 3;

-- Spend per provider and model, all time.
CREATE OR REPLACE VIEW ai_cost_by_model AS
SELECT l.provider, l.model_name,
       count(*) AS requests,
       count(*) FILTER (WHERE l.batch_priced) AS batch_requests,
       sum(l.input_tokens) AS input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.cost_usd) AS cost_usd,
       min(l.recorded_at) AS first_at,
       max(l.recorded_at) AS last_at
FROM ai_cost_ledger l
GROUP BY 1, 2;

-- Spend per question (all its model comments plus its summary).
CREATE OR REPLACE VIEW ai_cost_by_question AS
SELECT l.question_id,
       count(*) AS requests,
       sum(l.input_tokens) AS input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.cost_usd) AS cost_usd,
       max(l.recorded_at) AS last_at
FROM ai_cost_ledger l
GROUP BY 1;

-- What batch pricing saved: the same tokens at list (realtime) price minus what was paid.
CREATE OR REPLACE VIEW ai_cost_batch_savings AS
SELECT l.recorded_at::date AS day, l.provider, l.model_name,
       count(*) AS batch_requests,
       sum(l.cost_usd) AS batch_cost_usd,
       sum(worker_cost_usd(l.provider, l.model_name, l.input_tokens, l.output_tokens, false))
           AS list_cost_usd,
       sum(worker_cost_usd(l.provider, l.model_name, l.input_tokens, l.output_tokens, false))
           - sum(l.cost_usd) AS saved_usd
FROM ai_cost_ledger l
WHERE l.batch_priced
GROUP BY 1, 2, 3;

-- Models that spent tokens but have no price row (their cost_usd is 0): add a row to
-- ai_model_prices, then re-price with
--   UPDATE ai_answer_comments SET cost_usd = worker_cost_usd(provider, model_name,
--          input_tokens, output_tokens, batch_priced) WHERE provider = ... AND model_name = ...;
CREATE OR REPLACE VIEW ai_cost_unpriced AS
SELECT l.provider, l.model_name,
       count(*) AS requests,
       sum(l.input_tokens) AS input_tokens,
       sum(l.output_tokens) AS output_tokens,
       max(l.recorded_at) AS last_at
FROM ai_cost_ledger l
WHERE NOT EXISTS (
    SELECT 1 FROM ai_model_prices p
    WHERE p.provider = l.provider AND p.model IN (l.model_name, '*'))
GROUP BY 1, 2;

-- Tokens per day and provider (the old system's "tokens per day").
CREATE OR REPLACE VIEW ops_tokens_per_day AS
SELECT l.recorded_at::date AS day, l.provider,
       sum(l.input_tokens) AS input_tokens,
       sum(l.output_tokens) AS output_tokens,
       sum(l.input_tokens + l.output_tokens) AS total_tokens,
       count(*) AS requests
FROM ai_cost_ledger l
GROUP BY 1, 2;

-- Pending and in-progress work, with the age of the oldest (partial indexes of 0001).
CREATE OR REPLACE VIEW ops_pending AS
SELECT
    (SELECT count(*) FROM questions WHERE ai_commentary_status = 'pending') AS pending,
    (SELECT min(ai_commentary_queued_at) FROM questions
      WHERE ai_commentary_status = 'pending') AS oldest_pending_at,
    coalesce(extract(epoch FROM now() - (SELECT min(ai_commentary_queued_at) FROM questions
      WHERE ai_commentary_status = 'pending')), 0)::float8 AS oldest_pending_age_seconds,
    (SELECT count(*) FROM questions WHERE ai_commentary_status = 'processing') AS processing,
    coalesce(extract(epoch FROM now() - (SELECT min(ai_commentary_claimed_at) FROM questions
      WHERE ai_commentary_status = 'processing')), 0)::float8 AS oldest_processing_age_seconds;

-- Questions that failed in the last hour, newest first, with the reason.
CREATE OR REPLACE VIEW ops_failed_last_hour AS
SELECT q.id AS question_id, q.ai_commentary_processed_at AS failed_at,
       q.ai_commentary_attempts AS attempts, q.ai_commentary_error AS error
FROM questions q
WHERE q.ai_commentary_status = 'failed'
  AND q.ai_commentary_processed_at > now() - interval '1 hour'
ORDER BY q.ai_commentary_processed_at DESC;

-- Provider batch turnaround (submitted -> finished) over the last 24 hours.
CREATE OR REPLACE VIEW ops_latency AS
SELECT b.provider, b.stage,
       count(*) AS batches,
       avg(extract(epoch FROM b.finished_at - b.submitted_at))::float8 AS avg_seconds,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM b.finished_at - b.submitted_at))::float8 AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (
           ORDER BY extract(epoch FROM b.finished_at - b.submitted_at))::float8 AS p95_seconds,
       max(extract(epoch FROM b.finished_at - b.submitted_at))::float8 AS max_seconds
FROM ai_commentary_batch_jobs b
WHERE b.finished_at IS NOT NULL AND b.submitted_at IS NOT NULL
  AND b.finished_at > now() - interval '24 hours'
GROUP BY 1, 2;

-- End-to-end question latency (queued -> settled) over the last 24 hours. Reads questions
-- by processed_at without an index: for psql, not for scrapes.
CREATE OR REPLACE VIEW ops_question_latency AS
SELECT q.ai_commentary_status AS status,
       count(*) AS questions,
       avg(extract(epoch FROM q.ai_commentary_processed_at - q.ai_commentary_queued_at))::float8
           AS avg_seconds,
       max(extract(epoch FROM q.ai_commentary_processed_at - q.ai_commentary_queued_at))::float8
           AS max_seconds
FROM questions q
WHERE q.ai_commentary_status IN ('completed', 'failed')
  AND q.ai_commentary_processed_at > now() - interval '24 hours'
GROUP BY 1;

-- Errors by kind and provider seen in the last 24 hours (worker_errors is deduplicated: one
-- row per distinct problem; occurrences counts all its sightings).
CREATE OR REPLACE VIEW ops_errors_24h AS
SELECT e.kind, e.provider,
       count(*) AS distinct_errors,
       sum(e.occurrences) AS occurrences,
       max(e.last_seen_at) AS last_seen_at,
       (array_agg(e.message ORDER BY e.last_seen_at DESC))[1] AS latest_message
FROM worker_errors e
WHERE e.last_seen_at > now() - interval '24 hours'
GROUP BY 1, 2;

-- Provider batches not finished yet, with their age and raw provider state.
CREATE OR REPLACE VIEW ops_batches_in_flight AS
SELECT b.id, b.provider, b.stage, b.model_key, b.model_name, b.batch_id, b.state,
       b.status AS provider_status, b.request_count, b.poll_count,
       b.created_at, b.submitted_at, b.last_polled_at, b.next_poll_at,
       extract(epoch FROM now() - coalesce(b.submitted_at, b.created_at))::float8 AS age_seconds
FROM ai_commentary_batch_jobs b
WHERE b.state IN ('submitting', 'in_flight', 'ingesting');

-- One row per OpenRouter credit check (the hourly credit_check task, worker.credits).
CREATE TABLE IF NOT EXISTS provider_credit_checks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider text NOT NULL DEFAULT 'openrouter',
    checked_at timestamptz NOT NULL DEFAULT now(),
    total_credits numeric(14, 6),
    total_usage numeric(14, 6),
    remaining_usd numeric(14, 6),
    usage_today_usd numeric(14, 6),
    -- ok | warning | critical | error (the endpoint could not be read)
    level text NOT NULL CHECK (level IN ('ok', 'warning', 'critical', 'error')),
    -- alerts raised by this check: [{"kind", "severity", "message", "delivered"}]
    alerts jsonb NOT NULL DEFAULT '[]',
    error text
);
CREATE INDEX IF NOT EXISTS provider_credit_checks_checked_idx
    ON provider_credit_checks (provider, checked_at DESC);
