-- Realtime behaviour (issue 13, part 5): rate limits that wait for the next free slot and
-- a weekly tier, sessions with an age limit (and optionally required to exist), retention
-- run by the tick, an estimated wait in the queue-position view, and the old job-type
-- names as built-in templates. New objects are closed and pinned by `db migrate`
-- (worker_secure, schema/0016).

-- ------------------------------------------------------------------ rate limits
-- The old embeddings processor limited minute/hour/day/week/month; week was missing.
ALTER TABLE ai_rate_limits ADD COLUMN IF NOT EXISTS requests_per_week integer
    CHECK (requests_per_week IS NULL OR requests_per_week > 0);
ALTER TABLE ai_rate_usage DROP CONSTRAINT IF EXISTS ai_rate_usage_unit_check;
ALTER TABLE ai_rate_usage ADD CONSTRAINT ai_rate_usage_unit_check
    CHECK (unit IN ('second', 'minute', 'hour', 'day', 'week', 'month'));
-- retention deletes by window (worker_apply_retention)
CREATE INDEX IF NOT EXISTS ai_rate_usage_window_idx ON ai_rate_usage (window_start);

-- Admit the leading requests of p_tokens (one element = one request's token estimate) for
-- provider/model under every configured window, at time p_at (the worker passes the
-- database clock; a test passes a fixed time, so the windows are checkable). Windows are
-- aligned with date_trunc in UTC (a week starts on Monday 00:00 UTC). Returns how many were
-- admitted (their usage is recorded) and, when not all were, when to try again: the end of
-- the window that blocks the *next* request - the next free slot - not the end of the
-- longest window that blocks any of them (0010 sent every waiting job to the end of the
-- hour when a minute limit was what held the next one back).
CREATE OR REPLACE FUNCTION ai_rate_acquire_at(
    p_provider text, p_model text, p_tokens integer[], p_at timestamptz)
RETURNS TABLE (granted integer, retry_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    lim ai_rate_limits%ROWTYPE;
    n integer := coalesce(array_length(p_tokens, 1), 0);
    k integer;
    used_r integer;
    used_t bigint;
    cap_r integer;
    ws timestamptz;
    units text[] := ARRAY['second', 'minute', 'hour', 'day', 'week', 'month'];
    v_unit text;
    best integer;
    ks integer[] := '{}';
    ends timestamptz[] := '{}';
    acc bigint;
BEGIN
    SELECT * INTO lim FROM ai_rate_limits l
    WHERE l.provider = p_provider AND l.model IN (p_model, '*')
    ORDER BY (l.model = p_model) DESC LIMIT 1;
    IF NOT FOUND OR n = 0 THEN
        RETURN QUERY SELECT n, NULL::timestamptz;
        RETURN;
    END IF;
    best := n;
    FOREACH v_unit IN ARRAY units LOOP
        cap_r := CASE v_unit WHEN 'second' THEN lim.rps WHEN 'minute' THEN lim.rpm
                             WHEN 'hour' THEN lim.requests_per_hour
                             WHEN 'day' THEN lim.requests_per_day
                             WHEN 'week' THEN lim.requests_per_week
                             ELSE lim.requests_per_month END;
        CONTINUE WHEN cap_r IS NULL AND NOT (v_unit = 'minute' AND lim.tpm IS NOT NULL);
        ws := date_trunc(v_unit, p_at, 'UTC');
        INSERT INTO ai_rate_usage (provider, model, unit, window_start)
        VALUES (lim.provider, lim.model, v_unit, ws) ON CONFLICT DO NOTHING;
        SELECT u.requests, u.tokens INTO used_r, used_t FROM ai_rate_usage u
        WHERE u.provider = lim.provider AND u.model = lim.model AND u.unit = v_unit
          AND u.window_start = ws FOR UPDATE;
        k := n;
        IF cap_r IS NOT NULL THEN
            k := least(k, greatest(cap_r - used_r, 0));
        END IF;
        IF v_unit = 'minute' AND lim.tpm IS NOT NULL THEN
            acc := used_t;
            FOR i IN 1..k LOOP
                acc := acc + p_tokens[i];
                -- a single request larger than the whole budget runs alone in a fresh window
                IF acc > lim.tpm AND NOT (i = 1 AND used_t = 0) THEN
                    k := i - 1;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        best := least(best, k);
        ks := ks || k;
        ends := ends || (ws + ('1 ' || v_unit)::interval);
    END LOOP;
    IF best > 0 THEN
        UPDATE ai_rate_usage u SET requests = u.requests + best,
               tokens = u.tokens + (SELECT coalesce(sum(x), 0) FROM unnest(p_tokens[1:best]) x)
        WHERE u.provider = lim.provider AND u.model = lim.model
          AND (u.unit, u.window_start) IN (
              SELECT un, date_trunc(un, p_at, 'UTC') FROM unnest(units) un);
    END IF;
    IF best >= n THEN
        RETURN QUERY SELECT best, NULL::timestamptz;
        RETURN;
    END IF;
    -- Request best+1 is held back by exactly the windows that admitted only `best`: it can
    -- go when the last of those ends.
    RETURN QUERY
    SELECT best, max(e)
    FROM unnest(ks, ends) AS t(kk, e)
    WHERE kk = best;
END $$;

CREATE OR REPLACE FUNCTION ai_rate_acquire(p_provider text, p_model text, p_tokens integer[])
RETURNS TABLE (granted integer, retry_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM ai_rate_acquire_at(p_provider, p_model, p_tokens, clock_timestamp());
$$;

-- ------------------------------------------------------------------ sessions
-- The old chat queue verified sessions and closed them after an age limit. A session
-- accepts questions for session_max_age_hours after it started (NULL: forever; default 30
-- days); with require_sessions on, a chat job must name a session that exists already
-- (created by the application in ai_chat_sessions) instead of one being created on the fly.
ALTER TABLE ai_realtime_settings ADD COLUMN IF NOT EXISTS session_max_age_hours integer
    DEFAULT 720 CHECK (session_max_age_hours IS NULL OR session_max_age_hours > 0);
ALTER TABLE ai_realtime_settings ADD COLUMN IF NOT EXISTS require_sessions boolean
    NOT NULL DEFAULT false;

-- Fires before every other BEFORE INSERT trigger of ai_jobs (triggers fire in name order;
-- '0' sorts before 'a'), so a missing session is rejected before ai_jobs_a_owner would
-- create it. Kept apart from ai_jobs_before_insert (other changes to that function merge
-- without touching this one).
CREATE OR REPLACE FUNCTION ai_jobs_session_rules() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    max_age integer;
    required boolean;
    started timestamptz;
BEGIN
    IF NEW.session_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT s.session_max_age_hours, s.require_sessions INTO max_age, required
    FROM ai_realtime_settings s WHERE s.id;
    IF NOT FOUND THEN
        max_age := 720;  -- the built-in default when the settings row is missing
        required := false;
    END IF;
    SELECT cs.created_at INTO started FROM ai_chat_sessions cs WHERE cs.id = NEW.session_id;
    IF NOT FOUND THEN
        IF required THEN
            RAISE check_violation USING
                MESSAGE = format('ai_jobs: session %L does not exist', NEW.session_id),
                HINT = 'ai_realtime_settings.require_sessions is on: create the session in ai_chat_sessions first';
        END IF;
        RETURN NEW;
    END IF;
    IF max_age IS NOT NULL AND started < now() - make_interval(hours => max_age) THEN
        RAISE check_violation USING
            MESSAGE = format('ai_jobs: session %L has expired (started %s; sessions accept questions for %s hours)',
                             NEW.session_id, to_char(started AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), max_age),
            HINT = 'start a new session or raise ai_realtime_settings.session_max_age_hours';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_0_session_rules ON ai_jobs;
CREATE TRIGGER ai_jobs_0_session_rules
    BEFORE INSERT ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION ai_jobs_session_rules();

-- ------------------------------------------------------------------ retention
-- How long finished rows are kept (days; NULL = forever). The tick deletes at most
-- batch_rows rows per kind per run (oldest first), so a long backlog drains over several
-- ticks without long locks or a burst of WAL.
CREATE TABLE IF NOT EXISTS worker_retention_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    completed_jobs_days integer DEFAULT 30 CHECK (completed_jobs_days IS NULL OR completed_jobs_days >= 1),
    failed_jobs_days integer DEFAULT 90 CHECK (failed_jobs_days IS NULL OR failed_jobs_days >= 1),
    -- chat messages of a session that expired (session_max_age_hours) this long ago
    expired_session_messages_days integer DEFAULT 30
        CHECK (expired_session_messages_days IS NULL OR expired_session_messages_days >= 0),
    -- ai_rate_usage rows whose window ended this long ago (they never matter again)
    rate_usage_days integer DEFAULT 2 CHECK (rate_usage_days IS NULL OR rate_usage_days >= 1),
    alerts_days integer DEFAULT 90 CHECK (alerts_days IS NULL OR alerts_days >= 1),
    task_runs_days integer DEFAULT 7 CHECK (task_runs_days IS NULL OR task_runs_days >= 1),
    batch_rows integer NOT NULL DEFAULT 5000 CHECK (batch_rows BETWEEN 1 AND 100000),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO worker_retention_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- One batch of every kind; returns the rows deleted per kind (only kinds that deleted any).
-- p_now: the clock (a test passes a later time instead of waiting for days).
CREATE OR REPLACE FUNCTION worker_apply_retention(p_now timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r worker_retention_settings%ROWTYPE;
    max_age integer;
    n integer;
    out jsonb := '{}';
BEGIN
    SELECT * INTO r FROM worker_retention_settings WHERE id;
    IF NOT FOUND THEN
        r.completed_jobs_days := 30; r.failed_jobs_days := 90;
        r.expired_session_messages_days := 30; r.rate_usage_days := 2;
        r.alerts_days := 90; r.task_runs_days := 7; r.batch_rows := 5000;
    END IF;
    IF r.completed_jobs_days IS NOT NULL THEN
        DELETE FROM ai_jobs WHERE id IN (
            SELECT j.id FROM ai_jobs j
            WHERE j.completed_at IS NOT NULL AND j.status = 'completed'
              AND j.completed_at < p_now - make_interval(days => r.completed_jobs_days)
            ORDER BY j.completed_at LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('completed_jobs', n); END IF;
    END IF;
    IF r.failed_jobs_days IS NOT NULL THEN
        DELETE FROM ai_jobs WHERE id IN (
            SELECT j.id FROM ai_jobs j
            WHERE j.completed_at IS NOT NULL AND j.status = 'failed'
              AND j.completed_at < p_now - make_interval(days => r.failed_jobs_days)
            ORDER BY j.completed_at LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('failed_jobs', n); END IF;
    END IF;
    SELECT s.session_max_age_hours INTO max_age FROM ai_realtime_settings s WHERE s.id;
    IF r.expired_session_messages_days IS NOT NULL AND max_age IS NOT NULL THEN
        DELETE FROM ai_chat_messages WHERE id IN (
            SELECT m.id FROM ai_chat_messages m
            JOIN ai_chat_sessions s ON s.id = m.session_id
            WHERE s.created_at < p_now - make_interval(hours => max_age)
                                       - make_interval(days => r.expired_session_messages_days)
            LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('session_messages', n); END IF;
    END IF;
    IF r.rate_usage_days IS NOT NULL THEN
        DELETE FROM ai_rate_usage WHERE (provider, model, unit, window_start) IN (
            SELECT u.provider, u.model, u.unit, u.window_start FROM ai_rate_usage u
            WHERE u.window_start + ('1 ' || u.unit)::interval
                  < p_now - make_interval(days => r.rate_usage_days)
            ORDER BY u.window_start LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('rate_usage', n); END IF;
    END IF;
    IF r.alerts_days IS NOT NULL THEN
        DELETE FROM worker_alerts WHERE id IN (
            SELECT a.id FROM worker_alerts a
            WHERE a.created_at < p_now - make_interval(days => r.alerts_days)
            ORDER BY a.created_at LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('alerts', n); END IF;
    END IF;
    IF r.task_runs_days IS NOT NULL THEN
        DELETE FROM worker_task_runs WHERE id IN (
            SELECT t.id FROM worker_task_runs t
            WHERE t.started_at < p_now - make_interval(days => r.task_runs_days)
            ORDER BY t.started_at LIMIT r.batch_rows);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN out := out || jsonb_build_object('task_runs', n); END IF;
    END IF;
    RETURN out;
END $$;

-- ------------------------------------------------------------------ queue position
-- Where a waiting job stands, and now also how long it will likely wait: its place among
-- the waiting jobs of its provider divided by that provider's recent throughput (jobs
-- finished in the last 10 minutes), and never less than its next_attempt_at. NULL while
-- the provider finished nothing in that time (no basis for an estimate).
CREATE OR REPLACE VIEW ai_job_queue_position AS
WITH recent AS (
    SELECT j.provider,
           count(*)::float8 / greatest(10.0, extract(epoch FROM now() - min(j.completed_at)))
               AS per_second
    FROM ai_jobs j
    WHERE j.completed_at > now() - interval '10 minutes'
    GROUP BY j.provider
), waiting AS (
    SELECT j.id, j.kind, j.provider, j.model, j.session_id, j.status, j.priority,
           j.next_attempt_at, j.created_at,
           row_number() OVER (ORDER BY (j.next_attempt_at > now()), j.priority DESC, j.id) AS queue_position,
           count(*) OVER () AS queue_length,
           row_number() OVER (PARTITION BY j.provider
                              ORDER BY (j.next_attempt_at > now()), j.priority DESC, j.id) AS provider_position
    FROM ai_jobs j
    WHERE j.status IN ('pending', 'retrying')
)
SELECT w.id, w.kind, w.provider, w.model, w.session_id, w.status, w.priority,
       w.next_attempt_at, w.created_at, w.queue_position, w.queue_length,
       w.provider_position,
       CASE WHEN r.per_second IS NOT NULL
            THEN round(greatest(w.provider_position / r.per_second,
                                extract(epoch FROM w.next_attempt_at - now()))::numeric, 1)::float8
       END AS estimated_wait_seconds
FROM waiting w
LEFT JOIN recent r ON r.provider = w.provider;

-- ------------------------------------------------------------------ templates
-- The job-type names of the old queue, so its callers' rows are accepted as they are.
INSERT INTO ai_job_templates (name, system_prompt, user_template, output, json_schema) VALUES
('ai_generation',
 'You are a helpful assistant.',
 '{text}',
 'text', NULL),
('sentiment_analysis',
 'You classify the sentiment of a text. Answer with JSON only.',
 E'Classify the sentiment of this text:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false, "required": ["sentiment", "score"],
   "properties": {"sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                  "score": {"type": "number", "minimum": -1, "maximum": 1}}}'),
('review_processing',
 'You process customer reviews for the business: extract the facts and draft a short, friendly reply. Answer with JSON only.',
 E'Process this review:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false,
   "required": ["sentiment", "summary", "topics", "reply"],
   "properties": {"sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                  "summary": {"type": "string"},
                  "topics": {"type": "array", "items": {"type": "string"}},
                  "reply": {"type": "string"}}}'),
('prompt_analysis',
 'You analyse prompts for clarity and intent. Answer with JSON only.',
 E'Analyse this prompt:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false, "required": ["intent", "clarity", "suggestions"],
   "properties": {"intent": {"type": "string"},
                  "clarity": {"type": "integer", "minimum": 1, "maximum": 10},
                  "suggestions": {"type": "array", "items": {"type": "string"}}}}')
ON CONFLICT (name) DO NOTHING;
