-- ai_commentary_batch_jobs: one row per provider batch, production columns plus the worker's.
-- A row is written (state 'submitting', with our own id sent to the provider as batch
-- metadata) BEFORE the provider batch is created, so a crash in between can be reconciled
-- instead of paying twice (failure mode 4).
CREATE TABLE IF NOT EXISTS ai_commentary_batch_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL,
    batch_id text,
    status text NOT NULL DEFAULT 'pending',
    question_ids uuid[] NOT NULL DEFAULT '{}',
    input_file_id text,
    output_file_id text,
    error_file_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
-- 'comment' (one model's commentary) or 'summary'.
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS stage text NOT NULL DEFAULT 'comment';
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS model_key text;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS model_name text;
-- Our normalised state: submitting -> in_flight -> ingesting -> ingested, or
-- failed | expired | cancelled (ingested too when partial results were read), or
-- abandoned (the intent was never created at the provider).
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'legacy';
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS request_count integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS succeeded_count integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS failed_count integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS missing_count integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS poll_count integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS next_poll_at timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS last_polled_at timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS submitted_at timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS finished_at timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS ingested_at timestamptz;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS error text;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS input_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS output_tokens bigint NOT NULL DEFAULT 0;

CREATE UNIQUE INDEX IF NOT EXISTS ai_commentary_batch_jobs_provider_batch_key
    ON ai_commentary_batch_jobs (provider, batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ai_commentary_batch_jobs_live_idx
    ON ai_commentary_batch_jobs (next_poll_at)
    WHERE state IN ('submitting', 'in_flight', 'ingesting');

-- ai_commentary_requests: one row per question and model key (and 'summary'): the unit of
-- work. It says which batch (or instant call) owns it, how often it was tried and why it
-- failed. A question is complete when all its rows succeeded.
CREATE TABLE IF NOT EXISTS ai_commentary_requests (
    question_id uuid NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    model_key text NOT NULL,
    stage text NOT NULL DEFAULT 'comment' CHECK (stage IN ('comment', 'summary')),
    -- waiting: ready for the next batch; submitted: owned by batch_job_id (or an instant
    -- call when batch_job_id is NULL, since claimed_at); succeeded; failed (gave up).
    status text NOT NULL DEFAULT 'waiting'
        CHECK (status IN ('waiting', 'submitted', 'succeeded', 'failed')),
    batch_job_id uuid REFERENCES ai_commentary_batch_jobs (id) ON DELETE SET NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    claimed_at timestamptz,
    claimed_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (question_id, model_key)
);
CREATE INDEX IF NOT EXISTS ai_commentary_requests_waiting_idx
    ON ai_commentary_requests (model_key, created_at) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS ai_commentary_requests_batch_idx
    ON ai_commentary_requests (batch_job_id) WHERE batch_job_id IS NOT NULL;
