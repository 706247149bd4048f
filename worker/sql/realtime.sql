-- Named queries of the realtime lane (ai_jobs, see schema/0010_ai_jobs.sql and
-- worker/realtime). Loaded by worker.queries; every value is a bind parameter.

-- name: rt_read_settings
SELECT * FROM ai_realtime_settings WHERE id;

-- name: rt_templates
SELECT name, system_prompt, user_template, output, json_schema, max_output_tokens, temperature
FROM ai_job_templates;

-- name: rt_limited_models
SELECT provider, model FROM ai_rate_limits;

-- name: rt_claim
-- One atomic claim: due jobs (pending/retrying whose time has come, or processing whose
-- worker's lease ran out) in priority-then-age order, SKIP LOCKED so concurrent drains never
-- share a row. A chat job waits while an earlier job of its session is open (a session's
-- questions are answered in order, each seeing the previous answers). Each lane
-- (provider, or provider:embed) gets at most its free slots; lanes absent from the arrays
-- get %(default_free)s.
WITH cand AS (
    SELECT j.id, j.provider || CASE WHEN j.kind = 'embedding' THEN ':embed' ELSE '' END AS lane,
           j.priority
    FROM ai_jobs j
    -- The first line is implied by the second, but spelled out it lets the planner use the
    -- partial index ai_jobs_due_idx (scan in claim order, stop at the scan limit) instead
    -- of reading and sorting the whole backlog on every claim (measured: 50,000 due rows,
    -- 0.4 ms instead of 30 ms, plus JIT compilation the inflated estimate triggered).
    WHERE j.status IN ('pending', 'retrying', 'processing')
      AND ((j.status IN ('pending', 'retrying') AND j.next_attempt_at <= now())
           OR (j.status = 'processing' AND j.lease_until < now()))
      AND NOT (j.provider = ANY(%(skip)s::text[]))
      AND (j.session_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM ai_jobs e
            WHERE e.session_id = j.session_id AND e.id < j.id
              AND e.status IN ('pending', 'retrying', 'processing')))
    ORDER BY j.priority DESC, j.id
    LIMIT %(scan)s
    FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT c.id, c.lane, c.priority,
           row_number() OVER (PARTITION BY c.lane ORDER BY c.priority DESC, c.id) AS rn
    FROM cand c
), picked AS (
    SELECT r.id
    FROM ranked r
    LEFT JOIN unnest(%(lanes)s::text[], %(free)s::int[]) AS f(lane, n) ON f.lane = r.lane
    WHERE r.rn <= coalesce(f.n, %(default_free)s)
    ORDER BY r.priority DESC, r.id
    LIMIT %(limit)s
)
UPDATE ai_jobs j
SET status = 'processing', claimed_by = %(owner)s, claimed_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))  -- primary-key lookups, not a hash join
RETURNING j.id, j.kind, j.provider, j.model, j.system_prompt, j.input_text, j.messages,
          j.session_id, j.priority, j.attempts, j.throttled, j.max_attempts, j.context_messages;

-- name: rt_claim_fast
-- rt_claim without the per-lane caps, for a claim of at most %(limit)s rows when no lane has
-- fewer free slots than that (worker/realtime/claim.py, first_rows_limit): the first due rows in
-- claim order are then exactly the rows rt_claim would take first, so the per-lane ranking
-- (a window over the candidates and a join with the lanes) can be left out. Same due rows,
-- same order, same session order, same SKIP LOCKED; on one due row 0.17-0.19 ms cheaper than
-- rt_claim (tests/bench/peers/FINDINGS.md).
UPDATE ai_jobs j
SET status = 'processing', claimed_by = %(owner)s, claimed_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE j.id = ANY(ARRAY(
    SELECT c.id
    FROM ai_jobs c
    WHERE c.status IN ('pending', 'retrying', 'processing')  -- the partial index, as rt_claim
      AND ((c.status IN ('pending', 'retrying') AND c.next_attempt_at <= now())
           OR (c.status = 'processing' AND c.lease_until < now()))
      AND NOT (c.provider = ANY(%(skip)s::text[]))
      AND (c.session_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM ai_jobs e
            WHERE e.session_id = c.session_id AND e.id < c.id
              AND e.status IN ('pending', 'retrying', 'processing')))
    ORDER BY c.priority DESC, c.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED))
RETURNING j.id, j.kind, j.provider, j.model, j.system_prompt, j.input_text, j.messages,
          j.session_id, j.priority, j.attempts, j.throttled, j.max_attempts, j.context_messages;

-- name: rt_session_history
-- The last %(k)s messages of each session, oldest first, each cut to %(max_chars)s.
SELECT session_id, role, content
FROM (
    SELECT m.session_id, m.role, left(m.content, %(max_chars)s) AS content, m.id,
           row_number() OVER (PARTITION BY m.session_id ORDER BY m.id DESC) AS rn
    FROM ai_chat_messages m
    WHERE m.session_id = ANY(%(sessions)s::text[])
) x
WHERE rn <= %(k)s
ORDER BY session_id, id;

-- name: rt_rate_acquire
SELECT granted, retry_at FROM ai_rate_acquire(%(provider)s, %(model)s, %(tokens)s::int[]);

-- name: rt_rate_settle
SELECT ai_rate_settle_tokens(%(provider)s, %(model)s, %(delta)s);

-- name: rt_release_throttled
-- Claimed jobs a rate limit did not admit: back to waiting, never failed, no attempt used.
UPDATE ai_jobs
SET status = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END,
    next_attempt_at = %(at)s, throttled = throttled + 1,
    claimed_by = NULL, lease_until = NULL, updated_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(owner)s AND status = 'processing';

-- name: rt_release
-- Claimed jobs a stopping drain gives back (never called, or their call was cut off at the
-- shutdown deadline): due again at once, no attempt used.
UPDATE ai_jobs
SET status = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END,
    next_attempt_at = now(), claimed_by = NULL, lease_until = NULL, updated_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by = %(owner)s AND status = 'processing';

-- name: rt_release_owner
-- Everything a drain run still holds, at its end after a stop, a cancel or a crash.
UPDATE ai_jobs
SET status = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END,
    next_attempt_at = now(), claimed_by = NULL, lease_until = NULL, updated_at = now()
WHERE status = 'processing' AND claimed_by = %(owner)s;

-- name: rt_finish
-- Write a flush of outcomes in one statement: results, retries, failures, and for completed
-- chat jobs of a session the user message and the answer (same statement, so atomic).
WITH u AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(status)s::text[], %(result_text)s::text[],
                %(result_json)s::jsonb[], %(emb_offset)s::int[], %(emb_length)s::int[],
                %(error)s::text[],
                %(error_kind)s::text[], %(failed_call)s::int[], %(throttle)s::int[],
                %(delay)s::float8[], %(context_messages)s::int[], %(input_tokens)s::int[],
                %(output_tokens)s::int[], %(latency_ms)s::int[], %(called_at)s::timestamptz[],
                %(user_message)s::text[])
         AS u(id, status, result_text, result_json, emb_offset, emb_length, error, error_kind,
              failed_call,
              throttle, delay, context_messages, input_tokens, output_tokens, latency_ms,
              called_at, user_message)
), done AS (
    UPDATE ai_jobs j
    SET status = u.status,
        result_text = u.result_text,
        result_json = u.result_json,
        -- Every vector of the flush arrives as one binary float4[] (worker/realtime/vectors.py);
        -- a row's vector is its slice (a NULL length: no vector).
        embedding = CASE WHEN u.emb_length IS NOT NULL
                         THEN (%(embeddings)s::real[])[u.emb_offset + 1 : u.emb_offset + u.emb_length]
                    END,
        error = u.error,
        error_kind = u.error_kind,
        attempts = j.attempts + u.failed_call,
        throttled = j.throttled + u.throttle,
        next_attempt_at = CASE WHEN u.status IN ('pending', 'retrying')
                               THEN now() + make_interval(secs => u.delay)
                               ELSE j.next_attempt_at END,
        context_messages = coalesce(u.context_messages, j.context_messages),
        input_tokens = coalesce(u.input_tokens, j.input_tokens),
        output_tokens = coalesce(u.output_tokens, j.output_tokens),
        cost_usd = CASE WHEN u.status = 'completed'
                        THEN worker_cost_usd(j.provider, j.model, coalesce(u.input_tokens, 0),
                                             coalesce(u.output_tokens, 0), false)
                        ELSE j.cost_usd END,
        latency_ms = coalesce(u.latency_ms, j.latency_ms),
        called_at = coalesce(u.called_at, j.called_at),
        completed_at = CASE WHEN u.status IN ('completed', 'failed') THEN now() END,
        claimed_by = NULL, lease_until = NULL, updated_at = now()
    FROM u
    WHERE j.id = u.id AND j.claimed_by = %(owner)s AND j.status = 'processing'
    RETURNING j.id, j.session_id, j.status
), msgs AS (
    INSERT INTO ai_chat_messages (session_id, job_id, role, content)
    SELECT d.session_id, d.id, m.role, m.content
    FROM done d
    JOIN u ON u.id = d.id
    CROSS JOIN LATERAL (VALUES (1, 'user', u.user_message), (2, 'assistant', u.result_text))
        AS m(ord, role, content)
    WHERE d.session_id IS NOT NULL AND d.status = 'completed' AND m.content IS NOT NULL
    ORDER BY d.id, m.ord
    RETURNING 1
)
SELECT (SELECT count(*) FROM done) AS written, (SELECT count(*) FROM msgs) AS messages;

-- name: rt_backlog
-- Due jobs nobody has claimed (after a claim: more work than this process takes).
SELECT EXISTS (
    SELECT 1 FROM ai_jobs
    WHERE status IN ('pending', 'retrying', 'processing')
      AND status IN ('pending', 'retrying') AND next_attempt_at <= now());

-- name: rt_next_due
-- When the next waiting job becomes due (a retry, a rate-limit wait, an expired lease).
SELECT least(
    (SELECT min(next_attempt_at) FROM ai_jobs WHERE status IN ('pending', 'retrying')),
    (SELECT min(lease_until) FROM ai_jobs WHERE status = 'processing')) AS due;

-- name: rt_defer_drain
SELECT worker_defer_job('realtime', 'drain', %(lock)s, '{}'::jsonb, %(scheduled_at)s);

-- name: retention_apply
-- One batch of deletions per kind (schema/0023, worker/ops/retention.py).
SELECT worker_apply_retention();
