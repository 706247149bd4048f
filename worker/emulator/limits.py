"""The real providers' batch limits (provider-apis.md section 5), checked at batch creation.

- **OpenAI enqueued tokens** (``openai_enqueued_tokens_per_model``): the prompt tokens of an
  organisation's unfinished batches, per model. ``batches.create`` never refuses: a batch
  that would go over is accepted and then fails validation with ``token_limit_exceeded``
  (openai-python issue 2084). Tokens are released when a batch is terminal; a batch that
  failed keeps counting for ``openai_failed_tokens_hold_seconds``.
- **OpenAI creation rate** (``openai_batches_per_hour``): creates over the rate get a 429
  ``rate_limit_exceeded`` before anything is created.
- **Gemini concurrent batches and enqueued tokens** (``gemini_max_concurrent_batches``,
  ``gemini_enqueued_tokens_per_model``): ``batchGenerateContent`` (and ``batches.list``
  while the project is at its cap) answers 429 ``RESOURCE_EXHAUSTED`` with only the
  generic "check your plan and billing details" text: no QuotaFailure, no RetryInfo, no
  ``retry-after`` (python-genai issue 1901, js-genai issue 1264).

**Token estimate.** A queue limit is enforced before anything runs, so the service counts
tokens from the request text, not from usage. We follow the accounting OpenAI publishes for
its rate limiter (openai-cookbook ``api_request_parallel_processor.py``,
``num_tokens_consumed_from_request``): per message 4 tokens of framing plus the tokens of
its role, content and name, plus 2 for priming the reply. Output tokens are not counted (the
limit is on *prompt* tokens, and there is no output-token cap). Text is counted with the
emulator's tokenizer (:func:`worker.emulator.content.count_tokens`, ceil(chars / 4)), the
same one that produces the ``prompt_tokens`` it bills, so a client can calibrate against the
usage it is sent back; the estimate is the billed prompt count plus the framing (about 6
tokens per two-message request). Gemini: the request's text (system instruction and
contents), the same count as the billed ``promptTokenCount``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from worker.emulator.content import count_tokens, unit_fraction
from worker.emulator.faults import ErrorReply
from worker.emulator.store import BatchRecord, Store

#: Framing tokens per chat message and for the reply primer (cookbook accounting).
TOKENS_PER_MESSAGE = 4
TOKENS_REPLY_PRIMER = 2

GEMINI_GENERIC_429 = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: "
    "https://ai.google.dev/gemini-api/docs/rate-limits."
)


def estimate_openai_line_tokens(body: Any) -> int:
    """Prompt tokens the service enqueues for one chat request body (see module doc)."""
    if not isinstance(body, dict):
        return 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    total = TOKENS_REPLY_PRIMER
    for m in messages:
        if not isinstance(m, dict):
            continue
        total += TOKENS_PER_MESSAGE
        for key in ("role", "content", "name"):
            value = m.get(key)
            if isinstance(value, list):  # content parts
                value = " ".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
            if value:
                total += count_tokens(str(value))
    return total


def estimate_embedding_tokens(body: Any) -> int:
    """Tokens of an embeddings request's ``input`` (the only text it has)."""
    if not isinstance(body, dict):
        return 0
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return sum(count_tokens(t if isinstance(t, str) else " ".join(map(str, t))) for t in texts)


class Limits:
    """Admission decisions for new batches; one per :class:`Store` (``store.limits``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Held while a create decides, so two concurrent creates cannot both fit in the
        # last free tokens. Lock order: this lock, then a batch's own lock (never reverse).
        self.lock = threading.Lock()
        self._openai_creates: deque[float] = deque()

    def reset(self) -> None:
        # Called under the store lock: taking self.lock here would invert the lock order
        # of a create (self.lock, then the store lock). deque.clear is atomic.
        self._openai_creates.clear()

    def _advance_all(self, provider: str, model: str | None = None) -> list[BatchRecord]:
        # Batches advance lazily (on reads); bring every one up to date so batches that have
        # finished by now release their tokens and slots. ``model``: only that model's.
        from worker.emulator.lifecycle import advance

        batches = self.store.list_batches(provider)
        if model is not None:
            batches = [b for b in batches if b.data.get("model") == model]
        for b in batches:
            if not b.terminal:
                advance(self.store, b)
        return batches

    # ---------------------------------------------------------------- OpenAI

    def openai_rate_limited(self) -> ErrorReply | None:
        """The 429 for a create over ``openai_batches_per_hour``, or None (and the create is
        counted). Call with :attr:`lock` held."""
        cfg = self.store.config
        limit = cfg.openai_batches_per_hour
        t = time.time()
        window = cfg.openai_batch_window_seconds
        q = self._openai_creates
        while q and q[0] <= t - window:
            q.popleft()
        if limit is not None and len(q) >= limit:
            wait = max(0.0, q[0] + window - t)
            return ErrorReply(
                429,
                {
                    "error": {
                        "message": "Rate limit reached for batch creations in organization "
                        f"org-emulator: Limit {limit} per {window:g}s. Please try again in "
                        f"{wait:.3f}s.",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                {
                    "x-ratelimit-limit-requests": str(limit),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{wait:.3f}s",
                },
            )
        q.append(t)
        return None

    def openai_enqueued(self, model: str) -> int:
        """Tokens counted against ``model``'s limit now. Call with :attr:`lock` held."""
        cfg = self.store.config
        hold = cfg.openai_failed_tokens_hold_seconds
        t = time.time()
        total = 0
        for b in self._advance_all("openai", model):
            if not b.terminal:
                if b.data.get("enqueued"):
                    total += int(b.data.get("enqueued_tokens") or 0)
            elif b.phase == "failed" and hold > 0 and t - b.phase_since < hold:
                # "A failed batch's tokens may count for a while" (issue 1643)
                total += int(b.data.get("enqueued_tokens") or 0)
        return total

    def openai_admit(self, model: str | None, tokens: int) -> dict[str, Any] | None:
        """Whether a new batch of ``tokens`` fits ``model``'s enqueued-token limit: None if
        it does (it then counts), else the ``errors.data`` entry it fails validation with.
        Call with :attr:`lock` held."""
        limit = self.store.config.openai_enqueued_tokens_per_model
        if limit is None or model is None:
            return None
        if self.openai_enqueued(model) + tokens <= limit:
            return None
        return {
            "code": "token_limit_exceeded",
            "message": f"Enqueued token limit reached for {model} in organization "
            f"org-emulator. Limit: {limit:,} enqueued tokens. Please try again once some "
            "in_progress batches have been completed.",
            "param": None,
            "line": None,
        }

    # ---------------------------------------------------------------- Gemini

    def gemini_over(self, model: str | None = None, tokens: int = 0) -> ErrorReply | None:
        """The generic 429 when a new batch (of ``tokens`` for ``model``) would go over the
        concurrent-batch cap or the model's enqueued tokens; ``model=None``: is the project
        at its batch cap (``batches.list`` answers 429 then too). Call with :attr:`lock`."""
        cfg = self.store.config
        cap = cfg.gemini_max_concurrent_batches
        limit = cfg.gemini_enqueued_tokens_per_model
        if cap is None and (limit is None or model is None):
            return None
        live = [b for b in self._advance_all("gemini") if not b.terminal]
        over = cap is not None and len(live) >= cap
        if not over and limit is not None and model is not None:
            queued = sum(
                int(b.data.get("enqueued_tokens") or 0) for b in live if b.data["model"] == model
            )
            over = queued + tokens > limit
        if not over:
            return None
        # The generic body seen in python-genai #1901: no details, no retry hint.
        return ErrorReply(
            429,
            {"error": {"code": 429, "message": GEMINI_GENERIC_429, "status": "RESOURCE_EXHAUSTED"}},
        )


def response_lost(store: Store, what: str) -> str | None:
    """Whether the answer to a side-effecting call is lost (``lost_response_rate``):
    ``"500"``, ``"drop"`` or None, by seeded dice over a per-store counter."""
    rate = store.config.lost_response_rate
    if rate <= 0:
        return None
    with store.lock:
        store.lost_dice += 1
        n = store.lost_dice
    seed = store.config.seed
    if unit_fraction(seed, "lost", what, n) >= rate:
        return None
    return "500" if unit_fraction(seed, "lost-how", n) < 0.5 else "drop"
