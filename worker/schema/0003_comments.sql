-- ai_answer_comments: one row per question and model, UNIQUE (question_id, model_key), so
-- every write is an idempotent upsert (failure mode 3 of the old system).
--
-- On a production database the table of that name is the old wide layout (one row per
-- question, per-model columns, duplicates allowed). It is renamed to
-- ai_answer_comments_legacy and kept whole (no row is lost or changed); the newest non-empty
-- comment of each question and model is copied into the new narrow table, so the wide view
-- ai_answer_comments_wide (0008) shows old and new results alike.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'ai_answer_comments'
          AND column_name = 'chatgpt_general_comment'
    ) AND NOT EXISTS (
        SELECT 1 FROM information_schema.tables
        WHERE table_schema = current_schema() AND table_name = 'ai_answer_comments_legacy'
    ) THEN
        ALTER TABLE ai_answer_comments RENAME TO ai_answer_comments_legacy;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS ai_answer_comments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    question_id uuid NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    model_key text NOT NULL,
    chosen_answer text CHECK (chosen_answer IN ('A', 'B', 'C', 'D', 'E')),
    general_comment text,
    comment_a text,
    comment_b text,
    comment_c text,
    comment_d text,
    comment_e text,
    regenerated_question text,
    regenerated_option_a text,
    regenerated_option_b text,
    regenerated_option_c text,
    regenerated_option_d text,
    regenerated_option_e text,
    provider text,
    model_name text,
    model_version text,
    prompt_version text,
    batch_job_id uuid,
    input_tokens integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    cost_usd numeric(14, 8) NOT NULL DEFAULT 0,
    batch_priced boolean NOT NULL DEFAULT false,
    source text NOT NULL DEFAULT 'worker',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ai_answer_comments_question_model_key UNIQUE (question_id, model_key)
);

DO $$
DECLARE
    m record;
BEGIN
    IF to_regclass('ai_answer_comments_legacy') IS NULL THEN
        RETURN;
    END IF;
    -- to_jsonb(row) tolerates legacy tables that lack some of the per-model columns.
    FOR m IN SELECT * FROM (VALUES
        ('chatgpt', 'chatgpt_general_comment', 'chatgpt_comment_'),
        ('gemini', 'gemini_new_general_comment', 'gemini_new_comment_'),
        ('mistral', 'mistral_general_comment', 'mistral_comment_'),
        ('perplexity', 'perplexity_general_comment', 'perplexity_comment_'),
        ('deepseek', 'deepseek_general_comment', 'deepseek_comment_')
    ) AS t (model_key, general_col, comment_prefix) LOOP
        INSERT INTO ai_answer_comments (
            question_id, model_key, chosen_answer, general_comment,
            comment_a, comment_b, comment_c, comment_d, comment_e,
            regenerated_question, regenerated_option_a, regenerated_option_b,
            regenerated_option_c, regenerated_option_d, regenerated_option_e,
            model_version, source, created_at, updated_at)
        SELECT DISTINCT ON (l.question_id)
            l.question_id, m.model_key,
            CASE WHEN upper(btrim(j ->> (m.model_key || '_chosen_answer'))) IN ('A', 'B', 'C', 'D', 'E')
                 THEN upper(btrim(j ->> (m.model_key || '_chosen_answer'))) END,
            j ->> m.general_col,
            j ->> (m.comment_prefix || 'a'), j ->> (m.comment_prefix || 'b'),
            j ->> (m.comment_prefix || 'c'), j ->> (m.comment_prefix || 'd'),
            j ->> (m.comment_prefix || 'e'),
            j ->> (m.model_key || '_regenerated_question'),
            j ->> (m.model_key || '_regenerated_option_a'), j ->> (m.model_key || '_regenerated_option_b'),
            j ->> (m.model_key || '_regenerated_option_c'), j ->> (m.model_key || '_regenerated_option_d'),
            j ->> (m.model_key || '_regenerated_option_e'),
            j ->> (m.model_key || '_model_version'),
            'legacy',
            coalesce((j ->> 'created_at')::timestamptz, now()),
            coalesce((j ->> 'updated_at')::timestamptz, (j ->> 'created_at')::timestamptz, now())
        FROM ai_answer_comments_legacy l
        CROSS JOIN LATERAL to_jsonb(l) AS j
        JOIN questions q ON q.id = l.question_id
        WHERE coalesce(btrim(j ->> m.general_col), '') <> ''
        ORDER BY l.question_id,
                 (j ->> 'updated_at')::timestamptz DESC NULLS LAST,
                 (j ->> 'created_at')::timestamptz DESC NULLS LAST
        ON CONFLICT (question_id, model_key) DO NOTHING;
    END LOOP;
END $$;
