-- Realtime metrics by model (issue 13): the models a /metrics series may name.
--
-- worker/metrics.py labels realtime and embedding calls by provider, model and kind. kind is
-- bounded by the insert trigger (chat, completion, embedding or an ai_job_templates name, all
-- configuration), but ai_jobs.model is whatever the caller wrote, so a typo or a model per
-- user would be a new series each. A job's model is named only when the configuration knows
-- it for that provider: a price (ai_model_prices), a route (ai_routes), a template's default
-- (ai_job_templates), a rate limit for that model (ai_rate_limits), or the mock provider's
-- default model. Every other model is counted under the label `other` (the scrape's SQL maps
-- it). To see a model by name, give it a price row (0 for a free one) or a route.
CREATE OR REPLACE VIEW ai_metric_models WITH (security_invoker = on) AS
SELECT p.provider, p.model FROM ai_model_prices p
UNION
SELECT r.provider, r.model FROM ai_routes r
UNION
SELECT t.provider, t.model FROM ai_job_templates t
WHERE t.provider IS NOT NULL AND t.model IS NOT NULL
UNION
SELECT l.provider, l.model FROM ai_rate_limits l WHERE l.model <> '*'
UNION
SELECT 'mock', 'mock';
