-- Named queries of the commentary pipeline (claim → submit → poll → ingest → settle).
-- Loaded by worker.queries; every value is a bind parameter.

-- name: read_settings
SELECT * FROM ai_commentary_settings ORDER BY updated_at DESC LIMIT 1;

-- name: claim_pending
-- Atomic claim (failure mode 2): one statement selects with SKIP LOCKED and marks. Order:
-- the policy's priority (schema/0021 ai_commentary_eligibility, higher first), then queue
-- time. A row without queued_at (written before the install, or with triggers off) was
-- queued long ago: it comes first within its priority and is due at once (schema/0015).
-- Each claim is one attempt of the question (ai_commentary_attempts; a re-queue resets it).
-- The policy is evaluated once per claim, over the pending questions: due ones it blocks
-- leave the queue with its reason (the tick's unblock_entitled brings them back).
-- Depth: a full-depth question with a payer takes one unit of the payer's allowance or
-- credits (worker_charge_full, in this transaction; by payer, so concurrent claims lock
-- accounts in one order, then in claim order, so a payer's oldest questions get the full
-- units); with none left it gets the partial set. A partial question when no partial model
-- is enabled is blocked with the reason.
WITH e AS MATERIALIZED (
    SELECT * FROM ai_commentary_eligibility(NULL)
), to_block AS (
    SELECT q.id, e.reason FROM questions q JOIN e ON e.question_id = q.id
    WHERE q.ai_commentary_status = 'pending' AND e.depth NOT IN ('full', 'partial')
      AND coalesce(q.ai_commentary_queued_at, '-infinity'::timestamptz)
          <= now() - make_interval(mins => %(delay_minutes)s)
    FOR UPDATE OF q SKIP LOCKED
), blocked AS (
    UPDATE questions q
    SET ai_commentary_status = 'blocked',
        ai_commentary_blocked_reason = coalesce(b.reason, 'blocked by ai_commentary_eligibility')
    FROM to_block b
    WHERE q.id = b.id
), candidates AS MATERIALIZED (
    -- The first questions in claim order, sorted without locks (a bounded top-N sort); a
    -- margin beyond the limit for rows a concurrent claim holds (SKIP LOCKED below).
    SELECT q.id, e.depth, e.payer, e.priority,
           coalesce(q.ai_commentary_queued_at, '-infinity'::timestamptz) AS queued_at
    FROM questions q
    JOIN e ON e.question_id = q.id
    WHERE q.ai_commentary_status = 'pending' AND e.depth IN ('full', 'partial')
      AND coalesce(q.ai_commentary_queued_at, '-infinity'::timestamptz)
          <= now() - make_interval(mins => %(delay_minutes)s)
    ORDER BY e.priority DESC, 5, q.id
    LIMIT 4 * %(limit)s + 100
), picked AS MATERIALIZED (
    SELECT c.* FROM candidates c
    JOIN questions q ON q.id = c.id
    WHERE q.ai_commentary_status = 'pending'
    ORDER BY c.priority DESC, c.queued_at, c.id
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
), charged AS MATERIALIZED (
    SELECT s.id,
           CASE WHEN s.depth = 'full' AND worker_charge_full(s.payer, s.id,
                    ai_commentary_content_hash(s.question, s.option_a, s.option_b, s.option_c,
                        s.option_d, s.option_e, s.correct_answer, s.subject))
                THEN 'full' ELSE 'partial' END AS depth
    FROM (SELECT p.id, p.depth, p.payer, x.question, x.option_a, x.option_b, x.option_c,
                 x.option_d, x.option_e, x.correct_answer, x.subject
          FROM picked p JOIN questions x ON x.id = p.id
          ORDER BY p.payer NULLS FIRST, p.priority DESC, p.queued_at, p.id
          OFFSET 0) s
)
UPDATE questions q
SET ai_commentary_status = CASE WHEN c.depth = 'partial'
                                     AND cardinality(%(partial_models)s::text[]) = 0
                                THEN 'blocked' ELSE 'processing' END,
    ai_commentary_blocked_reason = CASE WHEN c.depth = 'partial'
                                             AND cardinality(%(partial_models)s::text[]) = 0
                                        THEN 'partial depth, but no model of ai_commentary_settings.partial_models is enabled' END,
    ai_commentary_claimed_at = now(),
    ai_commentary_attempts = q.ai_commentary_attempts + 1,
    ai_commentary_depth = c.depth,
    ai_commentary_models = CASE WHEN c.depth = 'full' THEN %(models)s::text[]
                                ELSE %(partial_models)s::text[] END,
    ai_commentary_error = NULL
FROM charged c
WHERE q.id = c.id
RETURNING q.id, q.ai_commentary_status AS status, c.depth;

-- name: create_claimed_requests
-- One request per model of the set each question was claimed with, plus its summary.
INSERT INTO ai_commentary_requests (question_id, model_key, stage, status)
SELECT q.id, m, CASE WHEN m = 'summary' THEN 'summary' ELSE 'comment' END, 'waiting'
FROM questions q
CROSS JOIN LATERAL unnest(q.ai_commentary_models || '{summary}'::text[]) AS m
WHERE q.id = ANY(%(ids)s::uuid[])
ON CONFLICT (question_id, model_key) DO NOTHING;

-- name: unblock_entitled
-- Blocked questions the policy no longer blocks (the owner became entitled, the policy
-- changed) go back to pending; the questions trigger wakes submit. Run by the tick.
WITH e AS MATERIALIZED (
    SELECT question_id FROM ai_commentary_eligibility(
        ARRAY(SELECT id FROM questions WHERE ai_commentary_status = 'blocked'))
    WHERE depth <> 'blocked'
), locked AS (
    SELECT q.id FROM questions q JOIN e ON e.question_id = q.id
    WHERE q.ai_commentary_status = 'blocked'
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE questions q
SET ai_commentary_status = 'pending', ai_commentary_blocked_reason = NULL
FROM locked
WHERE q.id = locked.id
RETURNING q.id;

-- name: claim_summary_missing
-- Completed questions that have model comments but no summary (e.g. from the old system).
WITH picked AS (
    SELECT q.id FROM questions q
    WHERE q.ai_commentary_status = 'completed'
      AND NOT EXISTS (SELECT 1 FROM ai_commentary_summaries s WHERE s.question_id = q.id)
      AND EXISTS (SELECT 1 FROM ai_answer_comments c WHERE c.question_id = q.id)
      AND NOT EXISTS (SELECT 1 FROM ai_commentary_requests r
                      WHERE r.question_id = q.id AND r.model_key = 'summary' AND r.status = 'failed')
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE questions q
SET ai_commentary_status = 'processing',
    ai_commentary_claimed_at = now(),
    ai_commentary_attempts = q.ai_commentary_attempts + 1,
    ai_commentary_models = (SELECT array_agg(c.model_key ORDER BY c.model_key)
                            FROM ai_answer_comments c WHERE c.question_id = q.id)
FROM picked
WHERE q.id = picked.id
RETURNING q.id;

-- name: next_pending_due
-- A pending row without queued_at is due now (see claim_pending).
SELECT CASE WHEN m = '-infinity' THEN now() ELSE m + make_interval(mins => %(delay_minutes)s) END
       AS due
FROM (SELECT min(coalesce(ai_commentary_queued_at, '-infinity'::timestamptz)) AS m
      FROM questions WHERE ai_commentary_status = 'pending') p;

-- name: reset_requests
-- A (re)claimed question starts over: its old request rows go, new ones wait.
DELETE FROM ai_commentary_requests WHERE question_id = ANY(%(ids)s::uuid[]);

-- name: create_requests
INSERT INTO ai_commentary_requests (question_id, model_key, stage, status)
SELECT qid, m, CASE WHEN m = 'summary' THEN 'summary' ELSE 'comment' END, 'waiting'
FROM unnest(%(ids)s::uuid[]) AS qid
CROSS JOIN unnest(%(models)s::text[]) AS m
ON CONFLICT (question_id, model_key) DO NOTHING;

-- name: drop_disabled_waiting
-- A model switched off no longer holds up questions that still wait for it.
WITH gone AS (
    DELETE FROM ai_commentary_requests r
    WHERE r.status = 'waiting' AND r.stage = 'comment'
      AND NOT (r.model_key = ANY(%(enabled)s::text[]))
    RETURNING r.question_id, r.model_key
)
UPDATE questions q
SET ai_commentary_models = array_remove(q.ai_commentary_models, gone.model_key)
FROM gone WHERE q.id = gone.question_id
RETURNING q.id;

-- name: waiting_model_keys
SELECT DISTINCT r.model_key
FROM ai_commentary_requests r
WHERE r.status = 'waiting';

-- name: take_waiting
-- Requests of one model ready to send: comment requests of claimed questions, and summary
-- requests whose comments all succeeded. Locked so concurrent submits never share a row.
SELECT r.question_id, r.model_key, q.question, q.option_a, q.option_b, q.option_c,
       q.option_d, q.option_e, q.subject, q.correct_answer
FROM ai_commentary_requests r
JOIN questions q ON q.id = r.question_id
WHERE r.model_key = %(model_key)s
  AND r.status = 'waiting'
  AND q.ai_commentary_status = 'processing'
  AND (r.stage = 'comment'
       OR NOT EXISTS (SELECT 1 FROM ai_commentary_requests o
                      WHERE o.question_id = r.question_id AND o.stage = 'comment'
                        AND o.status <> 'succeeded'))
ORDER BY r.created_at, r.question_id
LIMIT %(limit)s
FOR UPDATE OF r SKIP LOCKED;

-- name: fail_questions
-- Bad input (issue #5 item 8, worker.commentary.question_input): a question that cannot be sent fails
-- at once with its reason; its waiting requests fail too and are never sent. Never waits
-- for a lock (SKIP LOCKED): submits of other models may judge the same question at the same
-- time, each fails the requests it holds, and one of them fails the question. Returns the
-- questions failed here.
WITH bad AS (
    SELECT b.id, left('bad question: ' || b.reason, 2000) AS reason
    FROM unnest(%(ids)s::uuid[], %(reasons)s::text[]) AS b(id, reason)
), reqs AS (
    SELECT r.question_id, r.model_key
    FROM ai_commentary_requests r
    WHERE r.question_id IN (SELECT id FROM bad) AND r.status = 'waiting'
    FOR UPDATE SKIP LOCKED
), failed_reqs AS (
    UPDATE ai_commentary_requests r
    SET status = 'failed', last_error = bad.reason, claimed_by = NULL, claimed_at = NULL,
        batch_job_id = NULL, updated_at = now()
    FROM reqs JOIN bad ON bad.id = reqs.question_id
    WHERE r.question_id = reqs.question_id AND r.model_key = reqs.model_key
), qs AS (
    SELECT q.id FROM questions q
    WHERE q.id IN (SELECT id FROM bad) AND q.ai_commentary_status = 'processing'
    FOR UPDATE SKIP LOCKED
)
UPDATE questions q
SET ai_commentary_status = 'failed', ai_commentary_processed_at = now(),
    ai_commentary_error = bad.reason
FROM qs JOIN bad ON bad.id = qs.id
WHERE q.id = qs.id
RETURNING q.id;

-- name: comments_for_summary
SELECT question_id, model_key, chosen_answer, general_comment,
       comment_a, comment_b, comment_c, comment_d, comment_e
FROM ai_answer_comments
WHERE question_id = ANY(%(ids)s::uuid[]);

-- name: insert_batch_intent
-- The intent is recorded before the provider batch exists (failure mode 4): no batch_id yet
-- (schema/0015 relaxes the production NOT NULL). status keeps the old UI's vocabulary
-- ('pending' until the provider answers, then its raw state); state is the worker's own.
-- On a production table every NOT NULL column not named here has a default (schema/0015).
INSERT INTO ai_commentary_batch_jobs
    (id, provider, status, state, stage, model_key, model_name, question_ids, request_count)
VALUES (%(id)s, %(provider)s, 'pending', 'submitting', %(stage)s, %(model_key)s,
        %(model_name)s, %(question_ids)s::uuid[], %(request_count)s);

-- name: mark_submitted
UPDATE ai_commentary_requests
SET status = 'submitted', claimed_by = %(owner)s, claimed_at = now(),
    batch_job_id = %(batch_job_id)s, updated_at = now()
WHERE model_key = %(model_key)s AND question_id = ANY(%(ids)s::uuid[]) AND status = 'waiting';

-- name: batch_created
UPDATE ai_commentary_batch_jobs
SET batch_id = %(batch_id)s, input_file_id = %(input_file_id)s, status = %(raw_state)s,
    state = 'in_flight', submitted_at = now(), next_poll_at = now() + make_interval(secs => %(first_poll)s),
    error = NULL, updated_at = now()
WHERE id = %(id)s AND state = 'submitting';

-- name: batch_abandoned
-- The provider never created the batch: its requests wait for the next one.
WITH job AS (
    UPDATE ai_commentary_batch_jobs
    SET state = 'abandoned', status = 'failed', error = %(error)s,
        finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND state = 'submitting'
    RETURNING id
)
UPDATE ai_commentary_requests r
SET status = 'waiting', claimed_by = NULL, claimed_at = NULL, batch_job_id = NULL,
    last_error = %(error)s, updated_at = now()
FROM job
WHERE r.claimed_by = job.id::text AND r.status = 'submitted';

-- name: lock_batch
-- The columns of worker.commentary.rows.BatchJob, in its order.
SELECT id, provider, model_key, model_name, batch_id, state, status, poll_count, created_at,
       stage, request_count
FROM ai_commentary_batch_jobs WHERE id = %(id)s FOR UPDATE SKIP LOCKED;

-- name: batch_still_running
UPDATE ai_commentary_batch_jobs
SET status = %(raw_state)s, poll_count = poll_count + 1, last_polled_at = now(),
    next_poll_at = now() + make_interval(secs => %(delay)s), updated_at = now()
WHERE id = %(id)s;

-- name: batch_finished
UPDATE ai_commentary_batch_jobs
SET status = %(raw_state)s, state = %(state)s, poll_count = poll_count + 1,
    last_polled_at = now(), finished_at = coalesce(finished_at, now()), ingested_at = now(),
    output_file_id = %(output_file_id)s, error_file_id = %(error_file_id)s,
    succeeded_count = %(succeeded)s, failed_count = %(failed)s, missing_count = %(missing)s,
    input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s,
    error = %(error)s, next_poll_at = NULL, updated_at = now()
WHERE id = %(id)s;

-- name: create_ingest_table
CREATE TEMP TABLE IF NOT EXISTS worker_ingest_lines (
    question_id uuid NOT NULL,
    ok boolean NOT NULL,
    error text,
    chosen_answer text,
    general_comment text,
    comment_a text, comment_b text, comment_c text, comment_d text, comment_e text,
    regenerated_question text,
    regenerated_option_a text, regenerated_option_b text, regenerated_option_c text,
    regenerated_option_d text, regenerated_option_e text,
    model_agreement_analysis text,
    input_tokens integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    model_version text,
    -- false: the line failed for a batch-level cause (expiry, cancel): no attempt spent
    charge boolean NOT NULL DEFAULT true,
    -- true: the request fails now, attempts left or not (refusal, truncation, ...)
    final boolean NOT NULL DEFAULT false
) ON COMMIT DELETE ROWS;

-- name: copy_ingest_lines
COPY worker_ingest_lines (question_id, ok, error, chosen_answer, general_comment,
    comment_a, comment_b, comment_c, comment_d, comment_e, regenerated_question,
    regenerated_option_a, regenerated_option_b, regenerated_option_c, regenerated_option_d,
    regenerated_option_e, model_agreement_analysis, input_tokens, output_tokens,
    model_version, charge, final) FROM STDIN;

-- name: upsert_comments
-- Idempotent writes (failure mode 3): one row per question and model, only for requests
-- this batch (or instant call) still owns. The price is read once (schema/0013).
WITH price AS MATERIALIZED (
    SELECT * FROM worker_price(%(provider)s, %(model_name)s, %(batch_priced)s))
INSERT INTO ai_answer_comments AS c (
    question_id, model_key, chosen_answer, general_comment,
    comment_a, comment_b, comment_c, comment_d, comment_e,
    regenerated_question, regenerated_option_a, regenerated_option_b, regenerated_option_c,
    regenerated_option_d, regenerated_option_e,
    provider, model_name, model_version, prompt_version, batch_job_id,
    input_tokens, output_tokens, cost_usd, batch_priced, source)
SELECT l.question_id, %(model_key)s, l.chosen_answer, l.general_comment,
       l.comment_a, l.comment_b, l.comment_c, l.comment_d, l.comment_e,
       l.regenerated_question, l.regenerated_option_a, l.regenerated_option_b,
       l.regenerated_option_c, l.regenerated_option_d, l.regenerated_option_e,
       %(provider)s, %(model_name)s, l.model_version, %(prompt_version)s, %(batch_job_id)s,
       l.input_tokens, l.output_tokens,
       worker_cost_at(l.input_tokens, l.output_tokens, w.input_usd_per_mtok,
                      w.output_usd_per_mtok, w.factor),
       %(batch_priced)s, 'worker'
FROM worker_ingest_lines l
LEFT JOIN price w ON true
JOIN ai_commentary_requests r
  ON r.question_id = l.question_id AND r.model_key = %(model_key)s
 AND r.status = 'submitted' AND r.claimed_by = %(owner)s
WHERE l.ok
ON CONFLICT (question_id, model_key) DO UPDATE SET
    chosen_answer = EXCLUDED.chosen_answer, general_comment = EXCLUDED.general_comment,
    comment_a = EXCLUDED.comment_a, comment_b = EXCLUDED.comment_b,
    comment_c = EXCLUDED.comment_c, comment_d = EXCLUDED.comment_d,
    comment_e = EXCLUDED.comment_e, regenerated_question = EXCLUDED.regenerated_question,
    regenerated_option_a = EXCLUDED.regenerated_option_a,
    regenerated_option_b = EXCLUDED.regenerated_option_b,
    regenerated_option_c = EXCLUDED.regenerated_option_c,
    regenerated_option_d = EXCLUDED.regenerated_option_d,
    regenerated_option_e = EXCLUDED.regenerated_option_e,
    provider = EXCLUDED.provider, model_name = EXCLUDED.model_name,
    model_version = EXCLUDED.model_version, prompt_version = EXCLUDED.prompt_version,
    batch_job_id = EXCLUDED.batch_job_id, input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,
    batch_priced = EXCLUDED.batch_priced, source = EXCLUDED.source, updated_at = now();

-- name: upsert_summaries
-- Keep schema/0015's list of the columns filled here in step with this statement.
WITH price AS MATERIALIZED (
    SELECT * FROM worker_price(%(provider)s, %(model_name)s, %(batch_priced)s))
INSERT INTO ai_commentary_summaries AS s (
    question_id, summary_general_comment, summary_comment_a, summary_comment_b,
    summary_comment_c, summary_comment_d, summary_comment_e, model_agreement_analysis,
    provider, model_name, model_version, prompt_version, batch_job_id,
    input_tokens, output_tokens, cost_usd, batch_priced)
SELECT l.question_id, l.general_comment, l.comment_a, l.comment_b, l.comment_c,
       l.comment_d, l.comment_e, l.model_agreement_analysis,
       %(provider)s, %(model_name)s, l.model_version, %(prompt_version)s, %(batch_job_id)s,
       l.input_tokens, l.output_tokens,
       worker_cost_at(l.input_tokens, l.output_tokens, w.input_usd_per_mtok,
                      w.output_usd_per_mtok, w.factor),
       %(batch_priced)s
FROM worker_ingest_lines l
LEFT JOIN price w ON true
JOIN ai_commentary_requests r
  ON r.question_id = l.question_id AND r.model_key = %(model_key)s
 AND r.status = 'submitted' AND r.claimed_by = %(owner)s
WHERE l.ok
ON CONFLICT (question_id) DO UPDATE SET
    summary_general_comment = EXCLUDED.summary_general_comment,
    summary_comment_a = EXCLUDED.summary_comment_a, summary_comment_b = EXCLUDED.summary_comment_b,
    summary_comment_c = EXCLUDED.summary_comment_c, summary_comment_d = EXCLUDED.summary_comment_d,
    summary_comment_e = EXCLUDED.summary_comment_e,
    model_agreement_analysis = EXCLUDED.model_agreement_analysis,
    provider = EXCLUDED.provider, model_name = EXCLUDED.model_name,
    model_version = EXCLUDED.model_version, prompt_version = EXCLUDED.prompt_version,
    batch_job_id = EXCLUDED.batch_job_id, input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd,
    batch_priced = EXCLUDED.batch_priced, updated_at = now();

-- name: unowned_lines
-- Staged lines whose request this owner does not hold (never in this batch, or settled):
-- how many, how many of them were answers, and a few of their ids for the error row.
SELECT count(*) AS n, count(*) FILTER (WHERE l.ok) AS ok,
       (array_agg('q-' || l.question_id || '-' || %(model_key)s ORDER BY l.question_id))[1:3]
           AS examples
FROM worker_ingest_lines l
WHERE NOT EXISTS (SELECT 1 FROM ai_commentary_requests r
                  WHERE r.question_id = l.question_id AND r.model_key = %(model_key)s
                    AND r.status = 'submitted' AND r.claimed_by = %(owner)s);

-- name: mark_succeeded
UPDATE ai_commentary_requests r
SET status = 'succeeded', last_error = NULL, claimed_by = NULL, updated_at = now()
FROM worker_ingest_lines l
WHERE l.ok AND r.question_id = l.question_id AND r.model_key = %(model_key)s
  AND r.status = 'submitted' AND r.claimed_by = %(owner)s;

-- name: mark_line_failed
-- A failed line counts an attempt; after max_attempts the request (and so the question)
-- fails with the reason. Raw error text stays here, never in comment columns (mode 10).
-- A line failed for a batch-level cause (l.charge false: expiry, cancel) is a free retry,
-- bounded by max_free_retries (schema/0018). A final line (l.final: a refusal, a truncated
-- answer, a context too long - retrying the same request cannot help) fails it at once.
UPDATE ai_commentary_requests r
SET attempts = r.attempts + c.n,
    free_retries = r.free_retries + c.free,
    status = CASE WHEN l.final OR r.attempts + c.n >= %(max_attempts)s
                    OR r.free_retries + c.free >= %(max_free_retries)s
                  THEN 'failed' ELSE 'waiting' END,
    last_error = l.error, claimed_by = NULL, claimed_at = NULL, batch_job_id = NULL,
    updated_at = now()
FROM worker_ingest_lines l,
     LATERAL (SELECT CASE WHEN l.charge THEN %(count_attempt)s::int ELSE 0 END AS n,
                     CASE WHEN l.charge THEN 0 ELSE 1 END AS free) c
WHERE NOT l.ok AND r.question_id = l.question_id AND r.model_key = %(model_key)s
  AND r.status = 'submitted' AND r.claimed_by = %(owner)s;

-- name: mark_missing
-- Whatever this owner still holds had no line at all: treated as failed (mode 6), with an
-- attempt, or - when the batch's cause says nothing about the requests (charge_missing
-- false: limits, provider errors, expiry, cancel) only a free retry (schema/0018).
UPDATE ai_commentary_requests r
SET attempts = r.attempts + c.n,
    free_retries = r.free_retries + c.free,
    status = CASE WHEN r.attempts + c.n >= %(max_attempts)s
                    OR r.free_retries + c.free >= %(max_free_retries)s
                  THEN 'failed' ELSE 'waiting' END,
    last_error = %(error)s, claimed_by = NULL, claimed_at = NULL, batch_job_id = NULL,
    updated_at = now()
FROM (SELECT CASE WHEN %(charge_missing)s THEN %(count_attempt)s::int ELSE 0 END AS n,
             CASE WHEN %(charge_missing)s THEN 0 ELSE 1 END AS free) c
WHERE r.claimed_by = %(owner)s AND r.status = 'submitted'
RETURNING r.question_id;

-- name: settle_questions
-- A question is completed when every request it has succeeded, failed when one gave up.
WITH st AS (
    SELECT r.question_id,
           bool_and(r.status = 'succeeded') AS all_ok,
           bool_or(r.status = 'failed') AS any_failed,
           string_agg(r.model_key || ': ' || coalesce(r.last_error, 'failed'), '; '
                      ORDER BY r.model_key) FILTER (WHERE r.status = 'failed') AS reason
    FROM ai_commentary_requests r
    WHERE r.question_id = ANY(%(ids)s::uuid[])
    GROUP BY r.question_id
), settled AS (
    UPDATE questions q
    SET ai_commentary_status = CASE WHEN st.any_failed THEN 'failed' ELSE 'completed' END,
        ai_commentary_processed_at = now(),
        ai_commentary_error = left(st.reason, 2000)
    FROM st
    WHERE q.id = st.question_id AND q.ai_commentary_status = 'processing'
      AND (st.all_ok OR st.any_failed)
    RETURNING q.id, q.ai_commentary_status
), dropped AS (
    -- a failed question's requests that never started are not sent any more
    DELETE FROM ai_commentary_requests r
    USING settled s
    WHERE r.question_id = s.id AND s.ai_commentary_status = 'failed' AND r.status = 'waiting'
)
SELECT ai_commentary_status AS status, count(*) AS n FROM settled GROUP BY 1;

-- name: settle_orphans
-- Safety net: processing questions with no open request at all (e.g. every model was
-- switched off) are settled; with no request rows at all they go back to pending.
UPDATE questions q
SET ai_commentary_status = 'pending', ai_commentary_queued_at = now()
WHERE q.ai_commentary_status = 'processing'
  AND NOT EXISTS (SELECT 1 FROM ai_commentary_requests r WHERE r.question_id = q.id)
RETURNING q.id;

-- name: processing_ids_without_open_requests
SELECT q.id FROM questions q
WHERE q.ai_commentary_status = 'processing'
  AND EXISTS (SELECT 1 FROM ai_commentary_requests r WHERE r.question_id = q.id)
  AND NOT EXISTS (SELECT 1 FROM ai_commentary_requests r
                  WHERE r.question_id = q.id AND r.status IN ('waiting', 'submitted'))
LIMIT 10000;

-- name: has_waiting_work
SELECT EXISTS (
    SELECT 1 FROM ai_commentary_requests r JOIN questions q ON q.id = r.question_id
    WHERE r.status = 'waiting' AND q.ai_commentary_status = 'processing'
) AS waiting;

-- name: stale_intents
-- Intents old enough to check; the caller tests each intent's advisory lock (a live
-- submitter holds it) and the submitter re-checks the state under that lock.
SELECT id, provider, model_key, stage, created_at FROM ai_commentary_batch_jobs
WHERE state = 'submitting' AND created_at < now() - make_interval(secs => %(older_than)s);

-- name: live_batches_without_poll
-- Live batches overdue for a poll by ten seconds with no poll waiting: a poll whose
-- database connection was cut ends 'failed' and schedules nothing, so the batch would wait
-- for this. A 'doing' poll job is not trusted: one whose worker lost its connection while
-- finishing stays 'doing' forever (its worker is alive, so it is not stalled). A second
-- poll is harmless: the batch row lock and its state make it skip (an in_flight poll is a
-- status call; a batch being ingested is 'ingesting', not matched here).
SELECT b.id FROM ai_commentary_batch_jobs b
WHERE b.state = 'in_flight'
  AND coalesce(b.next_poll_at, b.submitted_at, b.created_at) < now() - interval '10 seconds'
  AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                  WHERE j.queueing_lock = 'poll:' || b.id::text AND j.status = 'todo');

-- name: instant_claim_owners
-- Owners of instant claims old enough to check; the caller tests each owner's session lock.
SELECT DISTINCT r.claimed_by FROM ai_commentary_requests r
WHERE r.status = 'submitted' AND r.batch_job_id IS NULL AND r.claimed_by LIKE 'instant:%%'
  AND r.claimed_at < now() - make_interval(secs => %(grace)s);

-- name: release_instant_owner
-- The owner's lock is free: its worker (or connection) died. Counts a release, not an
-- attempt (schema/0014): after max_orphaned releases the request fails, so a question that
-- kills its worker cannot loop forever.
UPDATE ai_commentary_requests r
SET status = CASE WHEN r.orphaned + 1 >= %(max_orphaned)s THEN 'failed' ELSE 'waiting' END,
    claimed_by = NULL, claimed_at = NULL, orphaned = r.orphaned + 1,
    last_error = CASE WHEN r.orphaned + 1 >= %(max_orphaned)s
                      THEN 'released: the worker running the call stopped, '
                           || (r.orphaned + 1) || ' times'
                      ELSE 'released: the worker running the call stopped' END,
    updated_at = now()
WHERE r.status = 'submitted' AND r.batch_job_id IS NULL AND r.claimed_by = %(owner)s
RETURNING r.question_id;

-- name: defer_job
SELECT worker_defer_job(%(queue)s, %(task)s, %(lock)s, %(args)s::jsonb, %(scheduled_at)s);

-- name: record_error
INSERT INTO worker_errors AS e (fingerprint, kind, provider, question_id, batch_job_id, message, detail)
VALUES (%(fingerprint)s, %(kind)s, %(provider)s, %(question_id)s, %(batch_job_id)s, %(message)s, %(detail)s)
ON CONFLICT (fingerprint) DO UPDATE
SET occurrences = e.occurrences + 1, last_seen_at = now(), message = EXCLUDED.message,
    detail = coalesce(EXCLUDED.detail, e.detail)
RETURNING occurrences;

-- name: release_claims
-- Instant requests that failed for a transient reason (connection, rate limit, 5xx) go
-- back to waiting without spending an attempt: an outage must not fail good questions.
-- (The breaker stops the calls while the provider is down.)
UPDATE ai_commentary_requests
SET status = 'waiting', claimed_by = NULL, claimed_at = NULL, last_error = %(error)s,
    updated_at = now()
WHERE claimed_by = %(owner)s AND status = 'submitted' AND question_id = ANY(%(ids)s::uuid[]);

-- name: cancel_later_delayed_submits
-- Delayed submits (lock submit-delayed@<epoch>, scheduled at the end of
-- processing_delay_minutes) that are later than the work now needs - the delay was
-- shortened, or the questions were taken - are cancelled through Procrastinate's API, so a
-- stale one does not wait in the queue for hours. %(due)s NULL: nothing waits for a delay.
SELECT procrastinate_cancel_job_v1(j.id, false, true)
FROM procrastinate_jobs j
WHERE j.task_name = 'submit' AND j.status = 'todo'
  AND j.queueing_lock LIKE 'submit-delayed@%%'
  AND j.scheduled_at > coalesce(%(due)s::timestamptz, now()) + interval '1 second';

-- name: intent_state
-- The intent row a submitter is about to create a provider batch for (still 'submitting'?).
SELECT state, created_at FROM ai_commentary_batch_jobs WHERE id = %s;

-- name: has_commentary_work
-- The tick's safety net: any pending question or waiting request wakes submit.
SELECT EXISTS (SELECT 1 FROM questions WHERE ai_commentary_status = 'pending')
    OR EXISTS (SELECT 1 FROM ai_commentary_requests WHERE status = 'waiting');

-- name: advisory_lock
-- Liveness tokens: a batch intent's submitter holds the intent's lock (custom_ids.lock_key),
-- an instant call's claim holds the lock of its owner text; the tick judges by them.
SELECT pg_advisory_lock(%s);

-- name: advisory_unlock
SELECT pg_advisory_unlock(%s);

-- name: try_advisory_lock
SELECT pg_try_advisory_lock(%s);

-- name: advisory_lock_text
SELECT pg_advisory_lock(hashtext(%s));

-- name: advisory_unlock_text
SELECT pg_advisory_unlock(hashtext(%s));

-- name: try_advisory_lock_text
SELECT pg_try_advisory_lock(hashtext(%s));

-- name: ingest_lines_truncate
-- The session's staging table of result lines (ingest), emptied after each chunk.
TRUNCATE worker_ingest_lines;

-- name: ingest_no_nestloop
-- The merge of a large chunk plans a nested loop over the staging table without statistics.
SET LOCAL enable_nestloop = off;
