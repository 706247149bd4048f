-- Who gets commentary, how much, and who pays (issue 16).
--
-- 1. Policy: ai_commentary_eligibility(question_ids) decides per question its depth
--    ('full', 'partial' or 'blocked' with a reason), its priority (higher first) and who
--    pays for a full-depth run. It is the one replaceable piece: an operator replaces it
--    with CREATE OR REPLACE FUNCTION (same signature; README "Who gets commentary").
--    Worker migrations after this one never replace it. The default
--    (ai_commentary_eligibility_default) implements the first user's rules when the app's
--    tables exist, looked up at every call, and "everything full, oldest first" otherwise.
--    The claim (sql/commentary.sql claim_pending) orders by it and moves
--    blocked questions out of the queue (status 'blocked', ai_commentary_blocked_reason);
--    the tick (unblock_entitled) puts them back when the policy no longer blocks them.
-- 2. Model sets per depth: full = the enabled models, partial = partial_models of the
--    settings row (default Mistral + DeepSeek), both only among enabled models. The set a
--    question was claimed with is questions.ai_commentary_models (completion waits for it)
--    and ai_commentary_depth; the wide view shows that set's comments.
-- 3. Allowance and credits: ai_credit_accounts (per user: allowance override, period,
--    used units, paid credits), ai_commentary_charges (one row per user, question and
--    depth: the unit a full-depth claim took, exactly once), ai_credit_ledger (every
--    change, append-only). A user reads their own account (ai_credit_balances) and ledger
--    rows only (RLS). ai_job_credit_costs: optional credit cost per ai_jobs kind, taken by
--    the insert, refunded when the job fails.
-- 4. Reprocessing only on content change: ai_commentary_content_hash(...) of what the
--    prompts use (question, options, official answer, subject), whitespace-normalised;
--    the hash and time of the last completed run per depth in ai_commentary_content_versions.
--    An edit re-queues a question only when the hash differs.

-- ------------------------------------------------------------------ questions
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_depth text;
ALTER TABLE questions ADD COLUMN IF NOT EXISTS ai_commentary_blocked_reason text;

-- 'blocked' joins the status vocabulary (the old system used it for private questions of
-- owners without entitlement). NOT VALID as in 0001.
ALTER TABLE questions DROP CONSTRAINT IF EXISTS questions_ai_commentary_status_check;
ALTER TABLE questions ADD CONSTRAINT questions_ai_commentary_status_check
    CHECK (ai_commentary_status IS NULL
           OR ai_commentary_status IN ('pending', 'processing', 'completed', 'failed', 'blocked'))
    NOT VALID;
CREATE INDEX IF NOT EXISTS questions_ai_commentary_blocked_idx
    ON questions (id) WHERE ai_commentary_status = 'blocked';

-- ------------------------------------------------------------------ settings
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS partial_models jsonb NOT NULL
    DEFAULT '["mistral", "deepseek"]';
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS full_allowance integer NOT NULL
    DEFAULT 100;
ALTER TABLE ai_commentary_settings ADD COLUMN IF NOT EXISTS allowance_period_days integer NOT NULL
    DEFAULT 30;

-- Validation of this migration's columns, in the style of worker_check_settings (0002,
-- 0017): a readable check_violation. partial_models holds model keys; a key that `models`
-- does not define (or that is not enabled) is simply not used, so removing a model from
-- `models` never makes the row invalid. A trigger of its own so the other settings checks stay where
-- they are; triggers fire by name, so this one runs after worker_check_settings.
CREATE OR REPLACE FUNCTION worker_check_settings_eligibility() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    k jsonb;
BEGIN
    IF jsonb_typeof(NEW.partial_models) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'ai_commentary_settings.partial_models must be a JSON array of model keys (got %)',
            NEW.partial_models USING ERRCODE = 'check_violation';
    END IF;
    FOR k IN SELECT value FROM jsonb_array_elements(NEW.partial_models) LOOP
        IF jsonb_typeof(k) IS DISTINCT FROM 'string' OR (k #>> '{}') !~ '^[a-z0-9_]+$' THEN
            RAISE EXCEPTION 'ai_commentary_settings.partial_models: % is not a model key (lower-case letters, digits, _)', k
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NEW.full_allowance IS NULL OR NEW.full_allowance < 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.full_allowance must be >= 0 (got %)', NEW.full_allowance
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.allowance_period_days IS NULL OR NEW.allowance_period_days <= 0 THEN
        RAISE EXCEPTION 'ai_commentary_settings.allowance_period_days must be a positive integer (got %)',
            NEW.allowance_period_days USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS worker_check_settings_eligibility ON ai_commentary_settings;
CREATE TRIGGER worker_check_settings_eligibility
    BEFORE INSERT OR UPDATE ON ai_commentary_settings
    FOR EACH ROW EXECUTE FUNCTION worker_check_settings_eligibility();

-- ------------------------------------------------------------------ the policy
CREATE OR REPLACE FUNCTION ai_commentary_eligibility_default(p_ids uuid[] DEFAULT NULL)
RETURNS TABLE (question_id uuid, depth text, reason text, priority integer, payer uuid)
LANGUAGE plpgsql STABLE ROWS 1000000 SET search_path FROM CURRENT AS $$
DECLARE
    has_rules boolean;
    has_profiles boolean;
    has_subscribers boolean;
    has_subscribed boolean;
    entitled text;
    scope text;
BEGIN
    scope := CASE WHEN p_ids IS NULL THEN 'q.ai_commentary_status = ''pending'''
                  ELSE 'q.id = ANY($1)' END;
    has_rules := EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass('questions') AND attname = 'visibility'
                           AND NOT attisdropped)
             AND EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass('questions') AND attname = 'user_id'
                           AND NOT attisdropped);
    has_profiles := (SELECT count(*) = 2 FROM pg_attribute
                     WHERE attrelid = to_regclass('profiles') AND NOT attisdropped
                       AND attname IN ('id', 'is_premium'));
    has_subscribers := (SELECT count(*) = 2 FROM pg_attribute
                        WHERE attrelid = to_regclass('subscribers') AND NOT attisdropped
                          AND attname IN ('user_id', 'subscription_end'));
    has_subscribed := has_subscribers AND EXISTS (
        SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('subscribers')
          AND attname = 'subscribed' AND NOT attisdropped);

    IF NOT has_rules OR NOT (has_profiles OR has_subscribers) THEN
        -- Everything full, oldest first (the claim breaks ties by queue time), nobody pays.
        RETURN QUERY EXECUTE format(
            'SELECT q.id, ''full''::text, NULL::text, 0, NULL::uuid FROM questions q WHERE %s',
            scope) USING p_ids;
        RETURN;
    END IF;

    -- The entitled users as one set, hash-joined to the questions (no per-row subquery:
    -- the app's subscribers table need not have an index on user_id).
    IF has_profiles THEN
        entitled := 'SELECT p.id FROM profiles p WHERE p.is_premium';
    END IF;
    IF has_subscribers THEN
        entitled := CASE WHEN has_profiles THEN entitled || ' UNION ' ELSE '' END
            || 'SELECT s.user_id FROM subscribers s'
            || ' WHERE (s.subscription_end IS NULL OR s.subscription_end > now())'
            || CASE WHEN has_subscribed THEN ' AND s.subscribed IS NOT FALSE' ELSE '' END;
    END IF;
    -- University and public questions first, full, nobody pays; private (and any other or
    -- missing visibility) only for an entitled owner, who pays for full depth.
    RETURN QUERY EXECUTE format($q$
        WITH entitled AS (%s)
        SELECT q.id,
               CASE WHEN v.shared OR v.entitled THEN 'full' ELSE 'blocked' END,
               CASE WHEN v.shared OR v.entitled THEN NULL
                    WHEN q.user_id IS NULL THEN 'private question without an owner (questions.user_id)'
                    ELSE format('private question: owner %%s has no premium profile or active subscription', q.user_id)
               END,
               CASE WHEN v.shared THEN 1 ELSE 0 END,
               CASE WHEN v.shared THEN NULL ELSE q.user_id END
        FROM questions q
        LEFT JOIN (SELECT DISTINCT id FROM entitled) e (id) ON e.id = q.user_id
        CROSS JOIN LATERAL (SELECT coalesce(q.visibility IN ('university', 'public'), false) AS shared,
                                   e.id IS NOT NULL AS entitled) v
        WHERE %s $q$, entitled, scope) USING p_ids;
END $$;

-- The function the worker calls. Replace it (same signature) to change the policy; the
-- default above stays available to call or compose. ROWS: the claim evaluates it over
-- every pending question, so the planner should expect many rows (a hash join, not one
-- index probe per row).
CREATE OR REPLACE FUNCTION ai_commentary_eligibility(p_ids uuid[] DEFAULT NULL)
RETURNS TABLE (question_id uuid, depth text, reason text, priority integer, payer uuid)
LANGUAGE sql STABLE ROWS 1000000 SET search_path FROM CURRENT AS $$
    SELECT * FROM ai_commentary_eligibility_default(p_ids)
$$;

-- ------------------------------------------------------------------ content hash
-- What the prompts use (worker.submit: question, options; the summary also subject and the
-- official answer), each trimmed with inner whitespace runs collapsed to one space: an
-- edit that only adds or removes blanks does not change it.
CREATE OR REPLACE FUNCTION ai_commentary_content_hash(
    question text, option_a text, option_b text, option_c text, option_d text, option_e text,
    correct_answer text, subject text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path FROM CURRENT AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        regexp_replace(btrim(coalesce(question, '')), '\s+', ' ', 'g'),
        regexp_replace(btrim(coalesce(option_a, '')), '\s+', ' ', 'g'),
        regexp_replace(btrim(coalesce(option_b, '')), '\s+', ' ', 'g'),
        regexp_replace(btrim(coalesce(option_c, '')), '\s+', ' ', 'g'),
        regexp_replace(btrim(coalesce(option_d, '')), '\s+', ' ', 'g'),
        regexp_replace(btrim(coalesce(option_e, '')), '\s+', ' ', 'g'),
        upper(btrim(coalesce(correct_answer, ''))),
        regexp_replace(btrim(coalesce(subject, '')), '\s+', ' ', 'g'))::text, 'UTF8')), 'hex')
$$;

CREATE TABLE IF NOT EXISTS ai_commentary_content_versions (
    question_id uuid NOT NULL,
    depth text NOT NULL CHECK (depth IN ('full', 'partial')),
    content_hash text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (question_id, depth)
);

-- ------------------------------------------------------------------ allowance and credits
CREATE TABLE IF NOT EXISTS ai_credit_accounts (
    user_id uuid PRIMARY KEY,
    allowance integer CHECK (allowance IS NULL OR allowance >= 0),        -- NULL: settings.full_allowance
    period_days integer CHECK (period_days IS NULL OR period_days > 0),   -- NULL: settings.allowance_period_days
    period_started_at timestamptz NOT NULL DEFAULT now(),
    allowance_used integer NOT NULL DEFAULT 0 CHECK (allowance_used >= 0),
    paid_credits integer NOT NULL DEFAULT 0 CHECK (paid_credits >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per user, question and depth: the unit a full-depth claim took. The primary key
-- makes the charge happen once; a refunded or outdated (content changed) charge is taken
-- again by updating the row.
CREATE TABLE IF NOT EXISTS ai_commentary_charges (
    user_id uuid NOT NULL,
    question_id uuid NOT NULL,
    depth text NOT NULL CHECK (depth IN ('full', 'partial')),
    content_hash text NOT NULL,
    pool text NOT NULL CHECK (pool IN ('allowance', 'paid')),
    state text NOT NULL CHECK (state IN ('consumed', 'refunded')),
    charged_at timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz,
    PRIMARY KEY (user_id, question_id, depth)
);
CREATE INDEX IF NOT EXISTS ai_commentary_charges_question_idx ON ai_commentary_charges (question_id);

CREATE TABLE IF NOT EXISTS ai_credit_ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL,
    delta integer NOT NULL,
    pool text NOT NULL CHECK (pool IN ('allowance', 'paid')),
    source text NOT NULL,   -- consume_full_question | refund_full_question | consume_job | refund_job | grant
    ref text,               -- <user>:<question> or job:<id>
    question_id uuid,
    depth text,
    job_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ai_credit_ledger_user_idx ON ai_credit_ledger (user_id, id);
-- A job is charged and refunded at most once.
CREATE UNIQUE INDEX IF NOT EXISTS ai_credit_ledger_job_once
    ON ai_credit_ledger (job_id, source) WHERE job_id IS NOT NULL;

-- The account row, created on first use and locked; its period rolled forward when over.
CREATE OR REPLACE FUNCTION worker_lock_credit_account(p_user uuid)
RETURNS ai_credit_accounts
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    a ai_credit_accounts;
    days integer;
BEGIN
    INSERT INTO ai_credit_accounts (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
    SELECT * INTO a FROM ai_credit_accounts WHERE user_id = p_user FOR UPDATE;
    days := coalesce(a.period_days,
                     (SELECT s.allowance_period_days FROM ai_commentary_settings s
                      ORDER BY s.updated_at DESC LIMIT 1), 30);
    IF now() >= a.period_started_at + make_interval(days => days) THEN
        UPDATE ai_credit_accounts
        SET period_started_at = a.period_started_at + make_interval(days => days * floor(
                extract(epoch FROM now() - a.period_started_at) / (days * 86400))::int),
            allowance_used = 0, updated_at = now()
        WHERE user_id = p_user
        RETURNING * INTO a;
    END IF;
    RETURN a;
END $$;

-- A full-depth claim of p_question paid by p_user: true when the unit is held (taken now,
-- or already taken for this content), false when the user has none left (the claim then
-- uses the partial set). Exactly once per user, question and depth (the charges key).
CREATE OR REPLACE FUNCTION worker_charge_full(p_user uuid, p_question uuid, p_hash text)
RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    a ai_credit_accounts;
    c ai_commentary_charges;
    cap integer;
    pool text;
BEGIN
    IF p_user IS NULL THEN
        RETURN true;
    END IF;
    a := worker_lock_credit_account(p_user);
    SELECT * INTO c FROM ai_commentary_charges
    WHERE user_id = p_user AND question_id = p_question AND depth = 'full' FOR UPDATE;
    IF FOUND AND c.state = 'consumed' AND c.content_hash = p_hash THEN
        RETURN true;  -- paid for this content already (an explicit re-run, a re-claim)
    END IF;
    cap := coalesce(a.allowance, (SELECT s.full_allowance FROM ai_commentary_settings s
                                  ORDER BY s.updated_at DESC LIMIT 1), 100);
    IF a.allowance_used < cap THEN
        pool := 'allowance';
        UPDATE ai_credit_accounts SET allowance_used = allowance_used + 1, updated_at = now()
        WHERE user_id = p_user;
    ELSIF a.paid_credits > 0 THEN
        pool := 'paid';
        UPDATE ai_credit_accounts SET paid_credits = paid_credits - 1, updated_at = now()
        WHERE user_id = p_user;
    ELSE
        RETURN false;
    END IF;
    INSERT INTO ai_commentary_charges AS ch (user_id, question_id, depth, content_hash, pool, state)
    VALUES (p_user, p_question, 'full', p_hash, pool, 'consumed')
    ON CONFLICT (user_id, question_id, depth) DO UPDATE
    SET content_hash = EXCLUDED.content_hash, pool = EXCLUDED.pool, state = 'consumed',
        charged_at = now(), refunded_at = NULL;
    INSERT INTO ai_credit_ledger (user_id, delta, pool, source, ref, question_id, depth)
    VALUES (p_user, -1, pool, 'consume_full_question', p_user || ':' || p_question, p_question, 'full');
    RETURN true;
END $$;

-- A question that ends failed gets its unit back, once (the charge's state). An allowance
-- unit goes back to the current period's allowance, a paid one to paid_credits.
CREATE OR REPLACE FUNCTION worker_refund_question(p_question uuid)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    c record;
    n integer := 0;
BEGIN
    FOR c IN
        SELECT user_id, depth, pool FROM ai_commentary_charges
        WHERE question_id = p_question AND state = 'consumed' ORDER BY user_id
    LOOP
        PERFORM worker_lock_credit_account(c.user_id);
        UPDATE ai_commentary_charges SET state = 'refunded', refunded_at = now()
        WHERE user_id = c.user_id AND question_id = p_question AND depth = c.depth
          AND state = 'consumed';
        IF c.pool = 'allowance' THEN
            UPDATE ai_credit_accounts
            SET allowance_used = greatest(allowance_used - 1, 0), updated_at = now()
            WHERE user_id = c.user_id;
        ELSE
            UPDATE ai_credit_accounts SET paid_credits = paid_credits + 1, updated_at = now()
            WHERE user_id = c.user_id;
        END IF;
        INSERT INTO ai_credit_ledger (user_id, delta, pool, source, ref, question_id, depth)
        VALUES (c.user_id, 1, c.pool, 'refund_full_question', c.user_id || ':' || p_question,
                p_question, c.depth);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Paid credits bought or granted by the operator (or the app's payment hook).
CREATE OR REPLACE FUNCTION ai_credit_grant(p_user uuid, p_credits integer, p_ref text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    left_now integer;
BEGIN
    IF p_credits IS NULL OR p_credits <= 0 THEN
        RAISE EXCEPTION 'ai_credit_grant: credits must be a positive integer (got %)', p_credits
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM worker_lock_credit_account(p_user);
    UPDATE ai_credit_accounts SET paid_credits = paid_credits + p_credits, updated_at = now()
    WHERE user_id = p_user RETURNING paid_credits INTO left_now;
    INSERT INTO ai_credit_ledger (user_id, delta, pool, source, ref)
    VALUES (p_user, p_credits, 'paid', 'grant', p_ref);
    RETURN left_now;
END $$;

-- The settings' allowance defaults, for the balance view: SECURITY DEFINER so an end user
-- reads these two numbers without any access to the settings row.
CREATE OR REPLACE FUNCTION worker_allowance_defaults(OUT full_allowance integer, OUT period_days integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT coalesce((SELECT s.full_allowance FROM ai_commentary_settings s ORDER BY s.updated_at DESC LIMIT 1), 100),
           coalesce((SELECT s.allowance_period_days FROM ai_commentary_settings s ORDER BY s.updated_at DESC LIMIT 1), 30)
$$;

-- Balance per user. security_invoker: the account table's RLS applies (own row only).
CREATE OR REPLACE VIEW ai_credit_balances WITH (security_invoker = on) AS
SELECT a.user_id, p.allowance, a.period_started_at, p.ends_at AS period_ends_at,
       p.used AS allowance_used, greatest(p.allowance - p.used, 0) AS allowance_left,
       a.paid_credits
FROM ai_credit_accounts a
CROSS JOIN worker_allowance_defaults() d
CROSS JOIN LATERAL (
    SELECT coalesce(a.allowance, d.full_allowance) AS allowance,
           a.period_started_at + make_interval(days => coalesce(a.period_days, d.period_days)) AS ends_at,
           CASE WHEN now() >= a.period_started_at + make_interval(days => coalesce(a.period_days, d.period_days))
                THEN 0 ELSE a.allowance_used END AS used
) p;

-- ------------------------------------------------------------------ question triggers
-- Re-queue on content change only (replaces 0007's version of this function).
CREATE OR REPLACE FUNCTION worker_questions_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    new_hash text;
    last_hash text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        -- Editing an enrolled question re-queues it (fresh attempts) when what the prompts
        -- use changed: compared with the content last completed at the question's depth,
        -- or, without such a record (in progress, failed, from before the install), with
        -- the content before this edit. Whitespace-only edits change nothing.
        IF OLD.ai_commentary_status IS NOT NULL
           AND NEW.ai_commentary_status IS NOT DISTINCT FROM OLD.ai_commentary_status
           AND (NEW.question, NEW.option_a, NEW.option_b, NEW.option_c, NEW.option_d, NEW.option_e,
                NEW.correct_answer, NEW.subject)
               IS DISTINCT FROM
               (OLD.question, OLD.option_a, OLD.option_b, OLD.option_c, OLD.option_d, OLD.option_e,
                OLD.correct_answer, OLD.subject)
        THEN
            new_hash := ai_commentary_content_hash(NEW.question, NEW.option_a, NEW.option_b,
                NEW.option_c, NEW.option_d, NEW.option_e, NEW.correct_answer, NEW.subject);
            IF OLD.ai_commentary_status = 'completed' THEN
                SELECT v.content_hash INTO last_hash FROM ai_commentary_content_versions v
                WHERE v.question_id = OLD.id AND v.depth = coalesce(OLD.ai_commentary_depth, 'full');
            END IF;
            IF new_hash IS DISTINCT FROM coalesce(last_hash, ai_commentary_content_hash(
                   OLD.question, OLD.option_a, OLD.option_b, OLD.option_c, OLD.option_d,
                   OLD.option_e, OLD.correct_answer, OLD.subject)) THEN
                NEW.ai_commentary_status := 'pending';
                NEW.ai_commentary_queued_at := now();
            END IF;
        END IF;
        IF NEW.ai_commentary_status = 'pending' AND OLD.ai_commentary_status IS DISTINCT FROM 'pending' THEN
            NEW.ai_commentary_attempts := 0;
            NEW.ai_commentary_error := NULL;
            NEW.ai_commentary_blocked_reason := NULL;
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

-- Completed: the content hash of this run at its depth. Failed: units back.
CREATE OR REPLACE FUNCTION worker_questions_settled() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.ai_commentary_status = 'completed' THEN
        INSERT INTO ai_commentary_content_versions AS v (question_id, depth, content_hash, processed_at)
        VALUES (NEW.id, coalesce(NEW.ai_commentary_depth, 'full'),
                ai_commentary_content_hash(NEW.question, NEW.option_a, NEW.option_b, NEW.option_c,
                    NEW.option_d, NEW.option_e, NEW.correct_answer, NEW.subject), now())
        ON CONFLICT (question_id, depth) DO UPDATE
        SET content_hash = EXCLUDED.content_hash, processed_at = EXCLUDED.processed_at;
    ELSIF NEW.ai_commentary_status = 'failed' THEN
        PERFORM worker_refund_question(NEW.id);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS worker_questions_settled ON questions;
CREATE TRIGGER worker_questions_settled
    AFTER UPDATE OF ai_commentary_status ON questions
    FOR EACH ROW
    WHEN (NEW.ai_commentary_status IN ('completed', 'failed')
          AND OLD.ai_commentary_status IS DISTINCT FROM NEW.ai_commentary_status)
    EXECUTE FUNCTION worker_questions_settled();

-- ------------------------------------------------------------------ ai_jobs credits
-- Optional cost per kind: a kind listed here costs its credits (paid credits of the job's
-- user), taken by the INSERT itself and refunded when the job fails.
CREATE TABLE IF NOT EXISTS ai_job_credit_costs (
    kind text PRIMARY KEY,
    credits integer NOT NULL CHECK (credits > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE ai_jobs ADD COLUMN IF NOT EXISTS credits_charged integer NOT NULL DEFAULT 0;

-- The job's owner pays: ai_jobs.owner_id (schema/0016: the signed-in user's auth.uid(),
-- set by ai_jobs_a_owner; else what the operator's server writes), a user uuid. SECURITY
-- DEFINER: an end user allowed to insert jobs needs no rights on the accounts. Named to
-- fire after ai_jobs_a_owner and ai_jobs_before_insert (triggers fire in name order): only
-- a job that passed validation is charged.
CREATE OR REPLACE FUNCTION ai_jobs_charge_credits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    cost integer;
    payer uuid;
    a ai_credit_accounts;
BEGIN
    NEW.credits_charged := 0;
    SELECT c.credits INTO cost FROM ai_job_credit_costs c WHERE c.kind = NEW.kind;
    IF cost IS NULL THEN
        RETURN NEW;
    END IF;
    IF NEW.owner_id IS NULL THEN
        RAISE check_violation USING MESSAGE = format(
            'ai_jobs: kind %L costs %s credit(s): owner_id (the paying user) is required', NEW.kind, cost);
    END IF;
    IF NEW.owner_id !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE check_violation USING MESSAGE = format(
            'ai_jobs: kind %L costs %s credit(s): owner_id %L is not a user id (uuid)', NEW.kind, cost, NEW.owner_id);
    END IF;
    payer := NEW.owner_id::uuid;
    a := worker_lock_credit_account(payer);
    IF a.paid_credits < cost THEN
        RAISE check_violation USING
            MESSAGE = format('ai_jobs: user %s has %s credit(s); kind %L costs %s',
                             payer, a.paid_credits, NEW.kind, cost),
            HINT = 'add credits with ai_credit_grant(user_id, credits)';
    END IF;
    UPDATE ai_credit_accounts SET paid_credits = paid_credits - cost, updated_at = now()
    WHERE user_id = payer;
    INSERT INTO ai_credit_ledger (user_id, delta, pool, source, ref, job_id)
    VALUES (payer, -cost, 'paid', 'consume_job', 'job:' || NEW.id, NEW.id);
    NEW.credits_charged := cost;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_charge_credits ON ai_jobs;
CREATE TRIGGER ai_jobs_charge_credits
    BEFORE INSERT ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION ai_jobs_charge_credits();

CREATE OR REPLACE FUNCTION ai_jobs_refund_credits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    payer uuid := NEW.owner_id::uuid;  -- a uuid: checked when the job was charged
BEGIN
    PERFORM worker_lock_credit_account(payer);
    INSERT INTO ai_credit_ledger (user_id, delta, pool, source, ref, job_id)
    VALUES (payer, NEW.credits_charged, 'paid', 'refund_job', 'job:' || NEW.id, NEW.id)
    ON CONFLICT (job_id, source) WHERE job_id IS NOT NULL DO NOTHING;
    IF FOUND THEN
        UPDATE ai_credit_accounts SET paid_credits = paid_credits + NEW.credits_charged,
            updated_at = now()
        WHERE user_id = payer;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_refund_credits ON ai_jobs;
CREATE TRIGGER ai_jobs_refund_credits
    AFTER UPDATE OF status ON ai_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed'
          AND NEW.credits_charged > 0 AND NEW.owner_id IS NOT NULL)
    EXECUTE FUNCTION ai_jobs_refund_credits();

-- ------------------------------------------------------------------ access
-- Closed like every object a migration creates (schema/0016 worker_secure: revoked from
-- PUBLIC, anon, authenticated; RLS on). The policies below let a signed-in user read their
-- own account and ledger rows (auth.uid(), through 0016's worker_caller_id) once the
-- operator grants the read (README "Who gets commentary, and who pays").
ALTER TABLE ai_credit_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_credit_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_commentary_charges ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_commentary_content_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_job_credit_costs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS worker_end_user_read ON ai_credit_accounts;
CREATE POLICY worker_end_user_read ON ai_credit_accounts FOR SELECT
    USING (user_id = (SELECT worker_caller_id()::uuid));
DROP POLICY IF EXISTS worker_end_user_read ON ai_credit_ledger;
CREATE POLICY worker_end_user_read ON ai_credit_ledger FOR SELECT
    USING (user_id = (SELECT worker_caller_id()::uuid));

-- ------------------------------------------------------------------ wide view
-- As 0008, showing only the comments of the set the question was claimed with (a question
-- last run at partial depth does not show older full-depth comments), plus its depth.
CREATE OR REPLACE VIEW ai_answer_comments_wide WITH (security_invoker = on) AS
SELECT
    c.question_id,
    max(c.chosen_answer) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_chosen_answer,
    max(c.general_comment) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_general_comment,
    max(c.comment_a) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_comment_a,
    max(c.comment_b) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_comment_b,
    max(c.comment_c) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_comment_c,
    max(c.comment_d) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_comment_d,
    max(c.comment_e) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_comment_e,
    max(c.model_version) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_model_version,
    max(c.regenerated_question) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_question,
    max(c.regenerated_option_a) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_option_a,
    max(c.regenerated_option_b) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_option_b,
    max(c.regenerated_option_c) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_option_c,
    max(c.regenerated_option_d) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_option_d,
    max(c.regenerated_option_e) FILTER (WHERE c.model_key = 'chatgpt') AS chatgpt_regenerated_option_e,
    max(c.chosen_answer) FILTER (WHERE c.model_key = 'gemini') AS gemini_chosen_answer,
    max(c.general_comment) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_general_comment,
    max(c.comment_a) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_comment_a,
    max(c.comment_b) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_comment_b,
    max(c.comment_c) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_comment_c,
    max(c.comment_d) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_comment_d,
    max(c.comment_e) FILTER (WHERE c.model_key = 'gemini') AS gemini_new_comment_e,
    max(c.model_version) FILTER (WHERE c.model_key = 'gemini') AS gemini_model_version,
    max(c.regenerated_question) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_question,
    max(c.regenerated_option_a) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_option_a,
    max(c.regenerated_option_b) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_option_b,
    max(c.regenerated_option_c) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_option_c,
    max(c.regenerated_option_d) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_option_d,
    max(c.regenerated_option_e) FILTER (WHERE c.model_key = 'gemini') AS gemini_regenerated_option_e,
    max(c.chosen_answer) FILTER (WHERE c.model_key = 'mistral') AS mistral_chosen_answer,
    max(c.general_comment) FILTER (WHERE c.model_key = 'mistral') AS mistral_general_comment,
    max(c.comment_a) FILTER (WHERE c.model_key = 'mistral') AS mistral_comment_a,
    max(c.comment_b) FILTER (WHERE c.model_key = 'mistral') AS mistral_comment_b,
    max(c.comment_c) FILTER (WHERE c.model_key = 'mistral') AS mistral_comment_c,
    max(c.comment_d) FILTER (WHERE c.model_key = 'mistral') AS mistral_comment_d,
    max(c.comment_e) FILTER (WHERE c.model_key = 'mistral') AS mistral_comment_e,
    max(c.model_version) FILTER (WHERE c.model_key = 'mistral') AS mistral_model_version,
    max(c.chosen_answer) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_chosen_answer,
    max(c.general_comment) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_general_comment,
    max(c.comment_a) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_comment_a,
    max(c.comment_b) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_comment_b,
    max(c.comment_c) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_comment_c,
    max(c.comment_d) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_comment_d,
    max(c.comment_e) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_comment_e,
    max(c.model_version) FILTER (WHERE c.model_key = 'perplexity') AS perplexity_model_version,
    max(c.chosen_answer) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_chosen_answer,
    max(c.general_comment) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_general_comment,
    max(c.comment_a) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_comment_a,
    max(c.comment_b) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_comment_b,
    max(c.comment_c) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_comment_c,
    max(c.comment_d) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_comment_d,
    max(c.comment_e) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_comment_e,
    max(c.model_version) FILTER (WHERE c.model_key = 'deepseek') AS deepseek_model_version,
    min(q.ai_commentary_status) AS processing_status,
    min(c.created_at) AS created_at,
    max(c.updated_at) AS updated_at,
    min(q.ai_commentary_depth) AS depth
FROM ai_answer_comments c
JOIN questions q ON q.id = c.question_id
WHERE q.ai_commentary_models IS NULL OR c.model_key = ANY (q.ai_commentary_models)
GROUP BY c.question_id;

-- The view now also reads questions.ai_commentary_models and ai_commentary_depth with the
-- reader's rights (security_invoker). A role that reads the view and has a column grant on
-- questions.ai_commentary_status (README's front-end read) keeps its read: it gets these
-- two worker columns too. A role with table-wide SELECT on questions has them already.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT a.rolname FROM pg_roles a
        WHERE a.rolname NOT LIKE 'pg\_%'
          AND has_table_privilege(a.oid, 'ai_answer_comments_wide', 'SELECT')
          AND has_column_privilege(a.oid, 'questions', 'ai_commentary_status', 'SELECT')
          AND NOT (has_column_privilege(a.oid, 'questions', 'ai_commentary_models', 'SELECT')
                   AND has_column_privilege(a.oid, 'questions', 'ai_commentary_depth', 'SELECT'))
    LOOP
        EXECUTE format('GRANT SELECT (ai_commentary_models, ai_commentary_depth) ON questions TO %I',
                       r.rolname);
        RAISE NOTICE 'ai-worker: % reads ai_answer_comments_wide: granted SELECT (ai_commentary_models, ai_commentary_depth) ON questions',
            r.rolname;
    END LOOP;
END $$;
