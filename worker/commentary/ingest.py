"""ingest: write result lines into Postgres, idempotently, accounting for every request.

Lines stream in (never a whole file in memory) and are validated one by one against the
pydantic schema; they are staged with COPY into a temporary table in chunks, then merged
set-based: valid answers are upserted (one row per question and model), failed lines count
an attempt, and requests the owner still holds without any line are "missing", treated as
failed (failure mode 6). Only requests still owned by this batch or instant call are
touched, so a late or duplicate result never overwrites newer work.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

from worker.commentary import custom_ids
from worker.commentary.question_input import clean_text
from worker.commentary.schemas import OutputError, parse_commentary, parse_summary
from worker.commentary.settings_row import CommentarySettings
from worker.ops.error_log import record_error
from worker.providers.base import ResultLine
from worker.providers.error_policy import FREE_LINE_CODES, Disposition, disposition
from worker.queries import q
from worker.redact import redact, redact_opt

log = logging.getLogger(__name__)

COPY_CHUNK = 2000
#: A request released this many times without spending an attempt (its batch failed for
#: a cause that is not the request's: limits, provider errors, expiry, cancel) fails with
#: the last reason, so a provider that never finishes anything cannot hold it forever.
MAX_FREE_RETRIES = 25
# From this many staged lines on, the merge statements run without nested-loop joins. The
# requests a batch owns carry a brand-new ``claimed_by`` value, so the planner always
# estimates one matching row and picks a nested loop over a materialised scan: quadratic
# in the batch size (12 s for 20,000 lines, most of a minute for 50,000). Hash joins are
# linear; below this size the nested loop (index probes) is the better plan.
HASH_JOIN_FROM = 500
COLUMNS = (
    "question_id",
    "ok",
    "error",
    "chosen_answer",
    "general_comment",
    "comment_a",
    "comment_b",
    "comment_c",
    "comment_d",
    "comment_e",
    "regenerated_question",
    "regenerated_option_a",
    "regenerated_option_b",
    "regenerated_option_c",
    "regenerated_option_d",
    "regenerated_option_e",
    "model_agreement_analysis",
    "input_tokens",
    "output_tokens",
    "model_version",
    "charge",
    "final",
)
"""The staged columns, in the order of query ``copy_ingest_lines`` (checked by a test)."""


@dataclass
class IngestCounts:
    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    missing: int = 0
    unknown_ids: int = 0
    duplicates: int = 0
    invalid_output: int = 0
    malformed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    question_ids: set[uuid.UUID] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int) and v}


def _clean(text: str | None) -> str | None:
    # Postgres text cannot hold NUL, and a lone surrogate (a JSON "\udcff" escape) cannot
    # even be encoded for COPY: one such answer would abort the whole batch's ingest.
    return None if text is None else clean_text(text)


def to_row(line: ResultLine, question_id: uuid.UUID, model_key: str) -> tuple[Any, ...]:
    """The staged row for one line: parsed answer fields, or the error."""
    if line.ok:
        try:
            if model_key == "summary":
                s = parse_summary(line.text)
                fields: list[Any] = [
                    s.general_comment,
                    s.comment_a,
                    s.comment_b,
                    s.comment_c,
                    s.comment_d,
                    s.comment_e,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    s.model_agreement_analysis,
                ]
                chosen = None
            else:
                c = parse_commentary(line.text)
                chosen = c.chosen_answer
                fields = [
                    c.general_comment,
                    c.comment_a,
                    c.comment_b,
                    c.comment_c,
                    c.comment_d,
                    c.comment_e,
                    c.regenerated_question,
                    c.regenerated_option_a,
                    c.regenerated_option_b,
                    c.regenerated_option_c,
                    c.regenerated_option_d,
                    c.regenerated_option_e,
                    None,
                ]
            return (
                question_id,
                True,
                None,
                chosen,
                *fields,  # already cleaned by worker.commentary.schemas before validation
                line.input_tokens,
                line.output_tokens,
                line.model_version,
                True,
                False,
            )
        except OutputError as exc:
            error = f"invalid_output: {exc}"
    else:
        error = redact(f"{line.error_code or 'error'}: {line.error_message or 'request failed'}")
    return (
        question_id,
        False,
        (_clean(error) or "")[:2000],
        *([None] * 14),
        line.input_tokens,
        line.output_tokens,
        line.model_version,
        line_charges_attempt(line),
        line_fails_request(line),
    )


def line_charges_attempt(line: ResultLine) -> bool:
    """Whether a failed line spends an attempt: not when it only reports its batch's fate
    (``batch_expired``, ``batch_cancelled``, Mistral ``timeout_exceeded``); every other
    failure is the request's own outcome (worker.providers.error_policy.FREE_LINE_CODES)."""
    return line.ok or line.error_code not in FREE_LINE_CODES


def line_fails_request(line: ResultLine) -> bool:
    """Whether a failed line fails its request at once, whatever attempts are left: the
    answer arrived and the error policy says retrying the same request cannot help
    (``Disposition.FAIL_REQUEST``: a refusal or moderation block, a truncated answer, a
    context too long, an invalid request) - what the realtime lane does with the same
    answer. An answer that does not parse stays a charged retry."""
    return (
        not line.ok
        and line.error_kind is not None
        and disposition(line.error_kind) is Disposition.FAIL_REQUEST
    )


async def ingest_lines(
    conn: AsyncConnection[Any],
    settings: CommentarySettings,
    *,
    owner: str,
    model_key: str,
    provider: str,
    model_name: str,
    batch_job_id: uuid.UUID | str | None,
    batch_priced: bool,
    lines: AsyncIterator[ResultLine],
    missing_reason: str,
    count_attempt: bool = True,
    charge_missing: bool = True,
) -> IngestCounts:
    """Stage, validate and merge ``lines`` for requests held by ``owner``; settle questions.

    ``charge_missing``: requests without any line spend an attempt (False when the batch's
    cause says nothing about them: they are a free retry, bounded by MAX_FREE_RETRIES)."""
    counts = IngestCounts()
    seen: set[uuid.UUID] = set()
    # A few examples (custom_id: reason) for the worker_errors rows a person reads.
    invalid_examples: list[str] = []
    malformed_examples: list[str] = []
    duplicate_examples: list[str] = []
    params = {
        "owner": owner,
        "model_key": model_key,
        "provider": provider,
        "model_name": model_name,
        "prompt_version": settings.prompt_version,
        "batch_job_id": batch_job_id,
        "batch_priced": batch_priced,
        "max_attempts": settings.max_attempts,
        "count_attempt": 1 if count_attempt else 0,
        "charge_missing": charge_missing,
        "max_free_retries": MAX_FREE_RETRIES,
    }
    async with conn.transaction():
        await conn.execute(q("create_ingest_table"))
        buffer: list[tuple[Any, ...]] = []
        async for line in lines:
            counts.lines += 1
            try:
                qid, key = custom_ids.parse(line.custom_id)
            except ValueError:
                counts.unknown_ids += 1
                await record_error(
                    conn,
                    "unknown_custom_id",
                    f"result line with an id we never sent: {line.custom_id[:80]!r}",
                    provider=provider,
                    batch_job_id=batch_job_id,
                    fingerprint=f"unknown-id:{batch_job_id}",
                )
                continue
            if key != model_key:
                counts.unknown_ids += 1
                await record_error(
                    conn,
                    "unknown_custom_id",
                    f"result for model {key!r} in a {model_key!r} batch",
                    provider=provider,
                    batch_job_id=batch_job_id,
                    fingerprint=f"wrong-model:{batch_job_id}",
                )
                continue
            if qid in seen:
                counts.duplicates += 1
                if len(duplicate_examples) < 3:
                    duplicate_examples.append(line.custom_id)
                continue
            seen.add(qid)
            row = to_row(line, qid, model_key)
            counts.input_tokens += line.input_tokens
            counts.output_tokens += line.output_tokens
            if row[1]:
                counts.succeeded += 1
            else:
                counts.failed += 1
                if line.ok:
                    counts.invalid_output += 1
                    if len(invalid_examples) < 3:
                        invalid_examples.append(f"{line.custom_id}: {row[2][:300]}")
                elif line.error_code == "malformed_line":
                    counts.malformed += 1
                    if len(malformed_examples) < 3:
                        malformed_examples.append(f"{line.custom_id}: {row[2][:200]}")
            buffer.append(row)
            if len(buffer) >= COPY_CHUNK:
                await _copy(conn, buffer)
                buffer.clear()
        if buffer:
            await _copy(conn, buffer)
        if counts.lines >= HASH_JOIN_FROM:
            await conn.execute(q("ingest_no_nestloop"))
        if counts.invalid_output:
            await record_error(
                conn,
                "invalid_output",
                f"{counts.invalid_output} answers were not usable (not JSON or violating "
                f"the schema), e.g. {'; '.join(invalid_examples)}",
                provider=provider,
                batch_job_id=batch_job_id,
                fingerprint=f"invalid-output:{batch_job_id or owner}",
            )
        if counts.malformed:
            await record_error(
                conn,
                "malformed_line",
                f"{counts.malformed} result lines were not valid JSON (truncated or broken "
                f"file), e.g. {'; '.join(malformed_examples)}",
                provider=provider,
                batch_job_id=batch_job_id,
                fingerprint=f"malformed:{batch_job_id or owner}",
            )
        # Well-formed ids of requests this batch (or call) does not hold: never sent in it,
        # or already settled. They are ignored by the merge below; say so.
        cur = await conn.execute(q("unowned_lines"), params)
        unowned = await cur.fetchone()
        if unowned and unowned[0]:
            counts.unknown_ids += unowned[0]
            counts.succeeded -= unowned[1]
            counts.failed -= unowned[0] - unowned[1]
            await record_error(
                conn,
                "unknown_custom_id",
                f"{unowned[0]} result lines for requests this batch does not hold (never "
                f"sent in it, or already settled), e.g. {', '.join(unowned[2])}",
                provider=provider,
                batch_job_id=batch_job_id,
                fingerprint=f"unowned:{batch_job_id or owner}",
            )
        upsert = "upsert_summaries" if model_key == "summary" else "upsert_comments"
        await conn.execute(q(upsert), params)
        # The ledger: every paid line, re-processing and failed-but-billed ones included.
        await conn.execute(q("record_cost_events"), params)
        await conn.execute(q("mark_succeeded"), params)
        await conn.execute(q("mark_line_failed"), params)
        cur = await conn.execute(q("mark_missing"), {**params, "error": redact_opt(missing_reason)})
        missing = [r[0] for r in await cur.fetchall()]
        counts.missing = len(missing)
        counts.question_ids = seen | set(missing)
        await conn.execute(q("settle_questions"), {"ids": list(counts.question_ids)})
        await conn.execute(q("ingest_lines_truncate"))
    if counts.duplicates:
        await record_error(
            conn,
            "duplicate_lines",
            f"{counts.duplicates} duplicate result lines ignored (the first line of each "
            f"id was used), e.g. {', '.join(duplicate_examples)}",
            provider=provider,
            batch_job_id=batch_job_id,
            fingerprint=f"dup:{batch_job_id or owner}",
        )
    return counts


async def _copy(conn: AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur, cur.copy(q("copy_ingest_lines")) as copy:
        for row in rows:
            await copy.write_row(row)
