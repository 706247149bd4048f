"""Token budgets per provider and model, shared through Postgres (issue 12, builds 2 and 7).

Providers cap what an account may queue: OpenAI counts the prompt tokens of every
unfinished batch per model (over it, the batch is accepted and then fails
``token_limit_exceeded``), Gemini caps concurrent batch jobs and queued tokens, Mistral
pending requests. The limits live in ``worker_batch_limits`` (a person edits it; NULL =
unlimited; tier-1 defaults seeded by schema/0019).

- **Estimate.** :func:`raw_estimate` counts a request's prompt cheaply (characters / 4 plus
  the chat framing); ``worker_token_budget.correction_factor`` turns it into the provider's
  count, learned from the usage result lines report (:func:`calibrate`).
- **Reserve.** A batch intent records its estimate (``estimated_tokens``) and estimated
  cost; live batch rows *are* the reservations, so a terminal state releases them with no
  extra step, and a crashed worker cannot leak one.
- **Pack.** Under a per-provider transaction lock the submitter reads the free budget and
  takes only the requests that fit (:func:`pack`); the rest stay ``waiting``, unclaimed.
  When nothing fits, submit stops; the poll that finishes a batch defers submit again.
- **Learn.** A batch refused for the token queue sets the learned limit to the one the
  provider's message names, else half of what was queued (:func:`on_token_limit_failure`),
  and keeps its reservation for ``TOKEN_LIMIT_HOLD_SECONDS`` (default 10: the provider
  keeps counting it "for a while", duration unpublished; a retry too early only costs a
  free failed batch). A batch the provider then runs proves its size: a learned limit
  below it grows back to it (:func:`calibrate`).
- **Money.** The daily budget is checked against spent (the ``ai_cost_events`` ledger) plus
  reserved (estimated cost of batches not yet ingested), and a batch is packed to what
  money is left, so the budget is overshot by at most the estimation error of one batch.

The estimator is deliberately not a tokenizer: a BPE tokenizer costs ~50x more CPU per
request and still differs from each provider's count; the learned factor absorbs the
difference (measured in tests/bench/bench_drain.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from worker.commentary.defer import defer
from worker.commentary.rows import BatchJob
from worker.config import get_settings
from worker.ops.alerts import alert
from worker.ops.error_log import record_error
from worker.providers.base import ChatRequest
from worker.providers.routing import providers
from worker.queries import q

log = logging.getLogger(__name__)

#: Share of the effective token limit the worker fills (room for estimation error).
HEADROOM = 0.95
#: Tokens of chat framing per request (role markers, message separators).
FRAME_TOKENS = 8
#: Used to size a claim before any request of the model was estimated.
DEFAULT_REQUEST_TOKENS = 800
#: Used to price a batch before any output was reported for the model.
DEFAULT_OUTPUT_TOKENS = 700
#: Most questions one submit run claims when a token limit sizes the claim.
CLAIM_CAP = 10_000
#: Smoothing of the learned correction factor (weight of the newest batch).
FACTOR_ALPHA = 0.3


def token_limit_hold_seconds() -> float:
    """How long a batch refused for the token queue keeps its reservation."""
    return get_settings().token_limit_hold_seconds


def raw_estimate(request: ChatRequest) -> int:
    """Prompt tokens of one request, uncorrected: ceil(characters / 4) + framing."""
    chars = len(request.system_prompt) + len(request.user_prompt)
    return -(-chars // 4) + FRAME_TOKENS


@dataclass
class ModelBudget:
    provider: str
    model: str
    limit_tokens: int | None
    learned_tokens: int | None
    reserved_tokens: int
    limit_requests: int | None
    reserved_requests: int
    limit_live_batches: int | None
    live_batches: int
    limit_batches_per_hour: int | None
    created_last_hour: int
    factor: float
    avg_request_tokens: float | None
    avg_output_tokens: float | None

    @property
    def effective_limit(self) -> int | None:
        """The configured limit, or the learned one when that is lower (NULL = none)."""
        limits = [x for x in (self.limit_tokens, self.learned_tokens) if x is not None]
        return min(limits) if limits else None

    @property
    def free_tokens(self) -> int | None:
        """Tokens a new batch may hold now; None = unlimited."""
        limit = self.effective_limit
        if limit is None:
            return None
        return max(0, int(limit * HEADROOM) - self.reserved_tokens)

    @property
    def free_requests(self) -> int | None:
        if self.limit_requests is None:
            return None
        return max(0, self.limit_requests - self.reserved_requests)

    @property
    def may_create_batch(self) -> bool:
        """False while the provider's concurrent-batch cap or creation rate is used up."""
        if self.limit_live_batches is not None and self.live_batches >= self.limit_live_batches:
            return False
        return not (
            self.limit_batches_per_hour is not None
            and self.created_last_hour >= self.limit_batches_per_hour
        )

    @property
    def nothing_in_flight(self) -> bool:
        return self.reserved_tokens == 0

    def estimate(self, request: ChatRequest) -> int:
        return math.ceil(raw_estimate(request) * self.factor)

    def request_tokens(self) -> float:
        return self.avg_request_tokens or DEFAULT_REQUEST_TOKENS

    def output_tokens(self) -> float:
        return self.avg_output_tokens or DEFAULT_OUTPUT_TOKENS


async def lock(conn: AsyncConnection[Any], provider: str) -> None:
    """Serialise packers of one provider until the caller's transaction ends."""
    await conn.execute(q("budget_lock"), {"provider": provider})


async def load(conn: AsyncConnection[Any], provider: str, model: str) -> ModelBudget:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("budget_state"), {"provider": provider, "model": model})
    r = await cur.fetchone()
    assert r is not None
    return ModelBudget(
        provider=provider,
        model=model,
        limit_tokens=r["limit_tokens"],
        learned_tokens=r["learned_tokens"],
        reserved_tokens=int(r["reserved_tokens"]),
        limit_requests=r["limit_requests"],
        reserved_requests=int(r["reserved_requests"]),
        limit_live_batches=r["limit_live_batches"],
        live_batches=int(r["live_batches"]),
        limit_batches_per_hour=r["limit_batches_per_hour"],
        created_last_hour=int(r["created_last_hour"]),
        factor=float(r["factor"]),
        avg_request_tokens=r["avg_request_tokens"],
        avg_output_tokens=r["avg_output_tokens"],
    )


@dataclass(frozen=True)
class Packed:
    count: int  # requests that fit, a prefix of the candidates
    tokens: int  # their corrected estimate
    raw_tokens: int
    reason: str | None = None  # why not all fit (None: all fit)


def pack(
    budget: ModelBudget,
    estimates: Sequence[int],
    raw: Sequence[int],
    *,
    money_free: Decimal | None = None,
    cost_per_token: Decimal | None = None,
) -> Packed:
    """The longest prefix of the candidate requests that fits the free token budget, the
    free request budget and ``money_free``. A request alone larger than the whole limit is
    sent alone when nothing is in flight (the provider decides; it would wait forever)."""
    free = budget.free_tokens
    free_req = budget.free_requests
    n = len(estimates)
    reason = None
    if free_req is not None and free_req < n:
        n, reason = free_req, "request budget"
    total = 0
    count = 0
    for i in range(n):
        nxt = total + estimates[i]
        if free is not None and nxt > free:
            reason = "token budget"
            break
        if (
            money_free is not None
            and cost_per_token is not None
            and count > 0
            and cost_per_token * nxt > money_free
        ):
            reason = "daily budget"
            break
        total = nxt
        count += 1
    if count == 0 and n > 0 and free is not None and budget.nothing_in_flight:
        count, total = 1, estimates[0]
    return Packed(count, total, sum(raw[:count]), reason if count < len(estimates) else None)


async def record(
    conn: AsyncConnection[Any],
    budget: ModelBudget,
    job_id: Any,
    tokens: int,
    raw_tokens: int,
    requests: int,
) -> None:
    """Write the reservation on the intent row and update the running averages."""
    await conn.execute(
        q("record_reservation"),
        {
            "id": job_id,
            "tokens": tokens,
            "raw": raw_tokens,
            "output": int(budget.output_tokens() * requests),
        },
    )
    budget.reserved_tokens += tokens
    budget.reserved_requests += requests
    budget.live_batches += 1
    budget.created_last_hour += 1
    if requests:
        params = {"provider": budget.provider, "model": budget.model, "avg": tokens / requests}
        await conn.execute(q("budget_ensure"), params)
        await conn.execute(q("budget_note_requests"), params)


async def calibrate(conn: AsyncConnection[Any], provider: str, model: str) -> float | None:
    """Learn the correction factor from batches ingested since the last call: reported
    prompt tokens over the raw estimate of the answered requests. Returns the new factor."""
    params = {"provider": provider, "model": model}
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("calibration_samples"), params)
    rows = await cur.fetchall()
    if not rows:
        return None
    await conn.execute(q("budget_ensure"), params)
    cur2 = await conn.execute(
        q("budget_correction"),
        params,
    )
    state = await cur2.fetchone()
    factor = float(state[0]) if state else 1.0
    samples = int(state[1]) if state else 0
    used = 0
    out_tokens = out_answers = 0
    proven = max(int(r["estimated_tokens"]) for r in rows)
    for r in rows:
        raw, total, answered = r["raw_estimated_tokens"], r["request_count"], r["answered"]
        if r["succeeded_count"]:
            out_tokens += int(r["output_tokens"])
            out_answers += int(r["succeeded_count"])
        if not raw or not total or not answered or not r["input_tokens"]:
            continue
        observed = int(r["input_tokens"]) / (raw * answered / total)
        factor = (
            observed
            if samples + used == 0
            else (1 - FACTOR_ALPHA) * factor + (FACTOR_ALPHA * observed)
        )
        used += 1
    factor = min(10.0, max(0.1, factor))
    await conn.execute(
        q("budget_learn"),
        {
            **params,
            "factor": factor,
            "samples": used,
            "avg_output": out_tokens / out_answers if out_answers else None,
            "proven": proven,
        },
    )
    return factor


async def on_token_limit_failure(
    conn: AsyncConnection[Any], job: BatchJob, reason: str
) -> int | None:
    """A batch failed because the provider's token queue was full: learn a smaller limit
    (the one the provider's message names, e.g. "Limit: 2,000,000 enqueued tokens", else
    half of what was queued), keep this batch's reservation for
    ``TOKEN_LIMIT_HOLD_SECONDS`` and wake submit when that hold ends. Returns the new
    learned limit."""
    budget = await load(conn, job.provider, str(job.model_name))
    hold = token_limit_hold_seconds()
    cur = await conn.execute(
        q("budget_shrink"),
        {
            "id": job.id,
            "hold": hold,
            "named": named_limit(reason),
            "effective": budget.effective_limit,
            "reason": reason[:2000],
        },
    )
    row = await cur.fetchone()
    learned = int(row[0]) if row else None
    await conn.execute(q("wake_submit_after_hold"), {"delay": hold + 0.1})
    log.warning(
        "token queue of %s %s was full; learned limit now %s",
        job.provider,
        job.model_name,
        learned,
    )
    return learned


_NAMED_LIMIT = re.compile(r"limit:\s*([\d,. ]+)\s*enqueued tokens", re.IGNORECASE)


def named_limit(reason: str | None) -> int | None:
    """The limit an OpenAI ``token_limit_exceeded`` message names ("Limit: 2,000,000
    enqueued tokens"), or None."""
    m = _NAMED_LIMIT.search(reason or "")
    if not m:
        return None
    digits = re.sub(r"[^\d]", "", m.group(1))
    return int(digits) if digits and int(digits) > 0 else None


def is_token_limit_failure(reason: str | None) -> bool:
    """Whether a failed batch's reason is the provider's token-queue limit."""
    text = (reason or "").lower()
    return "token_limit_exceeded" in text or "enqueued token limit" in text


async def waiting_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute(q("waiting_counts"))
    return {str(r[0]): int(r[1]) for r in await cur.fetchall()}


async def claim_capacity(
    conn: AsyncConnection[Any], routes: Sequence[tuple[str, str, str]]
) -> int | None:
    """How many more questions the token budgets can take now: for every limited batch
    model ``(model_key, provider, model)``, free tokens / tokens per request minus what
    already waits for it; the smallest wins. None when no model is limited."""
    if not routes:
        return None
    waiting = await waiting_counts(conn)
    capacity: int | None = None
    for key, provider, model in routes:
        budget = await load(conn, provider, model)
        free = budget.free_tokens
        if free is None:
            continue
        fits = int(free // max(1.0, budget.request_tokens())) - waiting.get(key, 0)
        capacity = fits if capacity is None else min(capacity, fits)
    if capacity is None:
        return None
    return max(0, min(capacity, CLAIM_CAP))


@dataclass(frozen=True)
class Money:
    budget: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def free(self) -> Decimal:
        return self.budget - self.spent - self.reserved


async def money(conn: AsyncConnection[Any], budget: Decimal | None, tz: str) -> Money | None:
    """Today's spend and reservations against ``daily_budget_usd`` (None: no budget)."""
    if budget is None:
        return None
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("money_state"), {"tz": tz})
    r = await cur.fetchone()
    assert r is not None
    return Money(budget, Decimal(r["spent"]), Decimal(r["reserved"]))


async def cost_per_token(conn: AsyncConnection[Any], budget: ModelBudget) -> Decimal:
    """Estimated USD per estimated prompt token, output included at the learned average."""
    per_request = max(1.0, budget.request_tokens())
    cur = await conn.execute(
        q("estimate_cost"),
        {
            "provider": budget.provider,
            "model": budget.model,
            "input": 1_000_000,
            "output": int(1_000_000 * budget.output_tokens() / per_request),
        },
    )
    row = await cur.fetchone()
    return Decimal(row[0] if row else 0) / 1_000_000


async def resolve_lost(
    conn: AsyncConnection[Any], job: BatchJob, exc: BaseException
) -> dict[str, Any] | None:
    """The provider answered 404 for a batch we hold. If its listing (searched back to the
    intent's creation) does not show the batch either, the provider no longer knows it
    (deleted, another account's key): polling can never end, so the batch is resolved as
    ``lost`` with the reason; its requests wait for a new batch without an attempt charged,
    and a person is told. If the listing fails too or shows the batch (a wrong base URL or
    API version answers 404 for everything), nothing is resolved: returns None and the
    caller keeps polling, so a misconfiguration never resubmits batches that still run."""
    try:
        found = await providers().batch(job.provider).find_by_intent(str(job.id), job.created_at)
    except Exception as lookup_exc:
        log.warning("404 on batch %s and its listing failed: %s", job.batch_id, lookup_exc)
        return None
    if found is not None:
        return None

    reason = f"the provider no longer knows batch {job.batch_id}: {exc}"[:2000]
    await conn.execute(q("resolve_lost_batch"), {"id": job.id, "error": reason})
    await record_error(
        conn,
        "batch_lost",
        reason,
        provider=job.provider,
        batch_job_id=job.id,
        fingerprint=f"lost:{job.id}",
    )
    await alert(
        conn,
        f"batch-lost:{job.provider}",
        f"AI commentary: {job.provider} batch lost",
        f"{reason}\n\nIts {job.request_count} requests wait for a new batch.",
    )
    await defer(conn, "submit", "submit")
    return {"lost": reason}


async def affordable_questions(
    conn: AsyncConnection[Any], daily: Decimal, tz: str, routes: Sequence[tuple[str, str, str]]
) -> int:
    """Questions today's money left (budget - spent - reserved) pays for, at the estimated
    cost of one request per batch model in ``routes`` (and beyond what already waits)."""
    state = await money(conn, daily, tz)
    if state is None:
        return CLAIM_CAP
    if state.free <= 0:
        return 0
    per_question = Decimal(0)
    waiting_cost = Decimal(0)
    waiting = await waiting_counts(conn)
    for key, provider, model in routes:
        mb = await load(conn, provider, model)
        per_request = await cost_per_token(conn, mb) * Decimal(mb.request_tokens())
        per_question += per_request
        waiting_cost += per_request * waiting.get(key, 0)
    if per_question <= 0:
        return CLAIM_CAP
    return max(0, min(CLAIM_CAP, int((state.free - waiting_cost) / per_question)))
