-- Provider health (worker.ops.breaker, worker.ops.resilience) and alerts (worker.ops.alerts).
-- Times come from clock_timestamp(), not now(): callers may be inside a long transaction.

-- name: active_stops
SELECT provider FROM provider_stops WHERE cleared_at IS NULL;

-- name: insert_stop
-- At most one active stop per provider: a second quota error while stopped inserts nothing.
INSERT INTO provider_stops (provider, kind, reason, stopped_at)
VALUES (%(provider)s, %(kind)s, %(reason)s, clock_timestamp())
ON CONFLICT (provider) WHERE cleared_at IS NULL DO NOTHING
RETURNING id;

-- name: disable_feature
UPDATE ai_commentary_settings SET feature_enabled = false WHERE feature_enabled;

-- name: breaker_rows
-- Breakers that are not closed, with the database clock every process agrees on.
SELECT provider, state, consecutive_failures, opened_at, probe_started_at,
       clock_timestamp() AS now
FROM provider_health
WHERE state <> 'closed';

-- name: breaker_claim_probes
-- Hand out the one half-open probe of each breaker whose cooldown has passed (or whose
-- previous probe went stale). SKIP LOCKED: a breaker another caller is deciding about is
-- left to it, never waited on. Mirrors worker.ops.breaker.probe_due.
-- Only among %(providers)s unless %(all)s.
WITH due AS (
    SELECT provider FROM provider_health
    WHERE (%(all)s OR provider = ANY(%(providers)s::text[]))
      AND ((state = 'open'
            AND opened_at <= clock_timestamp() - make_interval(secs => %(cooldown)s))
           OR (state = 'half_open'
               AND (probe_started_at IS NULL
                    OR probe_started_at <= clock_timestamp() - make_interval(secs => %(probe_timeout)s))))
    FOR UPDATE SKIP LOCKED
)
UPDATE provider_health h
SET state = 'half_open', probe_started_at = clock_timestamp(), updated_at = clock_timestamp()
FROM due
WHERE h.provider = due.provider
RETURNING h.provider;

-- name: breaker_return_probe
-- A probe taken but not used: due again for the next caller (probe_started_at NULL).
UPDATE provider_health
SET probe_started_at = NULL, updated_at = clock_timestamp()
WHERE provider = %(provider)s AND state = 'half_open';

-- name: breaker_ensure
INSERT INTO provider_health (provider) VALUES (%(provider)s) ON CONFLICT (provider) DO NOTHING;

-- name: breaker_lock
SELECT state, consecutive_failures, opened_at, probe_started_at, clock_timestamp() AS now
FROM provider_health
WHERE provider = %(provider)s
FOR UPDATE;

-- name: breaker_save_failure
UPDATE provider_health
SET state = %(state)s, consecutive_failures = %(consecutive_failures)s,
    opened_at = %(opened_at)s, probe_started_at = %(probe_started_at)s,
    times_opened = times_opened + %(opened)s,
    last_error = %(error)s, last_error_kind = %(kind)s,
    last_failure_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE provider = %(provider)s;

-- name: breaker_success
-- Close the breaker. The WHERE keeps the common case (already closed, no failures) from
-- writing, so a healthy provider's row is never locked by a long ingest transaction.
UPDATE provider_health
SET state = 'closed', consecutive_failures = 0, opened_at = NULL, probe_started_at = NULL,
    last_success_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE provider = %(provider)s AND (state <> 'closed' OR consecutive_failures > 0)
RETURNING provider;

-- name: spent_today_usd
-- Today's spend, the estimated cost of batches not yet ingested (schema/0019) and today's
-- date, "today" in the budget's time zone.
SELECT worker_spent_usd_since(date_trunc('day', clock_timestamp(), %(tz)s)) AS spent,
       worker_reserved_usd() AS reserved,
       (clock_timestamp() AT TIME ZONE %(tz)s)::date AS day;

-- name: alert_claim_key
-- Start a new dedup window for the key (repeats = 0: this caller sends) or count a repeat
-- inside the current one. The row lock serialises concurrent raisers of the same key.
INSERT INTO worker_alert_keys AS k (dedup_key, window_started_at, repeats)
VALUES (%(key)s, clock_timestamp(), 0)
ON CONFLICT (dedup_key) DO UPDATE
SET window_started_at = CASE
        WHEN k.window_started_at <= clock_timestamp() - make_interval(secs => %(window)s)
        THEN clock_timestamp() ELSE k.window_started_at END,
    repeats = CASE
        WHEN k.window_started_at <= clock_timestamp() - make_interval(secs => %(window)s)
        THEN 0 ELSE k.repeats + 1 END
RETURNING repeats = 0 AS fresh, last_alert_id;

-- name: alert_count_repeat
UPDATE worker_alerts
SET suppressed = suppressed + 1, last_suppressed_at = clock_timestamp()
WHERE id = %(id)s;

-- name: alert_lock_limiter
SELECT id FROM worker_alert_limiter WHERE id = 1 FOR UPDATE;

-- name: alert_recent
-- Messages that went (or would have gone) out within the rate window, and alerts held back
-- by the limit since the last one that went out.
SELECT
    (SELECT count(*) FROM worker_alerts
      WHERE status IN ('pending', 'sent', 'failed', 'disabled')
        AND created_at > clock_timestamp() - make_interval(secs => %(window)s)) AS recent,
    (SELECT count(*) FROM worker_alerts
      WHERE status = 'rate_limited'
        AND created_at > coalesce((SELECT max(created_at) FROM worker_alerts
                                    WHERE status <> 'rate_limited'), '-infinity')) AS held_back;

-- name: alert_insert
INSERT INTO worker_alerts (dedup_key, title, message, priority, status, created_at)
VALUES (%(key)s, %(title)s, %(message)s, %(priority)s, %(status)s, clock_timestamp())
RETURNING id;

-- name: alert_link_key
UPDATE worker_alert_keys SET last_alert_id = %(id)s WHERE dedup_key = %(key)s;

-- name: alert_delivered
UPDATE worker_alerts
SET status = %(status)s, sent_at = CASE WHEN %(status)s = 'sent' THEN clock_timestamp() END,
    delivery_error = %(error)s
WHERE id = %(id)s;

-- name: wake_submit_at
-- A submit at the end of a breaker's cooldown, so its probe runs on time. Its own
-- queueing lock, so a submit already waiting does not swallow it.
SELECT worker_defer_job('submit', 'submit', %(lock)s, '{}'::jsonb,
                        clock_timestamp() + make_interval(secs => %(delay)s));

-- name: alert_held
-- Alerts held back by the rate limit and not yet delivered in a digest, oldest first.
SELECT id, dedup_key, title, suppressed, created_at
FROM worker_alerts
WHERE status = 'rate_limited' AND delivered_with IS NULL
ORDER BY id;

-- name: alert_carried
UPDATE worker_alerts SET delivered_with = %(by)s WHERE id = ANY(%(ids)s);
