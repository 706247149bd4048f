-- Questions: the production table. On an existing database only the worker's own columns
-- are added (additive, nothing rewritten). Status values: pending | processing | completed |
-- failed | NULL (not enrolled in AI commentary).
CREATE TABLE IF NOT EXISTS questions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    question text NOT NULL DEFAULT '',
    option_a text NOT NULL DEFAULT '',
    option_b text NOT NULL DEFAULT '',
    option_c text NOT NULL DEFAULT '',
    option_d text NOT NULL DEFAULT '',
    option_e text NOT NULL DEFAULT '',
    correct_answer text,
    comment text,
    subject text,
    filename text,
    difficulty integer,
    case_text text,
    exam_name text,
    exam_semester text,
    exam_year integer,
    visibility text DEFAULT 'private',
    university_id uuid,
    user_id uuid,
    ai_commentary_status text,
    ai_commentary_queued_at timestamptz,
    ai_commentary_processed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The worker's bookkeeping, added to new and existing tables alike.
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_error text;
-- The models enabled when the question was claimed: completion waits for these only, so a
-- model enabled later never blocks it (failure mode 9 of the old system).
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_models text[];
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_claimed_at timestamptz;

-- NOT VALID: checks new writes without rejecting historic rows of an existing database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'questions_ai_commentary_status_check') THEN
        ALTER TABLE questions ADD CONSTRAINT questions_ai_commentary_status_check
            CHECK (ai_commentary_status IS NULL
                   OR ai_commentary_status IN ('pending', 'processing', 'completed', 'failed'))
            NOT VALID;
    END IF;
END $$;

-- The claim query: pending questions oldest first.
CREATE INDEX IF NOT EXISTS questions_ai_commentary_pending_idx
    ON questions (ai_commentary_queued_at)
    WHERE ai_commentary_status = 'pending';
CREATE INDEX IF NOT EXISTS questions_ai_commentary_processing_idx
    ON questions (ai_commentary_claimed_at)
    WHERE ai_commentary_status = 'processing';
