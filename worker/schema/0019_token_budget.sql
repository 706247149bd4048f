-- Token budgets per provider and model (issue 12, build 2), money that follows the same
-- reservations and a ledger of every paid attempt (build 7).
--
-- worker_batch_limits: what a provider lets an account queue, edited by a person. One row per
-- provider and model; model '*' covers every model of the provider without a row of its own.
-- NULL in a column = unlimited. The seeded rows are the published tier-1 figures (checked
-- 2025; see the note column): raise them to your account's tier with one UPDATE, e.g.
--   UPDATE worker_batch_limits SET enqueued_tokens = 20000000, tier = 'tier-3'
--   WHERE provider = 'openai' AND model = 'gpt-4o-mini';
CREATE TABLE IF NOT EXISTS worker_batch_limits (
    provider text NOT NULL,
    model text NOT NULL,
    tier text,
    -- prompt tokens of unfinished batches the provider accepts per model
    enqueued_tokens bigint CHECK (enqueued_tokens IS NULL OR enqueued_tokens > 0),
    -- requests of unfinished batches per provider account (Mistral: 1,000,000 per workspace)
    enqueued_requests bigint CHECK (enqueued_requests IS NULL OR enqueued_requests > 0),
    -- unfinished batch jobs per provider account (Gemini: 100 concurrent batch jobs)
    live_batches integer CHECK (live_batches IS NULL OR live_batches > 0),
    -- batch creations per rolling hour per provider account (OpenAI: 2,000)
    batches_per_hour integer CHECK (batches_per_hour IS NULL OR batches_per_hour > 0),
    note text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

INSERT INTO worker_batch_limits
    (provider, model, tier, enqueued_tokens, enqueued_requests, live_batches, batches_per_hour, note)
VALUES
    ('openai', '*', 'tier-1', 2000000, NULL, NULL, 2000,
     'OpenAI batch guide: 2,000 batches per hour; enqueued tokens per model by tier (limits page)'),
    ('openai', 'gpt-4o-mini', 'tier-1', 2000000, NULL, NULL, 2000,
     'openai-python issue 2084: "Limit: 2,000,000 enqueued tokens" for gpt-4o-mini at tier 1'),
    ('openai', 'gpt-4.1-mini', 'tier-1', 2000000, NULL, NULL, 2000, 'tier-1 batch queue limit'),
    ('openai', 'gpt-4.1', 'tier-1', 900000, NULL, NULL, 2000, 'tier-1 batch queue limit'),
    ('gemini', '*', 'tier-1', NULL, NULL, 100, NULL,
     'Gemini rate-limits page: 100 concurrent batch requests; enqueued tokens per model by tier'),
    ('gemini', 'gemini-2.5-flash', 'tier-1', 3000000, NULL, 100, NULL, 'tier-1 batch enqueued tokens'),
    ('gemini', 'gemini-2.5-flash-lite', 'tier-1', 10000000, NULL, 100, NULL,
     'tier-1 batch enqueued tokens'),
    ('gemini', 'gemini-2.5-pro', 'tier-1', 5000000, NULL, 100, NULL, 'tier-1 batch enqueued tokens'),
    ('mistral', '*', NULL, NULL, 1000000, NULL, NULL,
     'Mistral batch docs: 1,000,000 pending requests per workspace; no token queue published')
ON CONFLICT (provider, model) DO NOTHING;

-- worker_token_budget: what the worker learned per provider and model. correction_factor
-- turns the cheap estimate (worker.budget.raw_estimate) into the provider's prompt-token
-- count, learned from the usage the provider reports back. learned_enqueued_tokens is set
-- below the configured limit when the provider refused a batch for its token queue
-- (token_limit_exceeded): the table above was too generous for this account.
CREATE TABLE IF NOT EXISTS worker_token_budget (
    provider text NOT NULL,
    model text NOT NULL,
    correction_factor double precision NOT NULL DEFAULT 1.0 CHECK (correction_factor > 0),
    calibration_samples integer NOT NULL DEFAULT 0,
    avg_request_tokens double precision,
    avg_output_tokens double precision,
    learned_enqueued_tokens bigint CHECK (learned_enqueued_tokens IS NULL OR learned_enqueued_tokens > 0),
    limit_failures integer NOT NULL DEFAULT 0,
    last_limit_failure_at timestamptz,
    last_limit_failure text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

-- A batch reserves its estimate from intent to terminal state (the reservation is the row:
-- live states count, nothing needs releasing by hand). A batch refused for the token queue
-- keeps counting until reservation_held_until (the provider counts it for a while too).
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS estimated_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS raw_estimated_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS estimated_cost_usd numeric(14, 8) NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS reservation_held_until timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS calibrated boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS ai_commentary_batch_jobs_reserving_idx
    ON ai_commentary_batch_jobs (provider, model_name)
    WHERE state IN ('submitting', 'in_flight', 'ingesting');
CREATE INDEX IF NOT EXISTS ai_commentary_batch_jobs_held_idx
    ON ai_commentary_batch_jobs (reservation_held_until)
    WHERE reservation_held_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS ai_commentary_batch_jobs_uncalibrated_idx
    ON ai_commentary_batch_jobs (provider, model_name)
    WHERE state = 'ingested' AND NOT calibrated;

-- ai_cost_events: the ledger. One row per paid attempt: every result line that came back
-- with an answer or with reported usage, re-processing included (a second generation adds
-- a row; the comment row keeps only its latest cost). Rows before this migration are copied
-- from the comment and summary rows (their latest generation: what was known).
CREATE TABLE IF NOT EXISTS ai_cost_events (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    question_id uuid,
    model_key text NOT NULL,
    provider text NOT NULL,
    model_name text,
    batch_job_id uuid,
    batch_priced boolean NOT NULL DEFAULT false,
    ok boolean NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cost_usd numeric(14, 8) NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ai_cost_events_recorded_idx ON ai_cost_events (recorded_at);
CREATE INDEX IF NOT EXISTS ai_cost_events_batch_idx ON ai_cost_events (batch_job_id)
    WHERE batch_job_id IS NOT NULL;

INSERT INTO ai_cost_events (recorded_at, question_id, model_key, provider, model_name,
                            batch_job_id, batch_priced, ok, input_tokens, output_tokens, cost_usd)
SELECT c.updated_at, c.question_id, c.model_key, c.provider, c.model_name, c.batch_job_id,
       c.batch_priced, true, c.input_tokens, c.output_tokens, c.cost_usd
FROM ai_answer_comments c
WHERE c.provider IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ai_cost_events)
UNION ALL
SELECT s.updated_at, s.question_id, 'summary', s.provider, s.model_name, s.batch_job_id,
       s.batch_priced, true, s.input_tokens, s.output_tokens, s.cost_usd
FROM ai_commentary_summaries s
WHERE s.provider IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ai_cost_events);

-- Spend since a moment: the ledger (every paid attempt the worker recorded), plus comment and
-- summary rows written by anything else (no provider: tests, imports; as 0011 counted them),
-- plus the realtime lane's ai_jobs (as in 0011). ai_cost_ledger (0012) keeps showing the
-- cost of each row's latest generation; ai_cost_events is what was paid.
CREATE OR REPLACE FUNCTION worker_spent_usd_since(p_since timestamptz) RETURNS numeric
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    total numeric;
    extra numeric;
    ts_col text;
BEGIN
    SELECT coalesce(sum(cost_usd), 0) INTO total FROM ai_cost_events WHERE recorded_at >= p_since;
    SELECT total + coalesce(sum(cost_usd), 0) INTO total
    FROM ai_answer_comments WHERE updated_at >= p_since AND provider IS NULL;
    SELECT total + coalesce(sum(cost_usd), 0) INTO total
    FROM ai_commentary_summaries WHERE updated_at >= p_since AND provider IS NULL;
    -- Columns are looked up by the table's oid, not current_schema(): worker_secure() (0016)
    -- pins every function's search_path to pg_catalog first, which current_schema() reports.
    IF to_regclass('ai_jobs') IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_attribute a
        WHERE a.attrelid = to_regclass('ai_jobs') AND a.attname = 'cost_usd' AND NOT a.attisdropped
    ) THEN
        SELECT pref.name INTO ts_col
        FROM unnest(ARRAY['finished_at', 'completed_at', 'updated_at', 'created_at'])
             WITH ORDINALITY AS pref (name, ord)
        WHERE EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = to_regclass('ai_jobs') AND a.attname = pref.name
                        AND NOT a.attisdropped)
        ORDER BY pref.ord LIMIT 1;
        IF ts_col IS NOT NULL THEN
            EXECUTE format('SELECT coalesce(sum(cost_usd), 0) FROM %s WHERE %I >= $1',
                           to_regclass('ai_jobs'), ts_col)
                INTO extra USING p_since;
            total := total + extra;
        END IF;
    END IF;
    RETURN total;
END $$;

-- Money reserved by batches in flight: their estimated cost until they are ingested.
CREATE OR REPLACE FUNCTION worker_reserved_usd() RETURNS numeric
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT coalesce(sum(estimated_cost_usd), 0) FROM ai_commentary_batch_jobs
    WHERE state IN ('submitting', 'in_flight', 'ingesting')
$$;

-- Closed by default: the worker's role owns these; nobody else reads them unless a policy
-- says so (Supabase roles get nothing).
REVOKE ALL ON worker_batch_limits, worker_token_budget, ai_cost_events FROM PUBLIC;
REVOKE ALL ON SEQUENCE ai_cost_events_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION worker_reserved_usd() FROM PUBLIC;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON worker_batch_limits, worker_token_budget, ai_cost_events FROM %I', r);
            EXECUTE format('REVOKE ALL ON SEQUENCE ai_cost_events_id_seq FROM %I', r);
            EXECUTE format('REVOKE ALL ON FUNCTION worker_reserved_usd() FROM %I', r);
        END IF;
    END LOOP;
END $$;
