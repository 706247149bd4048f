-- Waking the workers from SQL. A question that becomes pending (inserted pending, updated to
-- pending, or its question/option text edited, which re-queues it) defers the `submit` task
-- through Procrastinate, inside the application's own transaction (a transactional outbox:
-- workers see the job when that transaction commits, through LISTEN/NOTIFY).
--
-- Statement-level triggers with transition tables: a 10,000-row INSERT defers once. The
-- queueing lock 'submit' allows one waiting submit job however many rows arrive; a second
-- defer hits the unique index and is ignored. Nothing here ever makes the application's
-- statement fail: any other error becomes a WARNING and the periodic tick picks the rows up.
--
-- The only place that names Procrastinate's versioned SQL API (procrastinate_defer_jobs_v1).
CREATE OR REPLACE FUNCTION worker_defer_job(
    p_queue text, p_task text, p_lock text,
    p_args jsonb DEFAULT '{}', p_scheduled_at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM procrastinate_defer_jobs_v1(ARRAY[
        ROW(p_queue, p_task, 0, NULL, p_lock, coalesce(p_args, '{}'), p_scheduled_at)::procrastinate_job_to_defer_v1
    ]);
EXCEPTION
    WHEN unique_violation THEN
        NULL;  -- a job with this queueing lock is already waiting: it will see our rows
    WHEN OTHERS THEN
        RAISE WARNING 'ai-worker: could not defer %: % (%); the periodic tick will pick the work up',
            p_task, SQLERRM, SQLSTATE;
END $$;

CREATE OR REPLACE FUNCTION worker_questions_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Editing the text of an enrolled question re-queues it (fresh attempts).
        IF OLD.ai_commentary_status IS NOT NULL
           AND NEW.ai_commentary_status IS NOT DISTINCT FROM OLD.ai_commentary_status
           AND (NEW.question, NEW.option_a, NEW.option_b, NEW.option_c, NEW.option_d, NEW.option_e)
               IS DISTINCT FROM
               (OLD.question, OLD.option_a, OLD.option_b, OLD.option_c, OLD.option_d, OLD.option_e)
        THEN
            NEW.ai_commentary_status := 'pending';
            NEW.ai_commentary_queued_at := now();
        END IF;
        IF NEW.ai_commentary_status = 'pending' AND OLD.ai_commentary_status IS DISTINCT FROM 'pending' THEN
            NEW.ai_commentary_attempts := 0;
            NEW.ai_commentary_error := NULL;
            IF NEW.ai_commentary_queued_at IS NOT DISTINCT FROM OLD.ai_commentary_queued_at THEN
                NEW.ai_commentary_queued_at := now();
            END IF;
        END IF;
    END IF;
    IF NEW.ai_commentary_status = 'pending' AND NEW.ai_commentary_queued_at IS NULL THEN
        NEW.ai_commentary_queued_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION worker_questions_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM worker_new_rows WHERE ai_commentary_status = 'pending') THEN
        PERFORM worker_defer_job('submit', 'submit', 'submit');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION worker_questions_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM worker_new_rows n
        JOIN worker_old_rows o ON o.id = n.id
        WHERE n.ai_commentary_status = 'pending'
          AND (o.ai_commentary_status IS DISTINCT FROM 'pending'
               OR n.ai_commentary_queued_at IS DISTINCT FROM o.ai_commentary_queued_at)
    ) THEN
        PERFORM worker_defer_job('submit', 'submit', 'submit');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS worker_questions_before_write ON questions;
CREATE TRIGGER worker_questions_before_write
    BEFORE INSERT OR UPDATE ON questions
    FOR EACH ROW EXECUTE FUNCTION worker_questions_before_write();

DROP TRIGGER IF EXISTS worker_questions_after_insert ON questions;
CREATE TRIGGER worker_questions_after_insert
    AFTER INSERT ON questions
    REFERENCING NEW TABLE AS worker_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION worker_questions_after_insert();

DROP TRIGGER IF EXISTS worker_questions_after_update ON questions;
CREATE TRIGGER worker_questions_after_update
    AFTER UPDATE ON questions
    REFERENCING NEW TABLE AS worker_new_rows OLD TABLE AS worker_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION worker_questions_after_update();
