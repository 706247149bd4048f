-- Operations (issue 14 parts 5 and 6).
--
-- worker_alerts.delivered_with: an alert held back by the rate limit (status 'rate_limited')
-- is delivered later inside another message, a digest: this column holds the id of the
-- worker_alerts row whose message carried it. NULL while it is still held back, so
-- "held back and not yet delivered" is one indexed question and nothing is dropped.
ALTER TABLE worker_alerts ADD COLUMN IF NOT EXISTS delivered_with bigint;
CREATE INDEX IF NOT EXISTS worker_alerts_held_idx ON worker_alerts (id)
    WHERE status = 'rate_limited' AND delivered_with IS NULL;

-- worker_processes: one row per running `python -m worker run` process (Procrastinate
-- registers one worker per queue, so its table counts queues, not processes). The process
-- beats every few seconds and deletes its row when it stops; a row whose heartbeat is old
-- is a process that died.
CREATE TABLE IF NOT EXISTS worker_processes (
    id text PRIMARY KEY,                 -- host:pid:start
    hostname text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);

-- Closed by default (Supabase exposes public tables to anon/authenticated).
ALTER TABLE worker_processes ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON worker_processes FROM PUBLIC;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON worker_processes FROM %I', r);
        END IF;
    END LOOP;
END $$;

-- (The daily budget's realtime spend, lost by 0011's current_schema() lookup once 0016
-- pinned search_path, is fixed by 0019_token_budget.sql's ledger-based
-- worker_spent_usd_since; this file must not replace that function again.)
