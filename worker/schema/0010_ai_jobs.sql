-- Realtime AI jobs (issue #6): single AI requests - chat with sessions, completions, named
-- task kinds from prompt templates (sentiment, review_reply, ...), embeddings - drained at
-- provider speed by the `drain` task (worker/realtime). A caller only INSERTs a pending row:
--
--   INSERT INTO ai_jobs (kind, provider, model, input_text, session_id)
--   VALUES ('chat', 'openai', 'gpt-4.1-mini', 'Hallo!', 'whatsapp:+4912345');
--
-- A BEFORE INSERT trigger resolves routes/templates, validates the input and enforces the
-- per-session cap (readable check_violation errors); a statement-level AFTER INSERT trigger
-- wakes the workers (one deferred `drain` job per statement, plus a NOTIFY that a drain
-- already running listens to).
--
-- Lifecycle: pending -> processing -> completed | failed, with processing -> retrying
-- (next_attempt_at) on transient errors. Rate limits (ai_rate_limits) never fail a job:
-- it goes back to waiting with a later next_attempt_at.

-- ------------------------------------------------------------------ configuration
-- The single settings row of the realtime lane (editable with SQL; read at drain start).
CREATE TABLE IF NOT EXISTS ai_realtime_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- claim size of one drain round, and the cap on jobs in flight in one worker process
    claim_batch integer NOT NULL DEFAULT 500 CHECK (claim_batch BETWEEN 1 AND 10000),
    max_in_flight integer NOT NULL DEFAULT 2000 CHECK (max_in_flight BETWEEN 1 AND 100000),
    -- concurrent provider calls per provider and worker process; providers not listed use
    -- default_concurrency
    default_concurrency integer NOT NULL DEFAULT 50 CHECK (default_concurrency >= 1),
    provider_concurrency jsonb NOT NULL DEFAULT '{"mock": 2000}',
    -- seconds a drain with nothing due keeps listening for new rows before it ends
    linger_seconds real NOT NULL DEFAULT 1.0 CHECK (linger_seconds >= 0),
    -- sessions: last K messages as context, each cut to message_max_chars
    context_messages integer NOT NULL DEFAULT 10 CHECK (context_messages >= 0),
    context_floor integer NOT NULL DEFAULT 1 CHECK (context_floor >= 0),
    message_max_chars integer NOT NULL DEFAULT 4000 CHECK (message_max_chars >= 1),
    session_max_jobs integer NOT NULL DEFAULT 10 CHECK (session_max_jobs >= 1),
    -- input validation
    max_input_chars integer NOT NULL DEFAULT 32000 CHECK (max_input_chars >= 1),
    -- retries
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    backoff_base_seconds real NOT NULL DEFAULT 1.0 CHECK (backoff_base_seconds > 0),
    backoff_max_seconds real NOT NULL DEFAULT 300 CHECK (backoff_max_seconds > 0),
    -- a provider that is out of quota / has a bad key: its jobs wait this long, unfailed
    provider_down_wait_seconds real NOT NULL DEFAULT 60 CHECK (provider_down_wait_seconds > 0),
    -- a claimed job whose worker died is claimable again after this lease
    lease_seconds integer NOT NULL DEFAULT 600 CHECK (lease_seconds >= 10),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ai_realtime_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

-- Named routes: a caller may say route => 'support-bot' instead of provider + model.
CREATE TABLE IF NOT EXISTS ai_routes (
    name text PRIMARY KEY,
    provider text NOT NULL,
    model text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Named task kinds: kind = name. The user prompt is user_template with {text} replaced by
-- the job's input_text; output 'json' asks for JSON (schema-constrained when json_schema is
-- set) and stores it in result_json.
CREATE TABLE IF NOT EXISTS ai_job_templates (
    name text PRIMARY KEY
        CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$' AND name NOT IN ('chat', 'completion', 'embedding')),
    system_prompt text NOT NULL DEFAULT '',
    user_template text NOT NULL CHECK (position('{text}' IN user_template) > 0),
    output text NOT NULL DEFAULT 'text' CHECK (output IN ('text', 'json')),
    json_schema jsonb CHECK (json_schema IS NULL OR jsonb_typeof(json_schema) = 'object'),
    provider text,  -- default route of the kind (a job's own provider/route wins)
    model text,
    max_output_tokens integer CHECK (max_output_tokens IS NULL OR max_output_tokens > 0),
    temperature real,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ai_job_templates (name, system_prompt, user_template, output, json_schema) VALUES
('sentiment',
 'You classify the sentiment of a text. Answer with JSON only.',
 E'Classify the sentiment of this text:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false, "required": ["sentiment", "score"],
   "properties": {"sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                  "score": {"type": "number", "minimum": -1, "maximum": 1}}}'),
('review_reply',
 'You write short, friendly replies to customer reviews on behalf of the business.',
 E'Write a reply to this review:\n\n{text}',
 'text', NULL),
('review_analysis',
 'You extract structured facts from customer reviews. Answer with JSON only.',
 E'Analyse this review:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false, "required": ["summary", "topics", "rating"],
   "properties": {"summary": {"type": "string"},
                  "topics": {"type": "array", "items": {"type": "string"}},
                  "rating": {"type": "integer", "minimum": 1, "maximum": 5}}}'),
('prompt_analysis',
 'You analyse prompts for clarity and intent. Answer with JSON only.',
 E'Analyse this prompt:\n\n{text}',
 'json',
 '{"type": "object", "additionalProperties": false, "required": ["intent", "clarity", "suggestions"],
   "properties": {"intent": {"type": "string"},
                  "clarity": {"type": "integer", "minimum": 1, "maximum": 10},
                  "suggestions": {"type": "array", "items": {"type": "string"}}}}')
ON CONFLICT (name) DO NOTHING;

-- Rate limits shared by every worker: per provider and model ('*' = all models of the
-- provider together). NULL = no limit of that kind. rps is for APIs with per-second limits.
CREATE TABLE IF NOT EXISTS ai_rate_limits (
    provider text NOT NULL,
    model text NOT NULL DEFAULT '*',
    rps integer CHECK (rps IS NULL OR rps > 0),
    rpm integer CHECK (rpm IS NULL OR rpm > 0),
    tpm integer CHECK (tpm IS NULL OR tpm > 0),
    requests_per_hour integer CHECK (requests_per_hour IS NULL OR requests_per_hour > 0),
    requests_per_day integer CHECK (requests_per_day IS NULL OR requests_per_day > 0),
    requests_per_month integer CHECK (requests_per_month IS NULL OR requests_per_month > 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

-- Usage per fixed window (second/minute/hour/day/month, aligned with date_trunc). Rows are
-- locked while a request is admitted, so concurrent workers never overshoot a limit.
CREATE TABLE IF NOT EXISTS ai_rate_usage (
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL CHECK (unit IN ('second', 'minute', 'hour', 'day', 'month')),
    window_start timestamptz NOT NULL,
    requests integer NOT NULL DEFAULT 0,
    tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, model, unit, window_start)
);

-- ------------------------------------------------------------------ sessions
CREATE TABLE IF NOT EXISTS ai_chat_sessions (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    max_jobs integer CHECK (max_jobs IS NULL OR max_jobs >= 1),  -- NULL: settings default
    jobs_total integer NOT NULL DEFAULT 0,
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_job_at timestamptz
);

-- The conversation: a completed chat job adds its user message and the answer.
CREATE TABLE IF NOT EXISTS ai_chat_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL REFERENCES ai_chat_sessions (id) ON DELETE CASCADE,
    job_id bigint,
    role text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ai_chat_messages_session_idx ON ai_chat_messages (session_id, id DESC);

-- ------------------------------------------------------------------ jobs
CREATE TABLE IF NOT EXISTS ai_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,                 -- chat | completion | embedding | <template name>
    route text REFERENCES ai_routes (name),
    provider text,                      -- resolved at insert (route, template, or given)
    model text,
    system_prompt text,                 -- chat/completion: optional system message
    input_text text,                    -- the user message / text to process / embed
    messages jsonb,                     -- optional explicit history [{role, content}, ...]
    session_id text REFERENCES ai_chat_sessions (id),
    priority integer NOT NULL DEFAULT 0,  -- higher first, then oldest first
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'retrying', 'completed', 'failed')),
    attempts integer NOT NULL DEFAULT 0,          -- failed provider calls counted for retry
    throttled integer NOT NULL DEFAULT 0,         -- provider 429s / our rate-limit waits
    max_attempts integer,                         -- NULL: settings default
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    context_messages integer,                     -- history sent (halved on context errors)
    result_text text,
    result_json jsonb,
    embedding real[],
    error text,
    error_kind text,
    input_tokens integer,
    output_tokens integer,
    cost_usd numeric(14, 8),
    latency_ms integer,                           -- the successful provider call
    metadata jsonb,                               -- the caller's (user id, credits, ...)
    claimed_by text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz,                       -- last claim
    called_at timestamptz,                        -- last provider call started
    completed_at timestamptz,                     -- completed or failed
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Due work, in claim order. Open jobs only, so the index stays small.
CREATE INDEX IF NOT EXISTS ai_jobs_due_idx ON ai_jobs (priority DESC, id)
    WHERE status IN ('pending', 'retrying', 'processing');
CREATE INDEX IF NOT EXISTS ai_jobs_session_idx ON ai_jobs (session_id, id) WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ai_jobs_finished_idx ON ai_jobs (completed_at) WHERE completed_at IS NOT NULL;

-- pgvector, only where the extension exists (never required).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        EXECUTE 'ALTER TABLE ai_jobs ADD COLUMN IF NOT EXISTS embedding_vector vector';
    END IF;
END $$;

-- ------------------------------------------------------------------ insert validation
CREATE OR REPLACE FUNCTION ai_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s ai_realtime_settings%ROWTYPE;
    t ai_job_templates%ROWTYPE;
    r ai_routes%ROWTYPE;
    sess_cap integer;
    sess_total integer;
    m jsonb;
BEGIN
    SELECT * INTO s FROM ai_realtime_settings WHERE id;
    IF NEW.kind IS NULL OR NEW.kind = '' THEN
        RAISE check_violation USING MESSAGE = 'ai_jobs: kind is required (chat, completion, embedding or a template name)';
    END IF;
    IF NEW.kind NOT IN ('chat', 'completion', 'embedding') THEN
        SELECT * INTO t FROM ai_job_templates WHERE name = NEW.kind;
        IF NOT FOUND THEN
            RAISE check_violation USING MESSAGE = format(
                'ai_jobs: unknown kind %L (use chat, completion, embedding or a row of ai_job_templates)', NEW.kind);
        END IF;
    END IF;
    IF NEW.route IS NOT NULL THEN
        SELECT * INTO r FROM ai_routes WHERE name = NEW.route;
        IF NOT FOUND THEN
            RAISE check_violation USING MESSAGE = format('ai_jobs: unknown route %L', NEW.route);
        END IF;
        NEW.provider := coalesce(NEW.provider, r.provider);
        NEW.model := coalesce(NEW.model, r.model);
    END IF;
    IF t.name IS NOT NULL THEN
        NEW.provider := coalesce(NEW.provider, t.provider);
        NEW.model := coalesce(NEW.model, t.model);
    END IF;
    IF NEW.provider IS NULL THEN
        RAISE check_violation USING MESSAGE = 'ai_jobs: provider (or a route) is required';
    END IF;
    IF NEW.provider NOT IN ('openai', 'gemini', 'mistral', 'openrouter', 'perplexity', 'deepseek', 'ollama', 'mock') THEN
        RAISE check_violation USING MESSAGE = format('ai_jobs: unknown provider %L', NEW.provider);
    END IF;
    IF NEW.model IS NULL OR NEW.model = '' THEN
        IF NEW.provider = 'mock' THEN
            NEW.model := 'mock';
        ELSE
            RAISE check_violation USING MESSAGE = 'ai_jobs: model (or a route) is required';
        END IF;
    END IF;

    -- Input: present, not blank, not over-long, no control characters (tab/newline/CR are fine).
    IF NEW.input_text IS NULL AND NOT (NEW.kind IN ('chat', 'completion') AND NEW.messages IS NOT NULL) THEN
        RAISE check_violation USING MESSAGE = 'ai_jobs: input_text is required';
    END IF;
    IF NEW.input_text IS NOT NULL THEN
        IF btrim(NEW.input_text, E' \t\r\n') = '' THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: input_text is empty';
        END IF;
        IF length(NEW.input_text) > s.max_input_chars THEN
            RAISE check_violation USING MESSAGE = format(
                'ai_jobs: input_text is too long (%s characters, the limit is %s)',
                length(NEW.input_text), s.max_input_chars);
        END IF;
        IF NEW.input_text ~ '[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]' THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: input_text contains control characters';
        END IF;
    END IF;
    IF NEW.system_prompt IS NOT NULL AND length(NEW.system_prompt) > s.max_input_chars THEN
        RAISE check_violation USING MESSAGE = 'ai_jobs: system_prompt is too long';
    END IF;
    IF NEW.messages IS NOT NULL THEN
        IF NEW.kind NOT IN ('chat', 'completion') THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: messages are only for chat and completion jobs';
        END IF;
        IF jsonb_typeof(NEW.messages) <> 'array' OR jsonb_array_length(NEW.messages) = 0 THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: messages must be a non-empty JSON array';
        END IF;
        FOR m IN SELECT value FROM jsonb_array_elements(NEW.messages) LOOP
            IF jsonb_typeof(m) <> 'object' OR (m->>'role') IS NULL
               OR (m->>'role') NOT IN ('system', 'user', 'assistant')
               OR jsonb_typeof(m->'content') IS DISTINCT FROM 'string' THEN
                RAISE check_violation USING MESSAGE =
                    'ai_jobs: each message must be {"role": "system"|"user"|"assistant", "content": "<text>"}';
            END IF;
            IF (m->>'content') ~ '[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]' THEN
                RAISE check_violation USING MESSAGE = 'ai_jobs: a message contains control characters';
            END IF;
        END LOOP;
        IF length(NEW.messages::text) > 4 * s.max_input_chars THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: messages are too long';
        END IF;
    END IF;
    IF NEW.session_id IS NOT NULL AND NEW.kind <> 'chat' THEN
        RAISE check_violation USING MESSAGE = 'ai_jobs: session_id is only for chat jobs';
    END IF;

    -- A caller inserts pending work; everything else is the worker's.
    NEW.status := 'pending';
    NEW.attempts := 0;
    NEW.throttled := 0;
    NEW.next_attempt_at := now();

    -- Session cap: the session row is the counter, locked by this upsert, so two concurrent
    -- inserts cannot both take the last slot. A rejected insert rolls the count back.
    IF NEW.session_id IS NOT NULL THEN
        INSERT INTO ai_chat_sessions AS cs (id, jobs_total, last_job_at)
        VALUES (NEW.session_id, 1, now())
        ON CONFLICT (id) DO UPDATE SET jobs_total = cs.jobs_total + 1, last_job_at = now()
        RETURNING cs.jobs_total, coalesce(cs.max_jobs, s.session_max_jobs) INTO sess_total, sess_cap;
        IF sess_total > sess_cap THEN
            RAISE check_violation USING
                MESSAGE = format('ai_jobs: session %L has reached its limit of %s questions', NEW.session_id, sess_cap),
                HINT = 'start a new session or raise ai_chat_sessions.max_jobs';
        END IF;
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_before_insert ON ai_jobs;
CREATE TRIGGER ai_jobs_before_insert
    BEFORE INSERT ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION ai_jobs_before_insert();

-- ------------------------------------------------------------------ waking the workers
-- One deferred drain per INSERT statement (the queueing lock keeps one waiting), and a
-- NOTIFY for a drain that is already running and listening (its pickup needs no new job).
CREATE OR REPLACE FUNCTION ai_jobs_wake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM worker_defer_job('realtime', 'drain', 'drain');
    PERFORM pg_notify('worker_ai_jobs', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_after_insert ON ai_jobs;
CREATE TRIGGER ai_jobs_after_insert
    AFTER INSERT ON ai_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ai_jobs_wake();

-- A job put back to pending by hand (e.g. re-running a failed one) wakes the workers too.
-- Row-level with a WHEN clause, so the worker's own result writes never run the function.
CREATE OR REPLACE FUNCTION ai_jobs_requeued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.next_attempt_at := now();
    NEW.claimed_by := NULL;
    PERFORM worker_defer_job('realtime', 'drain', 'drain');
    PERFORM pg_notify('worker_ai_jobs', '');
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_requeued ON ai_jobs;
CREATE TRIGGER ai_jobs_requeued
    BEFORE UPDATE OF status ON ai_jobs
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status IN ('completed', 'failed'))
    EXECUTE FUNCTION ai_jobs_requeued();

-- ------------------------------------------------------------------ rate limiting
-- Admit the leading requests of p_tokens (one element = one request's token estimate) for
-- provider/model under every configured window. Returns how many were admitted (their usage
-- is recorded) and, when not all were, when to try again (the end of the binding window).
CREATE OR REPLACE FUNCTION ai_rate_acquire(p_provider text, p_model text, p_tokens integer[])
RETURNS TABLE (granted integer, retry_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    lim ai_rate_limits%ROWTYPE;
    u record;
    n integer := coalesce(array_length(p_tokens, 1), 0);
    k integer;
    used_r integer;
    used_t bigint;
    cap_r integer;
    ws timestamptz;
    units text[] := ARRAY['second', 'minute', 'hour', 'day', 'month'];
    v_unit text;
    best integer;
    wait_until timestamptz := NULL;
    acc bigint;
    t0 timestamptz := clock_timestamp();
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
                           WHEN 'hour' THEN lim.requests_per_hour WHEN 'day' THEN lim.requests_per_day
                           ELSE lim.requests_per_month END;
        CONTINUE WHEN cap_r IS NULL AND NOT (v_unit = 'minute' AND lim.tpm IS NOT NULL);
        ws := date_trunc(v_unit, t0);
        INSERT INTO ai_rate_usage (provider, model, unit, window_start)
        VALUES (lim.provider, lim.model, v_unit, ws) ON CONFLICT DO NOTHING;
        SELECT requests, tokens INTO used_r, used_t FROM ai_rate_usage
        WHERE provider = lim.provider AND model = lim.model AND ai_rate_usage.unit = v_unit
          AND window_start = ws FOR UPDATE;
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
        IF k < best THEN
            best := k;
        END IF;
        IF k < n THEN
            wait_until := greatest(wait_until, ws + ('1 ' || v_unit)::interval);
        END IF;
    END LOOP;
    IF best > 0 THEN
        UPDATE ai_rate_usage SET requests = requests + best,
               tokens = tokens + (SELECT coalesce(sum(x), 0) FROM unnest(p_tokens[1:best]) x)
        WHERE provider = lim.provider AND model = lim.model
          AND (ai_rate_usage.unit, window_start) IN (
              SELECT un, date_trunc(un, t0) FROM unnest(units) un);
    END IF;
    RETURN QUERY SELECT best, CASE WHEN best < n THEN wait_until END;
END $$;

-- After a call: correct the token estimate with the real usage (this minute's window).
CREATE OR REPLACE FUNCTION ai_rate_settle_tokens(p_provider text, p_model text, p_delta bigint)
RETURNS void
LANGUAGE sql AS $$
    UPDATE ai_rate_usage u SET tokens = greatest(u.tokens + p_delta, 0)
    FROM (SELECT l.provider, l.model FROM ai_rate_limits l
          WHERE l.provider = p_provider AND l.model IN (p_model, '*') AND l.tpm IS NOT NULL
          ORDER BY (l.model = p_model) DESC LIMIT 1) l
    WHERE u.provider = l.provider AND u.model = l.model AND u.unit = 'minute'
      AND u.window_start = date_trunc('minute', clock_timestamp());
$$;

-- ------------------------------------------------------------------ views
-- Where a waiting job stands: its place in claim order among due jobs (1 = next), and how
-- many jobs wait in total.
CREATE OR REPLACE VIEW ai_job_queue_position AS
SELECT j.id, j.kind, j.provider, j.model, j.session_id, j.status, j.priority,
       j.next_attempt_at, j.created_at,
       row_number() OVER (ORDER BY (j.next_attempt_at > now()), j.priority DESC, j.id) AS queue_position,
       count(*) OVER () AS queue_length
FROM ai_jobs j
WHERE j.status IN ('pending', 'retrying');

-- Per-session statistics.
CREATE OR REPLACE VIEW ai_session_stats AS
SELECT s.id AS session_id,
       count(j.id) AS total,
       count(j.id) FILTER (WHERE j.status = 'completed') AS completed,
       count(j.id) FILTER (WHERE j.status = 'failed') AS failed,
       count(j.id) FILTER (WHERE j.status IN ('pending', 'processing', 'retrying')) AS open,
       coalesce(s.max_jobs, (SELECT session_max_jobs FROM ai_realtime_settings WHERE id)) - s.jobs_total
           AS questions_left,
       avg(extract(epoch FROM j.completed_at - j.created_at)) FILTER (WHERE j.status = 'completed')
           AS avg_processing_seconds,
       avg(j.latency_ms) FILTER (WHERE j.status = 'completed') AS avg_provider_ms,
       sum(j.input_tokens) AS input_tokens,
       sum(j.output_tokens) AS output_tokens,
       sum(j.cost_usd) AS cost_usd,
       s.created_at,
       max(j.completed_at) AS last_completed_at
FROM ai_chat_sessions s
LEFT JOIN ai_jobs j ON j.session_id = s.id
GROUP BY s.id;

-- Throughput and errors per kind and provider: totals, last minute/hour, latency, waits.
CREATE OR REPLACE VIEW ai_job_throughput AS
SELECT j.kind, j.provider, j.model,
       count(*) AS total,
       count(*) FILTER (WHERE j.status = 'completed') AS completed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed,
       count(*) FILTER (WHERE j.status IN ('pending', 'processing', 'retrying')) AS open,
       count(*) FILTER (WHERE j.status = 'completed' AND j.completed_at > now() - interval '1 minute')
           AS completed_last_minute,
       count(*) FILTER (WHERE j.status = 'completed' AND j.completed_at > now() - interval '1 hour')
           AS completed_last_hour,
       count(*) FILTER (WHERE j.status = 'failed' AND j.completed_at > now() - interval '1 hour')
           AS failed_last_hour,
       sum(j.attempts) AS failed_calls,
       sum(j.throttled) AS throttled,
       jsonb_object_agg(coalesce(j.error_kind, '-'), 1) FILTER (WHERE j.error_kind IS NOT NULL)
           AS error_kinds_seen,
       avg(j.latency_ms) FILTER (WHERE j.status = 'completed') AS avg_latency_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.called_at - j.created_at) * 1000)
           FILTER (WHERE j.status = 'completed' AND j.attempts = 0 AND j.throttled = 0) AS p50_pickup_ms,
       sum(j.cost_usd) AS cost_usd
FROM ai_jobs j
GROUP BY j.kind, j.provider, j.model;

-- Error counts per kind/provider/error kind.
CREATE OR REPLACE VIEW ai_job_errors AS
SELECT j.kind, j.provider, j.error_kind, count(*) AS jobs,
       count(*) FILTER (WHERE j.status = 'failed') AS failed,
       max(j.updated_at) AS last_seen_at,
       (array_agg(j.error ORDER BY j.updated_at DESC))[1] AS last_error
FROM ai_jobs j
WHERE j.error_kind IS NOT NULL
GROUP BY j.kind, j.provider, j.error_kind;
