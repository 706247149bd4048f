-- No poison pills (issue #11 part 4): one bad value must never halt a lane.
--
-- The rules have one definition, worker/validation.py; this file spells the same constants
-- out (tests/unit/test_validation.py fails when they disagree). A bad value fails the
-- statement that writes it, with a message naming the field; a row the triggers never saw
-- (written before this migration, or with triggers disabled) is reported by the worker in
-- worker_errors instead, and the other rows keep flowing.
--
-- The checks are added as triggers of their own, after the existing ones (a table's
-- triggers of one kind fire in name order), so the functions of 0002/0010 - and whatever
-- later migrations set on them (SECURITY DEFINER, search_path) - stay as they are.

-- ------------------------------------------------------------------ shared definitions
CREATE OR REPLACE FUNCTION worker_supported_providers() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['openai', 'gemini', 'mistral', 'openrouter', 'perplexity', 'deepseek', 'ollama', 'mock']
$$;

CREATE OR REPLACE FUNCTION worker_batch_providers() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['openai', 'gemini', 'mistral']
$$;

-- Why a user prompt template is unusable, or NULL. Allowed: literal text, {{ and }}, and the
-- bare placeholders below; nothing else with a brace (no format spec, conversion,
-- attribute or index access). Tokens are read left to right as Python's reader does.
CREATE OR REPLACE FUNCTION worker_template_problem(p_template text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    fields text[] := ARRAY['question', 'option_a', 'option_b', 'option_c', 'option_d', 'option_e', 'subject'];
    max_chars integer := 20000;
    rest text;
    bad text;
BEGIN
    IF p_template IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(p_template) > max_chars THEN
        RETURN format('is %s characters, more than the limit of %s', length(p_template), max_chars);
    END IF;
    rest := regexp_replace(p_template,
        '\{\{|\}\}|\{(' || array_to_string(fields, '|') || ')\}', '', 'g');
    IF rest ~ '[{}]' THEN
        bad := coalesce((regexp_match(rest, '\{[^{}]*\}'))[1], 'a lone brace');
        RETURN format('%s is not allowed; a template may use only the bare placeholders %s'
                      ' (no format specs, conversions, attribute or index access;'
                      ' write {{ and }} for literal braces)',
                      bad, (SELECT string_agg('{' || f || '}', ', ') FROM unnest(fields) f));
    END IF;
    IF regexp_replace(p_template, '\{\{|\}\}', '', 'g') !~ '\{question\}' THEN
        RETURN 'does not contain {question}';
    END IF;
    RETURN NULL;
END $$;

-- ------------------------------------------------------------------ ai_commentary_settings
CREATE OR REPLACE FUNCTION worker_check_settings_rules() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    key_pattern text := '^[a-z0-9_]+$';
    max_key_chars integer := 63;
    max_delay integer := 1440;
    max_attempts integer := 100;
    max_prompt_chars integer := 20000;
    k text;
    v jsonb;
    problem text;
BEGIN
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM ai_commentary_settings) THEN
        RAISE EXCEPTION 'ai_commentary_settings holds exactly one row: UPDATE it instead of inserting another'
            USING ERRCODE = 'unique_violation';
    END IF;
    IF NEW.processing_delay_minutes > max_delay THEN
        RAISE EXCEPTION 'ai_commentary_settings.processing_delay_minutes must be at most % (one day; got %)',
            max_delay, NEW.processing_delay_minutes USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_attempts > max_attempts THEN
        RAISE EXCEPTION 'ai_commentary_settings.max_attempts must be at most % (got %)',
            max_attempts, NEW.max_attempts USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.daily_budget_usd < 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.daily_budget_usd must not be negative (got %); NULL means no budget',
            NEW.daily_budget_usd USING ERRCODE = 'check_violation';
    END IF;
    IF length(NEW.system_prompt) > max_prompt_chars THEN
        RAISE EXCEPTION 'ai_commentary_settings.system_prompt is % characters, more than the limit of %',
            length(NEW.system_prompt), max_prompt_chars USING ERRCODE = 'check_violation';
    END IF;
    problem := worker_template_problem(NEW.user_prompt_template);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'ai_commentary_settings.user_prompt_template: %', problem
            USING ERRCODE = 'check_violation';
    END IF;
    -- models: shape checked by worker_check_settings (0002); keys and providers here.
    FOR k, v IN SELECT * FROM jsonb_each(NEW.models) LOOP
        IF k !~ key_pattern OR length(k) > max_key_chars THEN
            RAISE EXCEPTION 'ai_commentary_settings.models: model key "%" must be 1-% lowercase letters, digits or underscores (e.g. "chatgpt", "gpt_4o")',
                k, max_key_chars USING ERRCODE = 'check_violation';
        END IF;
        IF k = 'summary' THEN
            RAISE EXCEPTION 'ai_commentary_settings.models: model key "summary" is reserved for the summary stage (set summary_model)'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NOT (v ->> 'provider') = ANY (worker_supported_providers()) THEN
            RAISE EXCEPTION 'ai_commentary_settings.models.%: unknown provider "%" (supported: %)',
                k, v ->> 'provider', array_to_string(worker_supported_providers(), ', ')
                USING ERRCODE = 'check_violation';
        END IF;
        IF btrim(v ->> 'model') = '' THEN
            RAISE EXCEPTION 'ai_commentary_settings.models.%: model must not be empty', k
                USING ERRCODE = 'check_violation';
        END IF;
        IF coalesce(v ->> 'mode', 'batch') = 'batch'
           AND NOT (v ->> 'provider') = ANY (worker_batch_providers()) THEN
            RAISE EXCEPTION 'ai_commentary_settings.models.%: provider "%" has no Batch API; use "mode": "instant"',
                k, v ->> 'provider' USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NOT (NEW.summary_model ->> 'provider') = ANY (worker_supported_providers()) THEN
        RAISE EXCEPTION 'ai_commentary_settings.summary_model: unknown provider "%" (supported: %)',
            NEW.summary_model ->> 'provider', array_to_string(worker_supported_providers(), ', ')
            USING ERRCODE = 'check_violation';
    END IF;
    IF coalesce(NEW.summary_model ->> 'mode', 'batch') NOT IN ('batch', 'instant')
       OR btrim(NEW.summary_model ->> 'model') = '' THEN
        RAISE EXCEPTION 'ai_commentary_settings.summary_model must be {"provider": text, "model": text, "mode": "batch"|"instant"} (got %)',
            NEW.summary_model USING ERRCODE = 'check_violation';
    END IF;
    IF coalesce(NEW.summary_model ->> 'mode', 'batch') = 'batch'
       AND NOT (NEW.summary_model ->> 'provider') = ANY (worker_batch_providers()) THEN
        RAISE EXCEPTION 'ai_commentary_settings.summary_model: provider "%" has no Batch API; use "mode": "instant"',
            NEW.summary_model ->> 'provider' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS worker_check_settings_rules ON ai_commentary_settings;
CREATE TRIGGER worker_check_settings_rules
    BEFORE INSERT OR UPDATE ON ai_commentary_settings
    FOR EACH ROW EXECUTE FUNCTION worker_check_settings_rules();

-- Exactly one row. A second row used to become the active one silently (the worker reads
-- the newest). Rows beyond the newest are moved, whole, to ai_commentary_settings_replaced
-- (nothing is lost; a person can copy a value back), then a unique index on a constant
-- makes a second row impossible.
CREATE TABLE IF NOT EXISTS ai_commentary_settings_replaced (
    id uuid PRIMARY KEY,
    row_data jsonb NOT NULL,
    replaced_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ai_commentary_settings_replaced ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON ai_commentary_settings_replaced FROM PUBLIC;

WITH keep AS (
    SELECT id FROM ai_commentary_settings ORDER BY updated_at DESC, id LIMIT 1
), moved AS (
    DELETE FROM ai_commentary_settings s
    WHERE s.id NOT IN (SELECT id FROM keep)
    RETURNING s.id, to_jsonb(s) AS row_data
)
INSERT INTO ai_commentary_settings_replaced (id, row_data)
SELECT id, row_data FROM moved
ON CONFLICT (id) DO NOTHING;

CREATE UNIQUE INDEX IF NOT EXISTS ai_commentary_settings_one_row ON ai_commentary_settings ((true));

-- ------------------------------------------------------------------ ai_realtime_settings
-- The row was deletable; every insert check of ai_jobs compared against its NULLs and
-- passed. The row is put back if missing, and ai_jobs checks use built-in limits when it
-- is missing anyway (worker_ai_jobs_checks below; the drain does the same in Python).
INSERT INTO ai_realtime_settings (id) VALUES (true) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION worker_check_realtime_settings() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    max_concurrency integer := 10000;
    k text;
    v jsonb;
BEGIN
    IF jsonb_typeof(NEW.provider_concurrency) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'ai_realtime_settings.provider_concurrency must be a JSON object provider -> integer, e.g. {"openai": 50} (got %)',
            NEW.provider_concurrency USING ERRCODE = 'check_violation';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(NEW.provider_concurrency) LOOP
        IF NOT k = ANY (worker_supported_providers()) THEN
            RAISE EXCEPTION 'ai_realtime_settings.provider_concurrency: unknown provider "%" (supported: %)',
                k, array_to_string(worker_supported_providers(), ', ') USING ERRCODE = 'check_violation';
        END IF;
        IF jsonb_typeof(v) IS DISTINCT FROM 'number' OR v::text !~ '^[0-9]+$'
           OR v::text::numeric NOT BETWEEN 1 AND max_concurrency THEN
            RAISE EXCEPTION 'ai_realtime_settings.provider_concurrency.% must be a whole number from 1 to % (got %)',
                k, max_concurrency, v USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NEW.default_concurrency > max_concurrency THEN
        RAISE EXCEPTION 'ai_realtime_settings.default_concurrency must be at most % (got %)',
            max_concurrency, NEW.default_concurrency USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.linger_seconds > 60 THEN
        RAISE EXCEPTION 'ai_realtime_settings.linger_seconds must be at most 60 (got %)',
            NEW.linger_seconds USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.backoff_base_seconds > 3600 OR NEW.backoff_max_seconds > 86400
       OR NEW.provider_down_wait_seconds > 86400 OR NEW.lease_seconds > 86400 THEN
        RAISE EXCEPTION 'ai_realtime_settings: delays are bounded (backoff_base_seconds <= 3600, backoff_max_seconds, provider_down_wait_seconds and lease_seconds <= 86400; got %, %, %, %)',
            NEW.backoff_base_seconds, NEW.backoff_max_seconds, NEW.provider_down_wait_seconds,
            NEW.lease_seconds USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS worker_check_realtime_settings ON ai_realtime_settings;
CREATE TRIGGER worker_check_realtime_settings
    BEFORE INSERT OR UPDATE ON ai_realtime_settings
    FOR EACH ROW EXECUTE FUNCTION worker_check_realtime_settings();

-- ------------------------------------------------------------------ ai_jobs
-- provider and model are resolved at insert (0010) and required from then on: a job whose
-- provider was set to NULL crashed every drain run. Open jobs that already lost theirs fail
-- with the reason (their provider cannot be guessed); closed ones keep a marker.
UPDATE ai_jobs
SET status = CASE WHEN status IN ('completed', 'failed') THEN status ELSE 'failed' END,
    error = CASE WHEN status IN ('completed', 'failed') THEN error
                 ELSE 'ai_jobs: provider or model was NULL (set after insert); re-insert the job' END,
    error_kind = CASE WHEN status IN ('completed', 'failed') THEN error_kind ELSE 'invalid_job' END,
    completed_at = coalesce(completed_at, now()),
    claimed_by = NULL, lease_until = NULL,
    provider = coalesce(provider, 'unresolved'),
    model = coalesce(model, 'unresolved'),
    updated_at = now()
WHERE provider IS NULL OR model IS NULL;
ALTER TABLE ai_jobs ALTER COLUMN provider SET NOT NULL;
ALTER TABLE ai_jobs ALTER COLUMN model SET NOT NULL;

-- Runs after ai_jobs_before_insert (name order) on INSERT, and on any change of provider or
-- model: the resolved route is a supported provider with a model; and when the settings row
-- is missing, the limits below (RealtimeSettings' defaults in worker/realtime/model.py) are
-- applied instead of none. SECURITY DEFINER: an application role that may insert jobs need
-- not read the settings or sessions tables.
CREATE OR REPLACE FUNCTION worker_ai_jobs_checks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    builtin_max_input_chars integer := 32000;
    builtin_session_max_jobs integer := 10;
    sess record;
BEGIN
    IF NEW.provider IS NULL OR NOT NEW.provider = ANY (worker_supported_providers()) THEN
        RAISE check_violation USING MESSAGE = format(
            'ai_jobs: provider must be one of %s (got %s)',
            array_to_string(worker_supported_providers(), ', '), coalesce(quote_literal(NEW.provider), 'NULL'));
    END IF;
    IF NEW.model IS NULL OR btrim(NEW.model) = '' THEN
        RAISE check_violation USING MESSAGE = format(
            'ai_jobs: model must not be empty (got %s)', coalesce(quote_literal(NEW.model), 'NULL'));
    END IF;
    IF TG_OP = 'INSERT' AND NOT EXISTS (SELECT 1 FROM ai_realtime_settings WHERE id) THEN
        IF length(NEW.input_text) > builtin_max_input_chars THEN
            RAISE check_violation USING MESSAGE = format(
                'ai_jobs: input_text is too long (%s characters, the limit is %s)',
                length(NEW.input_text), builtin_max_input_chars);
        END IF;
        IF length(NEW.system_prompt) > builtin_max_input_chars THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: system_prompt is too long';
        END IF;
        IF length(NEW.messages::text) > 4 * builtin_max_input_chars THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: messages are too long';
        END IF;
        IF NEW.session_id IS NOT NULL THEN
            SELECT jobs_total, max_jobs INTO sess FROM ai_chat_sessions WHERE id = NEW.session_id;
            IF FOUND AND sess.jobs_total > coalesce(sess.max_jobs, builtin_session_max_jobs) THEN
                RAISE check_violation USING
                    MESSAGE = format('ai_jobs: session %L has reached its limit of %s questions',
                                     NEW.session_id, coalesce(sess.max_jobs, builtin_session_max_jobs)),
                    HINT = 'start a new session or raise ai_chat_sessions.max_jobs';
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_check_resolved ON ai_jobs;
CREATE TRIGGER ai_jobs_check_resolved
    BEFORE INSERT OR UPDATE OF provider, model ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION worker_ai_jobs_checks();

-- ------------------------------------------------------------------ delayed submits
-- A submit scheduled for the end of processing_delay_minutes used the queueing lock
-- 'submit', which every immediate wake-up also uses: while it waited (10 hours for a delay
-- of 600) every later wake-up was swallowed. Delayed submits now carry their own lock
-- (submit-delayed@<epoch>, worker/submit.py); ones already waiting get it here.
UPDATE procrastinate_jobs
SET queueing_lock = 'submit-delayed@' || floor(extract(epoch FROM scheduled_at))::bigint
WHERE task_name = 'submit' AND status = 'todo' AND queueing_lock = 'submit'
  AND scheduled_at > now();

-- ------------------------------------------------------------------ rows written before
-- A settings row that breaks a rule above stays as it is (the migration must not fail on
-- it, nor change it behind the operator's back); the problem is recorded in worker_errors
-- at once, and the worker keeps reporting it (and leaves out what it must) until fixed.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT 'ai_commentary_settings' AS tbl, id::text AS id FROM ai_commentary_settings
             UNION ALL SELECT 'ai_realtime_settings', id::text FROM ai_realtime_settings LOOP
        BEGIN
            IF r.tbl = 'ai_commentary_settings' THEN
                UPDATE ai_commentary_settings SET feature_enabled = feature_enabled WHERE id::text = r.id;
            ELSE
                UPDATE ai_realtime_settings SET claim_batch = claim_batch WHERE id::text = r.id;
            END IF;
            RAISE EXCEPTION 'checked' USING ERRCODE = 'P0001';  -- undo the no-op update
        EXCEPTION
            WHEN check_violation THEN
                INSERT INTO worker_errors (fingerprint, kind, message)
                VALUES ('migrate-0017:' || r.tbl, 'settings',
                        left('the ' || r.tbl || ' row breaks a rule enforced since migration 0017: '
                             || SQLERRM, 4000))
                ON CONFLICT (fingerprint) DO NOTHING;
            WHEN raise_exception THEN
                NULL;
        END;
    END LOOP;
END $$;

-- ------------------------------------------------------------------ privileges and paths
-- Functions of this file: path pinned (pg_temp last, so a temporary table can never stand in
-- for a real one), and not callable by PUBLIC. The trigger functions are SECURITY DEFINER,
-- so whoever writes a row is checked with the owner's rights on the helpers and tables.
DO $$
DECLARE
    fns text[] := ARRAY[
        'worker_supported_providers()', 'worker_batch_providers()',
        'worker_template_problem(text)', 'worker_check_settings_rules()',
        'worker_check_realtime_settings()', 'worker_ai_jobs_checks()'];
    fn text;
    role_name text;
BEGIN
    FOREACH fn IN ARRAY fns LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
    -- Supabase's default privileges grant anon and authenticated everything new: take it
    -- back from what this file creates (the table's rows are hidden by RLS, but TRUNCATE
    -- and the functions are not).
    FOREACH role_name IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name);
        EXECUTE format('REVOKE ALL ON ai_commentary_settings_replaced FROM %I', role_name);
        FOREACH fn IN ARRAY fns LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', fn, role_name);
        END LOOP;
    END LOOP;
END $$;
