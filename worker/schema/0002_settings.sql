-- ai_commentary_settings: the single settings row, production columns plus the worker's.
-- Invalid values are rejected with a readable message by a trigger (not silently replaced,
-- failure mode 15): a trigger rather than CHECK constraints so an existing database with an
-- old row still migrates, and the worker reports that row's problem where a person looks.
CREATE TABLE IF NOT EXISTS ai_commentary_settings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    feature_enabled boolean NOT NULL DEFAULT true,
    models_enabled jsonb NOT NULL DEFAULT
        '{"chatgpt": true, "gemini": true, "mistral": true, "perplexity": false, "deepseek": false}',
    batch_size integer NOT NULL DEFAULT 40,
    processing_delay_minutes integer NOT NULL DEFAULT 3,
    auto_trigger_enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Which provider, model and API each model key uses: configuration, not code.
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS models jsonb NOT NULL DEFAULT '{
  "chatgpt":    {"provider": "openai",     "model": "gpt-4.1-mini",         "mode": "batch"},
  "gemini":     {"provider": "gemini",     "model": "gemini-2.5-flash",     "mode": "batch"},
  "mistral":    {"provider": "mistral",    "model": "mistral-small-latest", "mode": "batch"},
  "perplexity": {"provider": "perplexity", "model": "sonar",                "mode": "instant"},
  "deepseek":   {"provider": "deepseek",   "model": "deepseek-chat",        "mode": "instant"}
}';
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS summary_model jsonb NOT NULL DEFAULT
    '{"provider": "openai", "model": "gpt-4.1-mini", "mode": "batch"}';
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS prompt_version text NOT NULL DEFAULT 'de-v1';
-- NULL: the built-in German prompts of prompt_version. Set to replace them.
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS system_prompt text;
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS user_prompt_template text;
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS max_attempts integer NOT NULL DEFAULT 3;
-- By configuration a quota stop can also switch the whole feature off, as the old system did.
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS quota_disables_feature boolean NOT NULL DEFAULT false;
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS daily_budget_usd numeric;

CREATE OR REPLACE FUNCTION worker_check_settings() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    v jsonb;
BEGIN
    IF NEW.batch_size IS NULL OR NEW.batch_size <= 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.batch_size must be a positive integer (got %)', NEW.batch_size
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.batch_size > 50000 THEN
        RAISE EXCEPTION 'ai_commentary_settings.batch_size must be at most 50000 (got %)', NEW.batch_size
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.processing_delay_minutes IS NULL OR NEW.processing_delay_minutes < 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.processing_delay_minutes must be >= 0 (got %)',
            NEW.processing_delay_minutes USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_attempts IS NULL OR NEW.max_attempts <= 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.max_attempts must be a positive integer (got %)',
            NEW.max_attempts USING ERRCODE = 'check_violation';
    END IF;
    IF jsonb_typeof(NEW.models) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'ai_commentary_settings.models must be a JSON object of model key -> {provider, model, mode}'
            USING ERRCODE = 'check_violation';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(NEW.models) LOOP
        IF jsonb_typeof(v) IS DISTINCT FROM 'object'
           OR jsonb_typeof(v -> 'provider') IS DISTINCT FROM 'string'
           OR jsonb_typeof(v -> 'model') IS DISTINCT FROM 'string'
           OR coalesce(v ->> 'mode', 'batch') NOT IN ('batch', 'instant') THEN
            RAISE EXCEPTION 'ai_commentary_settings.models.% must be {"provider": text, "model": text, "mode": "batch"|"instant"} (got %)', k, v
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF jsonb_typeof(NEW.models_enabled) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'ai_commentary_settings.models_enabled must be a JSON object of model key -> boolean (got %)',
            NEW.models_enabled USING ERRCODE = 'check_violation';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(NEW.models_enabled) LOOP
        IF jsonb_typeof(v) IS DISTINCT FROM 'boolean' THEN
            RAISE EXCEPTION 'ai_commentary_settings.models_enabled.% must be true or false (got %)', k, v
                USING ERRCODE = 'check_violation';
        END IF;
        IF NOT NEW.models ? k THEN
            RAISE EXCEPTION 'ai_commentary_settings.models_enabled has unknown model key "%" (known: %)',
                k, (SELECT string_agg(x, ', ' ORDER BY x) FROM jsonb_object_keys(NEW.models) x)
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF jsonb_typeof(NEW.summary_model) IS DISTINCT FROM 'object'
       OR jsonb_typeof(NEW.summary_model -> 'provider') IS DISTINCT FROM 'string'
       OR jsonb_typeof(NEW.summary_model -> 'model') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'ai_commentary_settings.summary_model must be {"provider": text, "model": text, "mode": "batch"|"instant"} (got %)',
            NEW.summary_model USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS worker_check_settings ON ai_commentary_settings;
CREATE TRIGGER worker_check_settings
    BEFORE INSERT OR UPDATE ON ai_commentary_settings
    FOR EACH ROW EXECUTE FUNCTION worker_check_settings();

-- Exactly one row: create it on a new database. (An existing database keeps its row; the
-- worker reads the newest one.)
INSERT INTO ai_commentary_settings (feature_enabled)
SELECT true WHERE NOT EXISTS (SELECT 1 FROM ai_commentary_settings);
