-- worker_errors: every error a person should see, deduplicated by fingerprint so a repeated
-- failure is one row with a count, readable with psql (what, which question/batch, when,
-- how often). Raw error text never goes into user-visible comment columns.
CREATE TABLE IF NOT EXISTS worker_errors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL UNIQUE,
    kind text NOT NULL,
    provider text,
    question_id uuid,
    batch_job_id uuid,
    ai_job_id bigint,
    message text NOT NULL,
    detail jsonb,
    occurrences integer NOT NULL DEFAULT 1,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS worker_errors_last_seen_idx ON worker_errors (last_seen_at DESC);

-- worker_task_runs: one row per task run (submit, poll, tick, ...): when it started and
-- finished, and what it did. Pruned after a week by the tick.
CREATE TABLE IF NOT EXISTS worker_task_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_name text NOT NULL,
    job_id bigint,
    worker_pid integer,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    outcome text,
    detail jsonb
);
CREATE INDEX IF NOT EXISTS worker_task_runs_started_idx ON worker_task_runs (task_name, started_at DESC);
