-- Supabase-safe by default (issue 11, parts 2 and 3).
--
-- On Supabase every table, sequence and function in `public` is granted to `anon` and
-- `authenticated` by default privileges, and PostgREST serves whatever they can reach. The
-- worker's objects hold other people's chats, prices, settings and a paid queue, so:
--
-- * Every object a migration file creates is recorded in worker_schema_objects by
--   `db migrate` (worker/migrate.py compares the catalog before and after each file, in the
--   file's own transaction) and locked down by worker_secure() before that transaction
--   commits: rights revoked from PUBLIC, anon and authenticated, Row Level Security on.
--   Objects the application had before the install (questions, ai_commentary_settings, ...
--   on a production database) are not the worker's: their grants and policies stay as the
--   application set them.
-- * On every migrate run worker_secure() also re-applies what CREATE OR REPLACE resets:
--   views are security_invoker, every function pins search_path = pg_catalog, <schema>,
--   pg_temp, and the functions an application's own INSERT runs through (trigger functions,
--   worker_defer_job) are SECURITY DEFINER, so the application's role needs no rights on
--   Procrastinate's tables. Later migration files (0017, ...) are covered without change.
-- * Why not ALTER DEFAULT PRIVILEGES: default privileges belong to the role that runs
--   migrate; on Supabase that is `postgres`, which also creates the application's own
--   tables. Revoking them would silently change the rights of every table the operator
--   creates later. Locking each new object inside the transaction that creates it gives the
--   worker's objects the same guarantee (never committed open) without touching the app's.
-- * The runtime role: `SELECT worker_grant_runtime('ai_worker')` (run by the owner) gives
--   a login role DML on the worker's tables and the app tables it writes, EXECUTE on its
--   functions and a worker_runtime policy on each table; worker_secure() keeps that true for
--   objects created by later migrations.
-- * End users (part 3): a signed-in Supabase user may submit chat jobs in their own
--   sessions through a route marked public_chat and read their own jobs, sessions and
--   messages. The policies are created here; nothing is granted until the operator runs
--   the statements in README "Security and roles".

-- ------------------------------------------------------------------ bookkeeping
CREATE TABLE IF NOT EXISTS worker_runtime_roles (
    role_name text PRIMARY KEY,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- Databases migrated before migrate.py kept worker_schema_objects: register what
-- Procrastinate and 0001-0014 created there (by name). questions, ai_commentary_settings,
-- ai_commentary_summaries and ai_commentary_batch_jobs are left out: on such a database we
-- cannot tell whether the application had them first, and closing an application's table
-- would break its front end (a NOTICE says so).
DO $$
DECLARE
    names text;
BEGIN
    INSERT INTO worker_schema_objects (kind, name, created_by)
    SELECT CASE WHEN c.relkind IN ('r', 'p', 'f') THEN 'table'
                WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'sequence' END,
           c.relname, '0016_security.sql (registered)'
    FROM pg_class c
    WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'worker_schema_objects'::regclass)
      AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
      AND (c.relname LIKE 'procrastinate\_%' OR c.relname IN (
          'ai_answer_comments', 'ai_chat_messages', 'ai_chat_sessions', 'ai_commentary_requests',
          'ai_job_templates', 'ai_jobs', 'ai_model_prices', 'ai_rate_limits', 'ai_rate_usage',
          'ai_realtime_settings', 'ai_routes', 'provider_credit_checks', 'provider_health',
          'provider_stops', 'worker_alert_keys', 'worker_alert_limiter', 'worker_alerts',
          'worker_errors', 'worker_schema_migrations', 'worker_schema_objects',
          'worker_task_runs', 'ai_commentary_summaries_legacy_duplicates',
          'ai_answer_comments_wide', 'ai_cost_batch_savings', 'ai_cost_by_model',
          'ai_cost_by_question', 'ai_cost_daily', 'ai_cost_ledger', 'ai_cost_unpriced',
          'ai_job_errors', 'ai_job_queue_position', 'ai_job_throughput', 'ai_session_stats',
          'ops_batches_in_flight', 'ops_errors_24h', 'ops_failed_last_hour', 'ops_latency',
          'ops_pending', 'ops_question_latency', 'ops_tokens_per_day',
          'ai_chat_messages_id_seq', 'ai_jobs_id_seq', 'provider_credit_checks_id_seq',
          'provider_stops_id_seq', 'worker_alerts_id_seq', 'worker_errors_id_seq',
          'worker_task_runs_id_seq'))
    ON CONFLICT (kind, name) DO NOTHING;
    INSERT INTO worker_schema_objects (kind, name, created_by)
    SELECT 'function', format('%s(%s)', p.proname, oidvectortypes(p.proargtypes)),
           '0016_security.sql (registered)'
    FROM pg_proc p
    WHERE p.pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'worker_schema_objects'::regclass)
      AND (p.proname LIKE 'procrastinate\_%' OR p.proname IN (
          'ai_jobs_before_insert', 'ai_jobs_requeued', 'ai_jobs_wake', 'ai_rate_acquire',
          'ai_rate_settle_tokens', 'worker_check_settings', 'worker_cost_at', 'worker_cost_usd',
          'worker_defer_job', 'worker_price', 'worker_provider_stop_cleared',
          'worker_questions_after_insert', 'worker_questions_after_update',
          'worker_questions_before_write', 'worker_resume_provider', 'worker_spent_usd_since'))
    ON CONFLICT (kind, name) DO NOTHING;
    SELECT string_agg(t.name, ', ') INTO names FROM unnest(ARRAY['questions', 'ai_commentary_settings',
        'ai_commentary_summaries', 'ai_commentary_batch_jobs']) t (name)
    WHERE to_regclass(t.name) IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM worker_schema_objects o WHERE o.kind = 'table' AND o.name = t.name);
    IF names IS NOT NULL THEN
        RAISE NOTICE 'ai-worker: % were not created by the worker and keep the grants and Row Level Security the application gave them (README "Security and roles")', names;
    END IF;
END $$;

-- ------------------------------------------------------------------ end-user ownership
-- owner_id: the end user a job or session belongs to. Filled from auth.uid() when a
-- signed-in Supabase user inserts; otherwise whatever the application sets (NULL: a
-- server-side session nobody but the worker and the operator sees).
ALTER TABLE ai_jobs ADD COLUMN IF NOT EXISTS owner_id text;
ALTER TABLE ai_chat_sessions ADD COLUMN IF NOT EXISTS owner_id text;
-- Routes signed-in users may use (provider and model are the operator's choice, never theirs).
ALTER TABLE ai_routes ADD COLUMN IF NOT EXISTS public_chat boolean NOT NULL DEFAULT false;
-- The per-session cap alone would let a user open session after session: each signed-in
-- user may also submit at most this many jobs in 24 hours (the operator pays for them).
ALTER TABLE ai_realtime_settings ADD COLUMN IF NOT EXISTS end_user_max_jobs_per_day integer
    NOT NULL DEFAULT 200 CHECK (end_user_max_jobs_per_day >= 0);
CREATE INDEX IF NOT EXISTS ai_jobs_owner_idx ON ai_jobs (owner_id, id) WHERE owner_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ai_chat_sessions_owner_idx ON ai_chat_sessions (owner_id) WHERE owner_id IS NOT NULL;

-- The signed-in end user of this request: auth.uid() (Supabase: the JWT's sub) when that
-- function exists and is callable, else NULL. SECURITY DEFINER (pinned path, by
-- worker_secure) so evaluating a policy never needs rights on schema auth.
CREATE OR REPLACE FUNCTION worker_caller_id() RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regprocedure('auth.uid()') IS NULL
       OR NOT has_function_privilege('auth.uid()', 'EXECUTE') THEN
        RETURN NULL;
    END IF;
    RETURN auth.uid()::text;
END $$;

-- The end-user path of ai_jobs, before the validation trigger (triggers fire in name
-- order: ai_jobs_a_owner < ai_jobs_before_insert). A signed-in user submits chats only:
-- in a session that is theirs (or new, then it becomes theirs), through a route marked
-- public_chat, without choosing provider, model, prompts, history or priority. The
-- validation and session cap of ai_jobs_before_insert then apply as to anyone.
CREATE OR REPLACE FUNCTION ai_jobs_owner_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    caller text := worker_caller_id();
    sess_owner text;
    day_cap integer;
    day_used integer;
BEGIN
    IF caller IS NOT NULL THEN
        IF NEW.owner_id IS NOT NULL AND NEW.owner_id <> caller THEN
            RAISE insufficient_privilege USING MESSAGE = 'ai_jobs: owner_id must be the signed-in user';
        END IF;
        NEW.owner_id := caller;
        IF NEW.kind IS DISTINCT FROM 'chat' THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: signed-in users may submit chat jobs only';
        END IF;
        IF NEW.session_id IS NULL THEN
            RAISE check_violation USING MESSAGE = 'ai_jobs: a chat needs a session_id';
        END IF;
        IF NEW.route IS NULL OR NOT EXISTS (
            SELECT 1 FROM ai_routes r WHERE r.name = NEW.route AND r.public_chat) THEN
            RAISE check_violation USING MESSAGE = format(
                'ai_jobs: route %L is not open to signed-in users (ai_routes.public_chat)', NEW.route);
        END IF;
        IF NEW.provider IS NOT NULL OR NEW.model IS NOT NULL OR NEW.system_prompt IS NOT NULL
           OR NEW.messages IS NOT NULL OR NEW.max_attempts IS NOT NULL
           OR NEW.priority IS DISTINCT FROM 0 THEN
            RAISE check_violation USING MESSAGE =
                'ai_jobs: provider, model, system_prompt, messages, priority and max_attempts come from the route';
        END IF;
        -- one user's inserts queue here, so two at once cannot both take the last slot
        PERFORM pg_advisory_xact_lock(hashtext('ai_jobs owner ' || caller));
        SELECT coalesce((SELECT s.end_user_max_jobs_per_day FROM ai_realtime_settings s WHERE s.id), 200)
            INTO day_cap;
        SELECT count(*) INTO day_used FROM ai_jobs j
        WHERE j.owner_id = caller AND j.created_at > now() - interval '24 hours';
        IF day_used >= day_cap THEN
            RAISE check_violation USING
                MESSAGE = format('ai_jobs: you have reached the limit of %s chats in 24 hours', day_cap),
                HINT = 'ai_realtime_settings.end_user_max_jobs_per_day';
        END IF;
    END IF;
    IF NEW.session_id IS NOT NULL THEN
        INSERT INTO ai_chat_sessions (id, owner_id) VALUES (NEW.session_id, NEW.owner_id)
        ON CONFLICT (id) DO NOTHING;
        SELECT s.owner_id INTO sess_owner FROM ai_chat_sessions s WHERE s.id = NEW.session_id;
        IF sess_owner IS DISTINCT FROM NEW.owner_id THEN
            RAISE insufficient_privilege USING MESSAGE = format(
                'ai_jobs: session %L belongs to another user', NEW.session_id);
        END IF;
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS ai_jobs_a_owner ON ai_jobs;
CREATE TRIGGER ai_jobs_a_owner
    BEFORE INSERT ON ai_jobs
    FOR EACH ROW EXECUTE FUNCTION ai_jobs_owner_check();

-- Policies of the end-user path (they open nothing by themselves: no grant exists until the
-- operator runs README's statements). (SELECT ...) makes the caller an init plan, computed
-- once per statement.
ALTER TABLE ai_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_chat_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_chat_messages ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS worker_end_user_read ON ai_jobs;
CREATE POLICY worker_end_user_read ON ai_jobs FOR SELECT
    USING (owner_id = (SELECT worker_caller_id()));
DROP POLICY IF EXISTS worker_end_user_insert ON ai_jobs;
CREATE POLICY worker_end_user_insert ON ai_jobs FOR INSERT
    WITH CHECK (owner_id = (SELECT worker_caller_id()) AND kind = 'chat' AND session_id IS NOT NULL);
DROP POLICY IF EXISTS worker_end_user_read ON ai_chat_sessions;
CREATE POLICY worker_end_user_read ON ai_chat_sessions FOR SELECT
    USING (owner_id = (SELECT worker_caller_id()));
DROP POLICY IF EXISTS worker_end_user_read ON ai_chat_messages;
CREATE POLICY worker_end_user_read ON ai_chat_messages FOR SELECT
    USING (EXISTS (SELECT 1 FROM ai_chat_sessions s
                   WHERE s.id = ai_chat_messages.session_id
                     AND s.owner_id = (SELECT worker_caller_id())));

-- ------------------------------------------------------------------ the lock-down
-- Idempotent; run by worker/migrate.py inside every migration file's transaction and by
-- worker_grant_runtime(). Needs the rights of the objects' owner (the role of db migrate).
CREATE OR REPLACE FUNCTION worker_secure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    registry regclass := to_regclass('worker_schema_objects');
    sch oid;
    sch_name text;
    path text;
    closed text;
    runtime text[];
    runtime_list text;
    objs worker_schema_objects[];
    o worker_schema_objects;
    e record;
    fn record;
    rel record;
    target oid;
    obj text;
    tables oid[] := '{}';
    pol_roles oid[];
    want_roles oid[];
BEGIN
    IF registry IS NULL THEN
        RAISE EXCEPTION 'worker_secure: worker_schema_objects is missing (run python -m worker db migrate)';
    END IF;
    SELECT c.relnamespace, n.nspname INTO sch, sch_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = registry;
    path := format('pg_catalog, %I, pg_temp', sch_name);
    SELECT string_agg(x, ', ') INTO closed
    FROM (SELECT 'PUBLIC' AS x
          UNION ALL
          SELECT quote_ident(r) FROM unnest(ARRAY['anon', 'authenticated']) r
          WHERE to_regrole(quote_ident(r)) IS NOT NULL) q;
    SELECT coalesce(array_agg(r.role_name ORDER BY r.role_name), '{}') INTO runtime
    FROM worker_runtime_roles r WHERE to_regrole(quote_ident(r.role_name)) IS NOT NULL;
    SELECT string_agg(quote_ident(x), ', ') INTO runtime_list FROM unnest(runtime) x;

    -- An array, not a cursor: the loop alters worker_schema_objects itself.
    SELECT coalesce(array_agg(x ORDER BY x.kind, x.name), '{}') INTO objs FROM worker_schema_objects x;
    FOREACH o IN ARRAY objs LOOP
        IF o.kind = 'function' THEN
            target := to_regprocedure(format('%I.%s', sch_name, o.name));
        ELSE
            target := to_regclass(format('%I.%I', sch_name, o.name));
        END IF;
        IF target IS NULL THEN  -- dropped by a later migration
            DELETE FROM worker_schema_objects WHERE kind = o.kind AND name = o.name;
            CONTINUE;
        END IF;
        obj := CASE WHEN o.kind = 'function' THEN target::regprocedure::text ELSE target::regclass::text END;

        -- 1. Newly created: close it (then re-open what the object it replaces had granted).
        IF o.secured_at IS NULL THEN
            EXECUTE format('REVOKE ALL ON %s %s FROM %s',
                CASE o.kind WHEN 'function' THEN 'ROUTINE' WHEN 'sequence' THEN 'SEQUENCE' ELSE 'TABLE' END,
                obj, closed);
            IF o.carry_acl IS NOT NULL THEN
                FOR e IN SELECT a.grantee, a.privilege_type FROM aclexplode(o.carry_acl) a
                         WHERE a.grantee <> (SELECT CASE WHEN o.kind = 'function'
                                                         THEN (SELECT proowner FROM pg_proc WHERE oid = target)
                                                         ELSE (SELECT relowner FROM pg_class WHERE oid = target) END)
                LOOP
                    BEGIN
                        EXECUTE format('GRANT %s ON %s %s TO %s', e.privilege_type,
                            CASE o.kind WHEN 'function' THEN 'ROUTINE' WHEN 'sequence' THEN 'SEQUENCE' ELSE 'TABLE' END,
                            obj, CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE e.grantee::regrole::text END);
                    EXCEPTION WHEN OTHERS THEN
                        RAISE WARNING 'ai-worker: could not carry % on % over to its successor: %',
                            e.privilege_type, o.name, SQLERRM;
                    END;
                END LOOP;
            END IF;
            UPDATE worker_schema_objects SET secured_at = now(), carry_acl = NULL
            WHERE kind = o.kind AND name = o.name;
        END IF;

        -- 2. Every run: the attributes CREATE OR REPLACE resets.
        IF o.kind = 'function' THEN
            SELECT p.prokind, p.prosecdef, p.proconfig, p.prorettype, p.proname INTO fn
            FROM pg_proc p WHERE p.oid = target;
            IF fn.prokind IN ('f', 'p') THEN
                IF NOT coalesce(('search_path=' || path) = ANY (fn.proconfig), false) THEN
                    EXECUTE format('ALTER ROUTINE %s SET search_path = %s', obj, path);
                END IF;
                IF (fn.prorettype = 'trigger'::regtype OR fn.proname IN ('worker_defer_job', 'worker_caller_id'))
                   AND NOT fn.prosecdef THEN
                    EXECUTE format('ALTER ROUTINE %s SECURITY DEFINER', obj);
                END IF;
            END IF;
        ELSE
            SELECT c.relkind, c.relrowsecurity, c.reloptions INTO rel FROM pg_class c WHERE c.oid = target;
            IF o.kind = 'table' THEN
                tables := tables || target;
                IF NOT rel.relrowsecurity THEN
                    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', obj);
                END IF;
            ELSIF rel.relkind = 'v' AND NOT coalesce(
                    'security_invoker=on' = ANY (rel.reloptions) OR 'security_invoker=true' = ANY (rel.reloptions),
                    false) THEN
                EXECUTE format('ALTER VIEW %s SET (security_invoker = on)', obj);
            END IF;
        END IF;

        -- 3. Every run: the runtime roles' rights (grants only, never revokes).
        IF runtime_list IS NOT NULL THEN
            IF o.kind = 'function' THEN
                EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %s', obj, runtime_list);
            ELSIF o.kind = 'sequence' THEN
                EXECUTE format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO %s', obj, runtime_list);
            ELSIF o.kind = 'view'
                  OR o.name IN ('worker_schema_migrations', 'worker_schema_objects', 'worker_runtime_roles') THEN
                EXECUTE format('GRANT SELECT ON %s TO %s', obj, runtime_list);
            ELSE
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s', obj, runtime_list);
            END IF;
        END IF;
    END LOOP;

    -- The application's tables the worker reads and writes (also when they are the app's).
    FOR target IN
        SELECT to_regclass(format('%I.%I', sch_name, t))
        FROM unnest(ARRAY['questions', 'ai_commentary_settings', 'ai_commentary_summaries',
                          'ai_commentary_batch_jobs']) t
        WHERE to_regclass(format('%I.%I', sch_name, t)) IS NOT NULL
    LOOP
        IF NOT target = ANY (tables) THEN
            tables := tables || target;
            IF runtime_list IS NOT NULL THEN
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s', target::regclass, runtime_list);
            END IF;
        END IF;
    END LOOP;
    IF runtime_list IS NOT NULL THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', sch_name, runtime_list);
    END IF;

    -- One worker_runtime policy per table: the runtime roles see and write every row.
    SELECT coalesce(array_agg(to_regrole(quote_ident(x))::oid ORDER BY 1), '{}') INTO want_roles
    FROM unnest(runtime) x;
    FOREACH target IN ARRAY tables LOOP
        SELECT array_agg(r ORDER BY r) INTO pol_roles
        FROM pg_policy p, unnest(p.polroles) r
        WHERE p.polrelid = target AND p.polname = 'worker_runtime';
        IF coalesce(pol_roles, '{}') IS DISTINCT FROM want_roles THEN
            IF pol_roles IS NOT NULL THEN
                EXECUTE format('DROP POLICY worker_runtime ON %s', target::regclass);
            END IF;
            IF runtime_list IS NOT NULL THEN
                EXECUTE format('CREATE POLICY worker_runtime ON %s FOR ALL TO %s USING (true) WITH CHECK (true)',
                    target::regclass, runtime_list);
            END IF;
        END IF;
    END LOOP;
END $$;

-- Make a login role the worker's runtime role: DML on the worker's tables and on the
-- application tables it writes, EXECUTE on its functions, every row through RLS. No DDL, no
-- ownership. Run by the owner (the role of db migrate); kept true by later migrations.
CREATE OR REPLACE FUNCTION worker_grant_runtime(p_role text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole(quote_ident(p_role)) IS NULL THEN
        RAISE EXCEPTION 'worker_grant_runtime: role % does not exist (CREATE ROLE % LOGIN PASSWORD ...)',
            quote_ident(p_role), quote_ident(p_role) USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO worker_runtime_roles (role_name) VALUES (p_role) ON CONFLICT (role_name) DO NOTHING;
    PERFORM worker_secure();
END $$;

-- Lock down what earlier files created (before the grants below, which it would revoke).
SELECT worker_secure();

-- ------------------------------------------------------------------ carried-over reads
-- On a production database the front end read the old wide ai_answer_comments (now
-- ai_answer_comments_legacy, kept whole with its grants and policies). Its successor, the
-- view ai_answer_comments_wide, reads the narrow ai_answer_comments with the caller's rights
-- (security_invoker), so each role that could read the old table gets SELECT on the view,
-- SELECT on the narrow table's columns the view shows (not its costs or tokens), and the old
-- table's read policies copied onto the narrow table. A policy whose expression names a
-- column the narrow table lacks cannot be copied: a WARNING names it, and that role reads
-- less, never more. The view's processing_status column reads questions: a role without
-- SELECT on questions.ai_commentary_status gets a WARNING with the statement to run.
DO $$
DECLARE
    legacy regclass := to_regclass('ai_answer_comments_legacy');
    cols text := 'question_id, model_key, chosen_answer, general_comment, comment_a, comment_b, '
                 'comment_c, comment_d, comment_e, model_version, regenerated_question, '
                 'regenerated_option_a, regenerated_option_b, regenerated_option_c, '
                 'regenerated_option_d, regenerated_option_e, created_at, updated_at';
    a record;
    p record;
    grantee text;
    roles text;
    rls_on boolean;
BEGIN
    IF legacy IS NULL OR EXISTS (
        SELECT 1 FROM worker_schema_objects WHERE kind = 'table' AND name = 'ai_answer_comments_legacy') THEN
        RETURN;
    END IF;
    SELECT relrowsecurity INTO rls_on FROM pg_class WHERE oid = legacy;
    FOR a IN SELECT DISTINCT x.grantee FROM pg_class c, aclexplode(c.relacl) x
             WHERE c.oid = legacy AND x.privilege_type = 'SELECT' AND x.grantee <> c.relowner LOOP
        grantee := CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END;
        EXECUTE format('GRANT SELECT ON ai_answer_comments_wide TO %s', grantee);
        EXECUTE format('GRANT SELECT (%s) ON ai_answer_comments TO %s', cols, grantee);
        IF a.grantee <> 0 AND NOT has_column_privilege(a.grantee, 'questions', 'ai_commentary_status', 'SELECT') THEN
            RAISE WARNING 'ai-worker: % read ai_answer_comments but cannot read questions; to keep its reads through ai_answer_comments_wide run: GRANT SELECT (id, ai_commentary_status) ON questions TO %',
                grantee, grantee;
        END IF;
        IF NOT rls_on THEN  -- the old table had no RLS: this role read every row
            EXECUTE format('DROP POLICY IF EXISTS %I ON ai_answer_comments', 'legacy_read_' || md5(grantee));
            EXECUTE format('CREATE POLICY %I ON ai_answer_comments FOR SELECT TO %s USING (true)',
                           'legacy_read_' || md5(grantee), grantee);
        END IF;
    END LOOP;
    IF rls_on THEN
        FOR p IN SELECT pol.*, pg_get_expr(pol.polqual, pol.polrelid) AS qual
                 FROM pg_policy pol WHERE pol.polrelid = legacy AND pol.polcmd IN ('r', '*') LOOP
            IF p.qual IS NULL THEN
                CONTINUE;
            END IF;
            SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END, ', ') INTO roles
            FROM unnest(p.polroles) r;
            BEGIN
                EXECUTE format('DROP POLICY IF EXISTS %I ON ai_answer_comments', 'legacy_' || p.polname);
                EXECUTE format('CREATE POLICY %I ON ai_answer_comments AS %s FOR SELECT TO %s USING (%s)',
                    'legacy_' || p.polname,
                    CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END, roles,
                    -- a correlated subquery names the old table: point it at the new one
                    replace(p.qual, 'ai_answer_comments_legacy.', 'ai_answer_comments.'));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'ai-worker: policy % of the old ai_answer_comments could not be copied to the new table (%); its roles read less through ai_answer_comments_wide until you write an equivalent policy',
                    p.polname, SQLERRM;
            END;
        END LOOP;
    END IF;
END $$;

