-- Changing the settings row so that waiting questions become sendable wakes the worker at
-- once, instead of at the next safety-net tick (up to TICK_SECONDS later): switching the
-- feature on, enabling a model, changing a model's route, raising or removing the daily
-- budget, shortening the processing delay or raising the batch size defers `submit`
-- (deduplicated by its queueing lock; a submit with nothing to do returns at once).
-- Like the questions triggers it never makes the application's statement fail
-- (worker_defer_job turns errors into a WARNING).
CREATE OR REPLACE FUNCTION worker_settings_after_write() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF NOT NEW.feature_enabled THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT'
       OR NOT OLD.feature_enabled
       OR EXISTS (
            SELECT 1 FROM jsonb_each(NEW.models_enabled) n
            WHERE n.value = 'true'::jsonb
              AND (OLD.models_enabled -> n.key) IS DISTINCT FROM 'true'::jsonb)
       OR NEW.models IS DISTINCT FROM OLD.models
       OR NEW.summary_model IS DISTINCT FROM OLD.summary_model
       OR (OLD.daily_budget_usd IS NOT NULL
           AND (NEW.daily_budget_usd IS NULL OR NEW.daily_budget_usd > OLD.daily_budget_usd))
       OR NEW.processing_delay_minutes < OLD.processing_delay_minutes
       OR NEW.batch_size > OLD.batch_size
       OR NEW.max_attempts > OLD.max_attempts
    THEN
        PERFORM worker_defer_job('submit', 'submit', 'submit');
    END IF;
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION worker_settings_after_write() FROM PUBLIC;

DROP TRIGGER IF EXISTS worker_settings_after_write ON ai_commentary_settings;
CREATE TRIGGER worker_settings_after_write
    AFTER INSERT OR UPDATE ON ai_commentary_settings
    FOR EACH ROW EXECUTE FUNCTION worker_settings_after_write();
