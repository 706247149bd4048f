"""The batch lane's steps of the periodic tick (:mod:`worker.ops.maintenance` runs them):

- re-wakes ``submit`` when work waits (a lost notification costs at most a tick);
- reconciles batch intents whose submitter died between "provider created the batch" and
  "our commit": adopts the provider batch found by our intent id, or abandons the intent so
  its requests wait for the next batch - never a second paid batch (failure mode 4);
- defers a poll for any live batch that has none;
- releases requests claimed by an instant call whose worker died (its advisory lock is free);
- settles questions whose requests are all finished, and returns claimed questions without
  any request to pending;
- returns blocked questions the eligibility policy no longer blocks to pending (schema/0021).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.commentary import custom_ids
from worker.commentary.defer import defer, defer_poll
from worker.commentary.submit import abandon_intent, mark_created
from worker.ops.error_log import record_error
from worker.providers.routing import providers
from worker.queries import q

log = logging.getLogger(__name__)


INTENT_GRACE_SECONDS = 5
"""An intent younger than this is never judged (its submitter may not hold its lock yet)."""


MAX_ORPHANED = 10
"""Releases of one request by dead workers before it fails (schema/0014). Ten deaths of the
worker running the same call are not bad luck any more."""


async def wake_submit_if_needed(conn: AsyncConnection[Any]) -> None:
    cur = await conn.execute(q("has_commentary_work"))
    row = await cur.fetchone()
    if row and row[0]:
        await defer(conn, "submit", "submit")


async def reconcile_intents(conn: AsyncConnection[Any]) -> dict[str, int]:
    """Adopt or abandon intents whose submitter is gone (its advisory lock is free)."""
    out = {"adopted": 0, "abandoned": 0}
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        q("stale_intents"),
        {"older_than": INTENT_GRACE_SECONDS},
    )
    for job in await cur.fetchall():
        job_id: uuid.UUID = job["id"]
        key = custom_ids.lock_key(job_id)
        got = await conn.execute(q("try_advisory_lock"), (key,))
        row = await got.fetchone()
        if not (row and row[0]):
            continue  # its submitter is alive and still talking to the provider
        try:
            provider = providers().batch(job["provider"])
            try:
                found = await provider.find_by_intent(str(job_id), job["created_at"])
            except Exception as exc:
                await record_error(
                    conn,
                    "reconcile",
                    f"could not look up intent: {exc}",
                    provider=job["provider"],
                    batch_job_id=job_id,
                )
                continue
            if found is not None:
                await mark_created(conn, job_id, found, 0)
                out["adopted"] += 1
                log.warning("adopted provider batch %s for intent %s", found.batch_id, job_id)
            else:
                await abandon_intent(
                    conn,
                    job_id,
                    job["provider"],
                    RuntimeError(
                        "the submitting worker stopped before the provider batch was created"
                    ),
                )
                out["abandoned"] += 1
        finally:
            await conn.execute(q("advisory_unlock"), (key,))
    return out


async def restore_polls(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute(q("live_batches_without_poll"))
    ids = [r[0] for r in await cur.fetchall()]
    for job_id in ids:
        await defer_poll(conn, job_id, 0)
    return len(ids)


async def release_dead_instant_claims(conn: AsyncConnection[Any]) -> int:
    """Requests held by an instant call whose submit job is gone go back to waiting. That
    does not spend an attempt (the request was not at fault); after ``MAX_ORPHANED`` such
    releases it fails, so a question that crashes its worker cannot loop forever."""
    cur = await conn.execute(q("instant_claim_owners"), {"grace": INTENT_GRACE_SECONDS})
    owners = [r[0] for r in await cur.fetchall()]
    ids: set[Any] = set()
    for owner in owners:
        got = await conn.execute(q("try_advisory_lock_text"), (owner,))
        row = await got.fetchone()
        if not (row and row[0]):
            continue  # the call's session still holds its lock: it is alive
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    q("release_instant_owner"), {"owner": owner, "max_orphaned": MAX_ORPHANED}
                )
                released = {r[0] for r in await cur.fetchall()}
                if released:
                    await conn.execute(q("settle_questions"), {"ids": list(released)})
            ids |= released
        finally:
            await conn.execute(q("advisory_unlock_text"), (owner,))
    return len(ids)


async def unblock_entitled(conn: AsyncConnection[Any]) -> int:
    """Blocked questions the policy (schema/0021) no longer blocks go back to pending: an
    owner who became entitled gets their questions processed without a manual step, within
    a tick, whatever the policy reads (a trigger on the app's tables could not know)."""
    cur = await conn.execute(q("unblock_entitled"))
    return len(await cur.fetchall())


async def settle_stragglers(conn: AsyncConnection[Any]) -> int:
    async with conn.transaction():
        cur = await conn.execute(q("processing_ids_without_open_requests"))
        ids = [r[0] for r in await cur.fetchall()]
        if ids:
            await conn.execute(q("settle_questions"), {"ids": ids})
        cur = await conn.execute(q("settle_orphans"))
        orphans = await cur.fetchall()
    return len(ids) + len(orphans)


async def run_commentary_steps(conn: AsyncConnection[Any]) -> dict[str, Any]:
    """The batch lane's tick: every step once, in this order (see the module doc)."""
    detail: dict[str, Any] = {}
    detail["intents"] = await reconcile_intents(conn)
    detail["polls_restored"] = await restore_polls(conn)
    detail["instant_released"] = await release_dead_instant_claims(conn)
    detail["settled"] = await settle_stragglers(conn)
    detail["unblocked"] = await unblock_entitled(conn)
    await wake_submit_if_needed(conn)
    return detail
