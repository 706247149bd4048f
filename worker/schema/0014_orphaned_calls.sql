-- How often a request was released because the worker running its instant call died
-- (SIGKILL, OOM, a lost connection). Such a release no longer spends one of the request's
-- max_attempts: a worker killed three times while it held a few hundred calls would
-- otherwise fail all of them, though none of them was at fault. A request whose calls
-- keep dying (released MAX_ORPHANED times, worker/maintenance.py) still fails, with the
-- reason, so a question that kills its worker cannot loop forever.
ALTER TABLE ai_commentary_requests ADD COLUMN IF NOT EXISTS orphaned integer NOT NULL DEFAULT 0;
