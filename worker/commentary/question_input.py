"""Bad questions: which ones the worker refuses to send, and how it cleans what it sends.

Policy (issue #5 item 8)
------------------------
Every provider call costs money, for up to five models plus the summary. A question that
cannot get a useful answer is therefore stopped *before* anything is sent, at the point
where its requests are taken for a batch or an instant call (``worker.commentary.claim.take``):

* **Not sendable, fails at once** (:func:`check_question` returns the reason). The
  question is set ``failed`` with ``ai_commentary_error = 'bad question: <reason>'``, its
  waiting requests are set ``failed`` with the same ``last_error``, and one
  ``worker_errors`` row (kind ``bad_question``, the question id, the reason) is recorded.
  Nothing is retried: the same text would fail the same way. Editing the question's text
  re-queues it (trigger in schema/0007), which is exactly the fix a person makes.

  - the question text is empty;
  - one of options A-D is empty (option E may be empty: a four-option question);
    "empty" means nothing visible after cleaning - whitespace and zero-width characters
    only count as empty;
  - question plus options are longer than :data:`MAX_QUESTION_CHARS` (100,000 characters,
    after cleaning). Real exam questions are a few KB; 100 K characters is ~30 K tokens per
    model call, and text that long is a data error (a pasted document), not a question.
  - the subject is longer than :data:`MAX_SUBJECT_CHARS` (1,000 characters): a subject
    names a field ("Physiologie"); it goes into the summary prompt and may go into a user
    template, so a pasted document there (issue #11: 5 MB) is refused before any model is
    paid for, not at the summary after five comments.
  - the rendered request (system prompt plus user prompt: template, subject, question,
    options, for the summary the comments) is longer than
    :data:`worker.commentary.request_check.MAX_REQUEST_CHARS`: checked on the exact text about to be
    sent, the last net under the limits above.

* **Sent, with a warning** (:func:`answer_problem`): ``correct_answer`` outside A-E, or
  naming an empty option. The official answer is not part of the comment prompts (the
  reviewer models must not know it), so the comments are as good as for any question; only
  the summary prompt names it. There it is sent as ``unbekannt`` (the same as a missing
  answer) instead of a wrong letter, so the summary never tells students a bogus official
  answer, and a ``worker_errors`` row (kind ``bad_correct_answer``) tells a person to fix
  the question. Failing the question would throw away useful comments; fixing
  ``correct_answer`` re-queues the question (it is part of the content hash, schema/0021).
  Lower case and surrounding blanks (``' b'``) are normalised silently.

* **Cleaned, then sent** (:func:`clean_text`, applied to every text that goes into a
  prompt). What Postgres ``text`` can hold is sent; what would break a request or its JSON
  line is removed or replaced:

  - NUL (``\\x00``) is removed. Postgres text cannot hold NUL at all (the insert fails on
    the application's side), so this only matters for text from elsewhere, e.g. model
    output going back into the database (``worker.commentary.ingest``).
  - Lone UTF-16 surrogates (``\\udcff``; JSON ``"\\udcff"`` escapes decode to them) are
    replaced by U+FFFD. Postgres cannot store them either (UTF-8), and encoding a request or
    a COPY row with one raises.
  - Other control characters (C0 except tab/newline/carriage return, DEL, C1) are removed:
    they carry no meaning in an exam question.
  - U+2028 / U+2029 (line / paragraph separator) become ``\\n``: some JSONL readers split
    lines on them.
  - The text is NFC-normalised (a letter + combining mark becomes the composed letter).
    Zero-width characters, right-to-left marks, emoji etc. are kept as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from worker.commentary.rows import WaitingRequest
from worker.ops.error_log import record_error
from worker.queries import q
from worker.redact import redact

MAX_QUESTION_CHARS = 100_000
MAX_SUBJECT_CHARS = 1_000
LETTERS = "ABCDE"
REQUIRED_OPTIONS = "abcd"

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls except \t \n \r, DEL, and C1 controls.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Characters that render as nothing: zero-width space/joiners, direction marks, word joiner
# and invisible operators, BOM, soft hyphen, combining grapheme joiner, Mongolian separator.
_DIRTY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad\u034f\u180e]")


def clean_text(s: str | None) -> str:
    """The text as it may be sent to a provider (see the module docstring); ``None`` -> ''."""
    if not s:
        return ""
    if _DIRTY.search(s) is None:
        # Fast path (almost every string): nothing to strip, and ASCII is always NFC.
        if s.isascii() or unicodedata.is_normalized("NFC", s):
            return s
        return unicodedata.normalize("NFC", s)
    s = _SURROGATES.sub("\ufffd", s)
    s = _CONTROLS.sub("", s)
    s = s.replace("\u2028", "\n").replace("\u2029", "\n")
    return unicodedata.normalize("NFC", s)


def is_blank(s: str | None) -> bool:
    """Nothing visible: empty, whitespace, control or zero-width characters only."""
    return not _INVISIBLE.sub("", clean_text(s)).strip()


def check_question(row: Mapping[str, Any]) -> str | None:
    """Why this question must not be sent (a readable reason), or None when it may be.

    ``row`` has the ``questions`` columns ``question`` and ``option_a`` … ``option_e``;
    missing keys and NULLs count as empty."""
    if is_blank(row.get("question")):
        return "the question text is empty"
    empty = [x.upper() for x in REQUIRED_OPTIONS if is_blank(row.get(f"option_{x}"))]
    if len(empty) == len(REQUIRED_OPTIONS):
        return "options A-D are all empty (missing)"
    if len(empty) == 1:
        return f"option {empty[0]} is empty"
    if empty:
        return f"options {', '.join(empty)} are empty"
    size = sum(
        len(clean_text(row.get(k)))
        for k in ("question", "option_a", "option_b", "option_c", "option_d", "option_e")
    )
    if size > MAX_QUESTION_CHARS:
        return (
            f"question and options are {size:,} characters, more than the limit of "
            f"{MAX_QUESTION_CHARS:,}"
        )
    subject = len(clean_text(row.get("subject")))
    if subject > MAX_SUBJECT_CHARS:
        return (
            f"the subject is {subject:,} characters, more than the limit of {MAX_SUBJECT_CHARS:,}"
        )
    return None


def official_answer(row: Mapping[str, Any]) -> str | None:
    """The official answer letter to give the summary, or None (sent as 'unbekannt')."""
    raw = row.get("correct_answer")
    letter = raw.strip().upper() if isinstance(raw, str) else ""
    if len(letter) != 1 or letter not in LETTERS:
        return None
    if is_blank(row.get(f"option_{letter.lower()}")):
        return None
    return letter


def answer_problem(row: Mapping[str, Any]) -> str | None:
    """Why the official answer is not usable (a warning: the question is still sent), or
    None. A missing (NULL or blank) answer is not a problem: it is simply not known."""
    raw = row.get("correct_answer")
    if raw is None or not str(raw).strip() or official_answer(row) is not None:
        return None
    shown = clean_text(str(raw))[:20]
    letter = shown.strip().upper()
    if len(letter) == 1 and letter in LETTERS:
        return f"correct_answer {shown!r} names option {letter}, which is empty"
    return f"correct_answer {shown!r} is not one of A-E"


async def reject_bad_questions(
    conn: AsyncConnection[Any], rows: Sequence[WaitingRequest], model_key: str
) -> list[WaitingRequest]:
    """The rows (from ``take_waiting``) that may be sent. The others' questions are failed
    (``fail_questions``) and recorded, in the caller's transaction; for the summary stage a
    bad ``correct_answer`` is recorded as a warning (the row is still sent)."""
    good: list[WaitingRequest] = []
    bad: dict[Any, str] = {}
    for row in rows:
        reason = check_question(row.columns())
        if reason is None:
            good.append(row)
            if model_key == "summary" and (problem := answer_problem(row.columns())):
                await record_error(
                    conn,
                    "bad_correct_answer",
                    f"question {row.question_id}: {problem}; the summary was requested "
                    "with the official answer 'unbekannt'",
                    question_id=row.question_id,
                    fingerprint=f"bad-answer:{row.question_id}",
                )
            continue
        bad[row.question_id] = reason
    await fail_questions(conn, bad)
    return good


async def fail_questions(conn: AsyncConnection[Any], bad: Mapping[Any, str]) -> None:
    """Fail the questions ``bad`` maps to a reason, with their waiting requests, and record
    each once (kind ``bad_question``), in the caller's transaction."""
    if not bad:
        return
    cur = await conn.execute(
        q("fail_questions"), {"ids": list(bad), "reasons": [redact(r) for r in bad.values()]}
    )
    # Recorded once, by the submit that failed the question (others may judge it too).
    for (qid,) in await cur.fetchall():
        await record_error(
            conn,
            "bad_question",
            f"question {qid} not sent to any model: {bad[qid]}",
            question_id=qid,
            fingerprint=f"bad-question:{qid}",
        )
