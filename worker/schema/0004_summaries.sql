-- ai_commentary_summaries: one row per question (UNIQUE (question_id)).
-- A production table without the key may hold several rows per question (the UI read the
-- newest): the older duplicates move, whole, to ai_commentary_summaries_legacy_duplicates
-- before the unique index is built, so no row is lost.
CREATE TABLE IF NOT EXISTS ai_commentary_summaries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    question_id uuid NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    summary_general_comment text,
    summary_comment_a text,
    summary_comment_b text,
    summary_comment_c text,
    summary_comment_d text,
    summary_comment_e text,
    model_agreement_analysis text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS provider text;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS model_name text;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS model_version text;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS prompt_version text;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS batch_job_id uuid;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS input_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS output_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS cost_usd numeric(14, 8) NOT NULL DEFAULT 0;
ALTER TABLE ai_commentary_summaries ADD COLUMN IF NOT EXISTS batch_priced boolean NOT NULL DEFAULT false;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'ai_commentary_summaries_question_key') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM ai_commentary_summaries GROUP BY question_id HAVING count(*) > 1) THEN
        CREATE TABLE IF NOT EXISTS ai_commentary_summaries_legacy_duplicates
            (LIKE ai_commentary_summaries INCLUDING DEFAULTS);
        WITH ranked AS (
            SELECT ctid AS row_ctid,
                   row_number() OVER (PARTITION BY question_id
                                      ORDER BY updated_at DESC NULLS LAST, created_at DESC NULLS LAST) AS rn
            FROM ai_commentary_summaries
        ), moved AS (
            DELETE FROM ai_commentary_summaries s
            USING ranked r
            WHERE s.ctid = r.row_ctid AND r.rn > 1
            RETURNING s.*
        )
        INSERT INTO ai_commentary_summaries_legacy_duplicates SELECT * FROM moved;
    END IF;
    CREATE UNIQUE INDEX ai_commentary_summaries_question_key ON ai_commentary_summaries (question_id);
END $$;
