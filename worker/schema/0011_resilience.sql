-- Provider health shared by every worker process: circuit breakers, provider stops
-- (quota / auth), the alert log, and today's spend for the optional daily budget.
--
-- Re-enable a provider stopped for quota or auth (after topping up / fixing the key):
--
--     SELECT worker_resume_provider('openai');
--
-- or, equivalently, the plain statement
--
--     UPDATE provider_stops SET cleared_at = now() WHERE provider = 'openai' AND cleared_at IS NULL;
--
-- Either one wakes the submit task at once. worker_resume_provider also closes the
-- provider's circuit breaker. If ai_commentary_settings.quota_disables_feature is on, the
-- stop also switched the feature off: `UPDATE ai_commentary_settings SET feature_enabled = true;`
-- Stop a provider by hand: INSERT INTO provider_stops (provider, kind, reason)
--                          VALUES ('openai', 'manual', 'why');

-- provider_health: one circuit breaker per provider (closed -> open after N consecutive
-- retryable failures -> half_open after the cooldown, one probe -> closed on success).
CREATE TABLE IF NOT EXISTS provider_health (
    provider text PRIMARY KEY,
    state text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    opened_at timestamptz,          -- when the breaker (last) opened; cooldown counts from here
    probe_started_at timestamptz,   -- half_open: when the one probe was handed out
    times_opened integer NOT NULL DEFAULT 0,
    last_error text,
    last_error_kind text,
    last_failure_at timestamptz,
    last_success_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- provider_stops: a provider out of credit (quota) or with a rejected key (auth) stays
-- stopped until a person clears the row (see the top of this file). At most one active
-- stop per provider; cleared rows are the history.
CREATE TABLE IF NOT EXISTS provider_stops (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('quota', 'auth', 'manual')),
    reason text NOT NULL,
    stopped_at timestamptz NOT NULL DEFAULT now(),
    cleared_at timestamptz,
    cleared_by text
);
CREATE UNIQUE INDEX IF NOT EXISTS provider_stops_active_key
    ON provider_stops (provider) WHERE cleared_at IS NULL;

-- worker_alerts: every alert the worker raised, sent or not (Pushover off, rate-limited),
-- with how many repeats of the same dedup_key were folded into it.
CREATE TABLE IF NOT EXISTS worker_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key text NOT NULL,
    title text NOT NULL,
    message text NOT NULL,
    priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -2 AND 2),
    -- pending: being sent; sent; failed: Pushover did not accept it; disabled: Pushover is
    -- not configured; rate_limited: over the global limit, not sent.
    status text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'disabled', 'rate_limited')),
    suppressed integer NOT NULL DEFAULT 0,   -- repeats of dedup_key within the window
    last_suppressed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    delivery_error text
);
CREATE INDEX IF NOT EXISTS worker_alerts_created_idx ON worker_alerts (created_at DESC);
CREATE INDEX IF NOT EXISTS worker_alerts_key_idx ON worker_alerts (dedup_key, created_at DESC);

-- worker_alert_keys: the dedup window of each key. One row per key, so concurrent raisers
-- of the same alert serialise on its row lock and exactly one of them sends.
CREATE TABLE IF NOT EXISTS worker_alert_keys (
    dedup_key text PRIMARY KEY,
    window_started_at timestamptz NOT NULL,
    repeats integer NOT NULL DEFAULT 0,
    last_alert_id bigint
);

-- worker_alert_limiter: one row, locked while deciding whether the global rate limit
-- allows one more message, so two processes cannot both take the last slot.
CREATE TABLE IF NOT EXISTS worker_alert_limiter (
    id integer PRIMARY KEY CHECK (id = 1)
);
INSERT INTO worker_alert_limiter (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- Clearing a stop wakes submit so the provider's waiting requests go out without waiting
-- for the next tick.
CREATE OR REPLACE FUNCTION worker_provider_stop_cleared() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.cleared_at IS NULL AND NEW.cleared_at IS NOT NULL THEN
        -- its own queueing lock: a submit already waiting for a later time must not
        -- swallow this one
        PERFORM worker_defer_job('submit', 'submit', 'submit:resume', '{}'::jsonb, NULL);
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS worker_provider_stop_cleared ON provider_stops;
CREATE TRIGGER worker_provider_stop_cleared
    AFTER UPDATE OF cleared_at ON provider_stops
    FOR EACH ROW EXECUTE FUNCTION worker_provider_stop_cleared();

-- Re-enable a provider: clear its active stop and close its breaker. Returns the number of
-- stops cleared.
CREATE OR REPLACE FUNCTION worker_resume_provider(p_provider text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE provider_stops SET cleared_at = now(), cleared_by = current_user
    WHERE provider = p_provider AND cleared_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE provider_health
    SET state = 'closed', consecutive_failures = 0, opened_at = NULL, probe_started_at = NULL,
        updated_at = now()
    WHERE provider = p_provider;
    PERFORM worker_defer_job('submit', 'submit', 'submit:resume', '{}'::jsonb, NULL);
    RETURN n;
END $$;

-- Spend since p_since (USD): comments + summaries, plus ai_jobs when that table exists
-- (it belongs to the realtime lane and may be absent or shaped differently).
CREATE OR REPLACE FUNCTION worker_spent_usd_since(p_since timestamptz) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
DECLARE
    total numeric;
    extra numeric;
    ts_col text;
BEGIN
    SELECT coalesce(sum(cost_usd), 0) INTO total FROM ai_answer_comments WHERE updated_at >= p_since;
    SELECT total + coalesce(sum(cost_usd), 0) INTO total
    FROM ai_commentary_summaries WHERE updated_at >= p_since;
    IF to_regclass('ai_jobs') IS NOT NULL AND EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'ai_jobs' AND column_name = 'cost_usd'
    ) THEN
        SELECT c.column_name INTO ts_col
        FROM information_schema.columns c
        JOIN unnest(ARRAY['finished_at', 'completed_at', 'updated_at', 'created_at'])
             WITH ORDINALITY AS pref (name, ord) ON pref.name = c.column_name
        WHERE c.table_schema = current_schema() AND c.table_name = 'ai_jobs'
        ORDER BY pref.ord LIMIT 1;
        IF ts_col IS NOT NULL THEN
            EXECUTE format('SELECT coalesce(sum(cost_usd), 0) FROM ai_jobs WHERE %I >= $1', ts_col)
                INTO extra USING p_since;
            total := total + extra;
        END IF;
    END IF;
    RETURN total;
END $$;
