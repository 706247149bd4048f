-- Named queries of `python -m worker demo` (worker/demo.py): set-up and the printed table.

-- name: demo_database_exists
SELECT 1 FROM pg_database WHERE datname = %s;

-- name: demo_settings
UPDATE ai_commentary_settings SET feature_enabled = true, batch_size = 100,
    processing_delay_minutes = 0, models_enabled = %s;

-- name: demo_clear
DELETE FROM questions WHERE filename = %s;

-- name: demo_now
SELECT now() AS t;

-- name: demo_insert_question
INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,
                       correct_answer, comment, subject, filename, ai_commentary_status)
VALUES (%(question)s, %(option_a)s, %(option_b)s, %(option_c)s, %(option_d)s, %(option_e)s,
        %(correct_answer)s, %(comment)s, %(subject)s, %(filename)s, 'pending')
RETURNING id;

-- name: demo_questions
SELECT q.id, q.subject, q.question, q.option_a, q.option_b, q.option_c, q.option_d,
       q.option_e, q.correct_answer, q.ai_commentary_status AS status,
       q.ai_commentary_error AS error
FROM questions q WHERE q.id = ANY(%s);

-- name: demo_comments
SELECT c.question_id, c.model_key, c.provider, c.model_name, c.batch_priced,
       c.chosen_answer, c.general_comment, c.comment_a, c.comment_b, c.comment_c,
       c.comment_d, c.comment_e
FROM ai_answer_comments c WHERE c.question_id = ANY(%s) ORDER BY c.model_key;

-- name: demo_summaries
SELECT * FROM ai_commentary_summaries WHERE question_id = ANY(%s);

-- name: demo_spend
SELECT count(*) AS requests, coalesce(sum(l.input_tokens + l.output_tokens), 0) AS tokens,
       coalesce(sum(l.cost_usd), 0) AS cost,
       coalesce(sum(worker_cost_usd(l.provider, l.model_name, l.input_tokens,
                                    l.output_tokens, false)), 0) AS list_cost
FROM ai_cost_ledger l WHERE l.question_id = ANY(%s);

-- name: demo_batches
SELECT provider, count(*) AS n FROM ai_commentary_batch_jobs
WHERE created_at >= %s GROUP BY 1 ORDER BY 1;
