-- The price table (editable with SQL) and the cost function every write uses.
-- Prices are USD per million tokens at list (realtime) price; batch_discount is the share
-- taken off for Batch API requests (0.5 = half price). A provider-wide row with model '*'
-- prices any model of that provider not listed; unknown models cost 0 (and show up in the
-- ai_cost_unpriced view of 0010 so they get noticed).
CREATE TABLE IF NOT EXISTS ai_model_prices (
    provider text NOT NULL,
    model text NOT NULL,
    input_usd_per_mtok numeric(12, 6) NOT NULL CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok numeric(12, 6) NOT NULL CHECK (output_usd_per_mtok >= 0),
    batch_discount numeric(4, 3) NOT NULL DEFAULT 0.5 CHECK (batch_discount BETWEEN 0 AND 1),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

INSERT INTO ai_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok, batch_discount) VALUES
    ('openai', 'gpt-4.1-mini', 0.40, 1.60, 0.5),
    ('openai', 'gpt-4.1', 2.00, 8.00, 0.5),
    ('openai', 'gpt-4o-mini', 0.15, 0.60, 0.5),
    ('openai', 'text-embedding-3-small', 0.02, 0, 0.5),
    ('gemini', 'gemini-2.5-flash', 0.30, 2.50, 0.5),
    ('gemini', 'gemini-2.5-flash-lite', 0.10, 0.40, 0.5),
    ('gemini', 'gemini-embedding-001', 0.15, 0, 0.5),
    ('mistral', 'mistral-small-latest', 0.10, 0.30, 0.5),
    ('mistral', 'mistral-embed', 0.10, 0, 0.5),
    ('perplexity', 'sonar', 1.00, 1.00, 0),
    ('deepseek', 'deepseek-chat', 0.27, 1.10, 0),
    ('openrouter', '*', 0.50, 1.50, 0),
    ('ollama', '*', 0, 0, 0),
    ('mock', '*', 0, 0, 0)
ON CONFLICT (provider, model) DO NOTHING;

CREATE OR REPLACE FUNCTION worker_cost_usd(
    p_provider text, p_model text, p_input bigint, p_output bigint, p_batch boolean)
RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT round((p_input * p.input_usd_per_mtok + p_output * p.output_usd_per_mtok) / 1000000.0
                     * CASE WHEN p_batch THEN 1 - p.batch_discount ELSE 1 END, 8)
        FROM ai_model_prices p
        WHERE p.provider = p_provider AND p.model IN (p_model, '*')
        ORDER BY (p.model = p_model) DESC
        LIMIT 1
    ), 0)
$$;
