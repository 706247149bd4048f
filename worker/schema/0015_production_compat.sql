-- Installing onto the production shape (issue 11, part 1). On a database created by this
-- project it only adds the claim index, ops_pending and an empty worker_install_changes; on a
-- production database it adapts the old tables the worker writes to, and records every
-- change it makes to them in worker_install_changes (readable with psql).
--
-- 1. Constraints of the old tables that contradict the new design are relaxed:
--    * ai_commentary_batch_jobs.batch_id: DROP NOT NULL. The worker records a batch intent
--      BEFORE the provider batch exists (failure mode 4 of the old system), so the row has
--      no provider batch id yet; it is set when the provider answers. (The production DDL,
--      ../shared/reference/production-ddl.sql, makes it NOT NULL.)
--    * ai_commentary_batch_jobs.question_ids: stays NOT NULL, gains DEFAULT '{}' (as on a
--      new database). The worker always fills it.
-- 2. Unknown NOT NULL columns without a default. Production tables may carry columns the
--    app added that the worker cannot know. For the two old tables the worker inserts into
--    (ai_commentary_batch_jobs, ai_commentary_summaries), every NOT NULL column without a
--    default that the worker's INSERT does not name gets, decided per column:
--    * the type's zero value as DEFAULT ('' for text, 0 for numbers, false, now() for
--      dates and times, '0' for intervals, '{}' for arrays and json/jsonb): the column stays
--      NOT NULL, so what the app reads keeps its type (Supabase's generated types too);
--    * DROP NOT NULL where no zero value is safe: a column in a CHECK, UNIQUE, exclusion or
--      foreign key constraint or a unique index (a zero value could break it; NULL passes
--      them all), and types without a neutral value (uuid, enums, domains, composites, ...);
--    * a uuid primary key column gets DEFAULT gen_random_uuid(); any other primary key
--      column without a default stops the migration with a message saying what to do.
--    Generated and identity columns are left alone (they fill themselves).
--    Chosen over a BEFORE INSERT trigger: no cost on every comment or summary write, and the
--    result is plain to see in \d and in worker_install_changes. A NOT NULL column added to
--    these tables after the install needs a DEFAULT (or must be nullable).
-- 3. Old `pending` rows without ai_commentary_queued_at are claimable: NULL means "queued
--    long ago", so the claim orders and compares coalesce(queued_at, '-infinity') (sql/
--    commentary.sql claim_pending, next_pending_due), served by the expression index below.
--    Fixed in the query, not by a backfill: a backfill would UPDATE up to every pending row
--    of the user's table at install (firing the app's own triggers, updated_at stamps and
--    Supabase Realtime broadcasts), and rows written later with triggers disabled (a COPY
--    or restore with session_replication_role = replica) would be stuck again.
-- 4. ops_pending (`status`, /metrics): a pending row without queued_at, or a processing row
--    claimed by the old worker (no ai_commentary_claimed_at), has waited at least since the
--    worker was installed; the oldest age is that lower bound (not "0s") and the counts of
--    such rows are shown.
-- The old `status` columns keep values the old UI knows: questions.ai_commentary_status
-- stays pending | processing | completed | failed | NULL, and a batch row's status is
-- 'pending' until the provider answers, then the provider's raw state ('failed' when the
-- provider never created it); the worker's own lifecycle is in ai_commentary_batch_jobs.state.
-- questions.ai_commentary_attempts counts the worker's claims of the question (one per
-- processing round; per-model tries are in ai_commentary_requests.attempts); re-queueing the
-- question resets it (0007).

CREATE TABLE IF NOT EXISTS worker_install_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    column_name text NOT NULL,
    change text NOT NULL,
    reason text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
-- Closed by default: only the owner (the worker's role) reads it.
ALTER TABLE worker_install_changes ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON worker_install_changes FROM PUBLIC;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON worker_install_changes FROM %I', r);
            EXECUTE format('REVOKE ALL ON SEQUENCE worker_install_changes_id_seq FROM %I', r);
        END IF;
    END LOOP;
END $$;

-- Steps 1 and 2: decide the changes (into `todo`), then apply and record each one.
DO $$
DECLARE
    todo text[] := ARRAY[]::text[];  -- flat: table, column, DDL, reason; table, ...
    t record;
    c record;
    zero text;
    constrained boolean;
    i int;
BEGIN
    -- 1. The batch table's constraints that contradict the intent-before-create design.
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = 'ai_commentary_batch_jobs'::regclass
                 AND attname = 'batch_id' AND attnotnull) THEN
        todo := todo || ARRAY['ai_commentary_batch_jobs', 'batch_id', 'DROP NOT NULL',
            'a batch intent is recorded before the provider batch (and its id) exists'];
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a
                       ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                   WHERE d.adrelid = 'ai_commentary_batch_jobs'::regclass
                     AND a.attname = 'question_ids') THEN
        todo := todo || ARRAY['ai_commentary_batch_jobs', 'question_ids', 'SET DEFAULT ''{}''',
            'as on a new database; the worker always fills it'];
    END IF;

    -- 2. Unknown NOT NULL columns without a default on the old tables the worker inserts
    -- into. The lists name the columns the worker's INSERTs fill (sql/commentary.sql
    -- insert_batch_intent and upsert_summaries); batch_id is settled by step 1.
    FOR t IN SELECT * FROM (VALUES
        ('ai_commentary_batch_jobs', ARRAY['id', 'provider', 'status', 'state', 'stage', 'model_key',
                                           'model_name', 'question_ids', 'request_count', 'batch_id']),
        ('ai_commentary_summaries', ARRAY['question_id', 'summary_general_comment', 'summary_comment_a',
                                          'summary_comment_b', 'summary_comment_c', 'summary_comment_d',
                                          'summary_comment_e', 'model_agreement_analysis', 'provider',
                                          'model_name', 'model_version', 'prompt_version', 'batch_job_id',
                                          'input_tokens', 'output_tokens', 'cost_usd', 'batch_priced'])
    ) AS v (table_name, filled) LOOP
        FOR c IN
            SELECT a.attname::text AS attname, a.attnum,
                   format_type(a.atttypid, a.atttypmod) AS type_sql,
                   ty.typcategory, ty.typtype, ty.typname::text AS typname
            FROM pg_attribute a
            JOIN pg_type ty ON ty.oid = a.atttypid
            WHERE a.attrelid = t.table_name::regclass AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attnotnull AND a.attgenerated = '' AND a.attidentity = ''
              AND NOT EXISTS (SELECT 1 FROM pg_attrdef d
                              WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum)
              AND NOT (a.attname::text = ANY (t.filled))
            ORDER BY a.attnum
        LOOP
            IF EXISTS (SELECT 1 FROM pg_constraint k
                       WHERE k.conrelid = t.table_name::regclass AND k.contype = 'p'
                         AND c.attnum = ANY (k.conkey)) THEN
                IF c.typname = 'uuid' THEN
                    todo := todo || ARRAY[t.table_name, c.attname, 'SET DEFAULT gen_random_uuid()',
                        'primary key without a default; the worker''s INSERT does not name it'];
                    CONTINUE;
                END IF;
                RAISE EXCEPTION 'ai-worker cannot install: %.% is a primary key column of type % without a default, which the worker''s INSERT does not fill. Give it a default (ALTER TABLE % ALTER COLUMN % SET DEFAULT ...), then run db migrate again.',
                    t.table_name, c.attname, c.type_sql, t.table_name, c.attname;
            END IF;
            constrained := EXISTS (
                SELECT 1 FROM pg_constraint k
                WHERE k.conrelid = t.table_name::regclass AND k.contype IN ('c', 'u', 'x', 'f')
                  AND c.attnum = ANY (k.conkey)
            ) OR EXISTS (
                SELECT 1 FROM pg_index x
                WHERE x.indrelid = t.table_name::regclass AND x.indisunique
                  AND c.attnum = ANY (x.indkey::int2[])
            );
            zero := NULL;
            IF NOT constrained AND c.typtype = 'b' THEN
                zero := CASE
                    WHEN c.typname IN ('json', 'jsonb') THEN '''{}'''
                    WHEN c.typcategory = 'S' THEN ''''''
                    WHEN c.typcategory = 'N' AND c.typname NOT LIKE 'reg%' THEN '0'
                    WHEN c.typcategory = 'B' THEN 'false'
                    WHEN c.typcategory = 'D' THEN format('now()::%s', c.type_sql)
                    WHEN c.typcategory = 'T' THEN '''0'''
                    WHEN c.typcategory = 'A' THEN '''{}'''
                END;
            END IF;
            IF zero IS NOT NULL THEN
                todo := todo || ARRAY[t.table_name, c.attname, 'SET DEFAULT ' || zero,
                    format('NOT NULL without a default, unknown to the worker: the %s zero value',
                           c.type_sql)];
            ELSE
                todo := todo || ARRAY[t.table_name, c.attname, 'DROP NOT NULL',
                    format('NOT NULL without a default, unknown to the worker; %s',
                           CASE WHEN constrained
                                THEN 'in a CHECK, UNIQUE, exclusion or foreign key constraint, which a made-up value could break'
                                ELSE format('type %s has no neutral value', c.type_sql) END)];
            END IF;
        END LOOP;
    END LOOP;

    FOR i IN 0 .. coalesce(array_length(todo, 1), 0) / 4 - 1 LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I ', todo[4 * i + 1], todo[4 * i + 2])
                || todo[4 * i + 3];
        INSERT INTO worker_install_changes (table_name, column_name, change, reason)
        VALUES (todo[4 * i + 1], todo[4 * i + 2], todo[4 * i + 3], todo[4 * i + 4]);
        RAISE NOTICE 'ai-worker: %.%: % (%)',
            todo[4 * i + 1], todo[4 * i + 2], todo[4 * i + 3], todo[4 * i + 4];
    END LOOP;
END $$;

-- 3. The claim's index: pending questions in queue order, those without queued_at first.
CREATE INDEX IF NOT EXISTS questions_ai_commentary_pending_due_idx
    ON questions ((coalesce(ai_commentary_queued_at, '-infinity'::timestamptz)), id)
    WHERE ai_commentary_status = 'pending';
DROP INDEX IF EXISTS questions_ai_commentary_pending_idx;

-- 4. Pending and in-progress work with the age of the oldest. Rows without a queue (claim)
-- time have waited at least since the worker was installed (its first migration).
CREATE OR REPLACE VIEW ops_pending WITH (security_invoker = on) AS
WITH p AS (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE ai_commentary_queued_at IS NULL) AS unknown,
           min(ai_commentary_queued_at) AS oldest
    FROM questions WHERE ai_commentary_status = 'pending'
), c AS (
    SELECT count(*) AS n,
           count(*) FILTER (WHERE ai_commentary_claimed_at IS NULL) AS unknown,
           min(ai_commentary_claimed_at) AS oldest
    FROM questions WHERE ai_commentary_status = 'processing'
), i AS (
    SELECT min(applied_at) AS at FROM worker_schema_migrations
), o AS (
    SELECT p.n AS pending, p.unknown AS pending_unknown,
           CASE WHEN p.unknown > 0 THEN least(p.oldest, i.at) ELSE p.oldest END AS pending_at,
           c.n AS processing, c.unknown AS processing_unknown,
           CASE WHEN c.unknown > 0 THEN least(c.oldest, i.at) ELSE c.oldest END AS claimed_at
    FROM p, c, i
)
SELECT
    o.pending,
    o.pending_at AS oldest_pending_at,
    coalesce(extract(epoch FROM now() - o.pending_at), 0)::float8 AS oldest_pending_age_seconds,
    o.processing,
    coalesce(extract(epoch FROM now() - o.claimed_at), 0)::float8 AS oldest_processing_age_seconds,
    o.pending_unknown AS pending_without_queued_at,
    o.processing_unknown AS processing_without_claimed_at
FROM o;
