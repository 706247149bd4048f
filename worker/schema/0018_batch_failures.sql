-- Why a batch ended without all its results, in the provider's words, and whether that cost
-- the questions an attempt (worker/error_policy.py classify_batch_failure):
--   failure_cause   limit | provider | expired | cancelled | request | unknown (NULL: none)
--   failure_reason  the provider's reason, redacted: OpenAI errors.data[0] (code: message),
--                   Mistral errors[].message, Gemini the operation's error (status: message)
-- Only request-level causes (and unknown ones, bounded by max_attempts) spend attempts.
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS failure_cause text;
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS failure_reason text;
-- Set when a batch reported success but its results were not readable yet (a Gemini batch
-- SUCCEEDED without its responses file): polling goes on with backoff until
-- RESULTS_GRACE_SECONDS after this moment, then the unread lines count as missing.
ALTER TABLE ai_commentary_batch_jobs ADD COLUMN IF NOT EXISTS results_pending_since timestamptz;
-- How often a request went back to waiting without spending an attempt because its batch
-- failed for a reason that is not the request's (limits, provider errors, expiry, cancel).
-- After max_free_retries such releases (worker/ingest.py) it fails with the reason, so a
-- provider that never finishes anything cannot keep a question in processing forever.
ALTER TABLE ai_commentary_requests ADD COLUMN IF NOT EXISTS free_retries integer NOT NULL DEFAULT 0;
