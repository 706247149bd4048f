-- Prices looked up once per statement instead of once per row. worker_cost_usd() runs a
-- price-table lookup for every row it is called on (about 7 µs a row: 0.45 s for the
-- 60,000 comment rows of one 20,000-question run); an ingest statement writes thousands of
-- rows at one provider, model and pricing mode, so it reads the price once with
-- worker_price() and applies it per row with worker_cost_at(), plain arithmetic.
-- worker_cost_usd() keeps its signature and result, now built from the same two pieces.

-- The price row used for (provider, model): the model's own row, else the provider's '*'
-- row; no row when neither exists (cost 0). factor is 1, or 1 - batch_discount.
CREATE OR REPLACE FUNCTION worker_price(p_provider text, p_model text, p_batch boolean)
RETURNS TABLE (input_usd_per_mtok numeric, output_usd_per_mtok numeric, factor numeric)
LANGUAGE sql STABLE AS $$
    SELECT p.input_usd_per_mtok, p.output_usd_per_mtok,
           CASE WHEN p_batch THEN 1 - p.batch_discount ELSE 1 END
    FROM ai_model_prices p
    WHERE p.provider = p_provider AND p.model IN (p_model, '*')
    ORDER BY (p.model = p_model) DESC
    LIMIT 1
$$;

-- The cost of a call at a price row (NULL price: 0).
CREATE OR REPLACE FUNCTION worker_cost_at(
    p_input bigint, p_output bigint, p_input_rate numeric, p_output_rate numeric,
    p_factor numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(round((p_input * p_input_rate + p_output * p_output_rate) / 1000000.0
                          * p_factor, 8), 0)
$$;

CREATE OR REPLACE FUNCTION worker_cost_usd(
    p_provider text, p_model text, p_input bigint, p_output bigint, p_batch boolean)
RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT worker_cost_at(p_input, p_output, w.input_usd_per_mtok, w.output_usd_per_mtok,
                              w.factor)
        FROM worker_price(p_provider, p_model, p_batch) w
    ), 0)
$$;
