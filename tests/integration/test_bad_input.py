"""The bad-input corpus (issue #5 item 8): each bad item, among normal questions, gets a
clear recorded error a person can read with psql (``worker_errors``: kind, message naming
the question or batch, occurrences; the question's ``ai_commentary_error``; the request's
``last_error``), the other questions complete, and the worker keeps running (drain reaches
idle, no task run ended in an error).

Bad questions go in as rows; bad model output comes from the emulator where it can make it
(broken result lines, schema violations) and otherwise from the real result stream of a
real emulator batch with one thing changed (non-JSON answers, a truncated file, unknown
ids, duplicates, unencodable text). The policy for bad questions is documented in
``worker.commentary.question_input``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from tests.fixtures.pipeline import (
    DEFAULT_MODELS,
    adrain,
    drain,
    one_round,
    set_models,
    status_counts,
)
from worker.commentary import custom_ids, submit
from worker.emulator import Emulator
from worker.emulator.content import unit_fraction
from worker.providers.base import BatchStatus, ChatRequest, ResultLine
from worker.providers.jsonl import recover_id
from worker.providers.openai import OpenAIBatch

pytestmark = pytest.mark.timeout(120)

GOOD = {
    "question": "Welches Organ produziert Insulin?",
    "option_a": "Leber",
    "option_b": "Pankreas",
    "option_c": "Milz",
    "option_d": "Niere",
    "option_e": "Herz",
    "correct_answer": "B",
    "subject": "Physiologie",
}
COLUMNS = tuple(GOOD)


# ------------------------------------------------------------------------------- helpers


def only(db: psycopg.Connection[Any], **models: bool) -> None:
    set_models(db, **{m: False for m in DEFAULT_MODELS})
    set_models(db, **models)


def insert_question(
    db: psycopg.Connection[Any], status: str | None = "pending", **overrides: Any
) -> uuid.UUID:
    values = {**GOOD, **overrides}
    row = db.execute(
        f"INSERT INTO questions ({', '.join(COLUMNS)}, ai_commentary_status)"
        f" VALUES ({', '.join(['%s'] * len(COLUMNS))}, %s) RETURNING id",
        (*(values[c] for c in COLUMNS), status),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def mixed_seed(kind: str, ids: list[uuid.UUID], model_key: str, rate: float) -> int:
    """An emulator seed for which some but not all of these questions' lines get the
    ``kind`` fault at ``rate`` (the emulator's own per-line dice). Question ids are random
    UUIDs, so a fixed seed would make every line fail (or none) once in a few thousand
    runs (the flaky ``12 < 12``)."""
    cids = [custom_ids.make(qid, model_key) for qid in ids]
    for seed in range(1000):
        hits = sum(unit_fraction(seed, kind, cid) < rate for cid in cids)
        if 0 < hits < len(cids):
            return seed
    raise AssertionError("no seed gives a mixed outcome")


def insert_good(db: psycopg.Connection[Any], n: int) -> list[uuid.UUID]:
    return [insert_question(db, question=f"Frage {i}: {GOOD['question']}") for i in range(n)]


def question(db: psycopg.Connection[Any], qid: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT ai_commentary_status AS status, ai_commentary_error AS error"
        " FROM questions WHERE id = %s",
        (qid,),
    ).fetchone()
    assert row is not None
    return dict(row)


def errors(db: psycopg.Connection[Any], kind: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.execute(
            "SELECT kind, provider, question_id, batch_job_id, message, occurrences,"
            " first_seen_at, last_seen_at FROM worker_errors WHERE kind = %s ORDER BY id",
            (kind,),
        ).fetchall()
    ]


def assert_no_crash(db: psycopg.Connection[Any]) -> None:
    """Every task run of the worker ended normally (a crash records 'error: <type>')."""
    bad = db.execute(
        "SELECT task_name, outcome FROM worker_task_runs WHERE outcome <> 'ok'"
    ).fetchall()
    assert bad == []


def comment_count(db: psycopg.Connection[Any], model_key: str) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM ai_answer_comments WHERE model_key = %s", (model_key,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def sent_ids(stats: dict[str, Any]) -> set[str]:
    """Every custom_id that reached a batch provider."""
    return {cid for p in ("openai", "gemini", "mistral") for cid in stats[p]["custom_ids"]}


def tamper_openai_results(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[list[ResultLine]], list[ResultLine]]
) -> None:
    """Real OpenAI batches on the emulator, real download and parsing; ``change`` edits the
    parsed result stream of each *chatgpt* batch before the worker ingests it."""
    original = OpenAIBatch.results

    async def results(self: OpenAIBatch, status: BatchStatus) -> AsyncIterator[ResultLine]:
        lines = [line async for line in original(self, status)]
        if lines and custom_ids.parse(lines[0].custom_id)[1] == "chatgpt":
            lines = change(lines)
        for line in lines:
            yield line

    monkeypatch.setattr(OpenAIBatch, "results", results)


def capture_openai_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, ChatRequest]:
    """The requests every OpenAI batch was created with, by custom_id."""
    sent: dict[str, ChatRequest] = {}
    original = OpenAIBatch.submit

    async def spy(self: OpenAIBatch, model: str, requests: Any, **kwargs: Any) -> Any:
        sent.update({r.custom_id: r for r in requests})
        return await original(self, model, requests, **kwargs)

    monkeypatch.setattr(OpenAIBatch, "submit", spy)
    return sent


def answer(general_comment: str = "Das Pankreas bildet Insulin.", **extra: Any) -> str:
    return json.dumps(
        {
            "chosen_answer": "B",
            "general_comment": general_comment,
            **{f"comment_{x}": f"Option {x.upper()}" for x in "abcde"},
            **extra,
        },
        ensure_ascii=True,
    )


# ------------------------------------------------------------------ bad questions (policy)

BAD_QUESTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "empty_option": ({"option_c": ""}, "option C is empty"),
    "missing_options": (
        {f"option_{x}": "" for x in "abcde"},
        "options A-D are all empty (missing)",
    ),
    "invisible_option": ({"option_b": " \u200b\u00a0\u2060 "}, "option B is empty"),
    "empty_question": ({"question": " \n\t "}, "the question text is empty"),
    "text_200kb": (
        {"question": "Eine sehr lange Fallbeschreibung. " * 6_100},  # 207,400 characters
        "question and options are 207,4",
    ),
}


@pytest.mark.parametrize("case", list(BAD_QUESTIONS))
def test_bad_question_fails_with_reason_and_is_never_sent(
    pipeline: Emulator, db: psycopg.Connection[Any], case: str
) -> None:
    overrides, reason = BAD_QUESTIONS[case]
    only(db, chatgpt=True, perplexity=True)  # one batch model, one instant model
    good = insert_good(db, 4)
    bad = insert_question(db, **overrides)

    assert drain(60) == 0
    assert_no_crash(db)

    # the question: failed, with the reason where the UI/psql reads it
    q = question(db, bad)
    assert q["status"] == "failed"
    assert q["error"].startswith("bad question: ") and reason in q["error"]
    # its requests: failed with the same reason, no attempt spent, never sent anywhere
    reqs = db.execute(
        "SELECT model_key, status, attempts, last_error, batch_job_id"
        " FROM ai_commentary_requests WHERE question_id = %s ORDER BY model_key",
        (bad,),
    ).fetchall()
    assert [r["model_key"] for r in reqs] == ["chatgpt", "perplexity", "summary"]
    for r in reqs:
        assert (r["status"], r["attempts"], r["batch_job_id"]) == ("failed", 0, None)
        assert r["last_error"] == q["error"]
    stats = pipeline.stats()
    assert not any(str(bad) in cid for cid in sent_ids(stats))
    assert stats["perplexity"]["chat_calls"] == len(good)
    # worker_errors: what, which question, how often
    (err,) = errors(db, "bad_question")
    assert err["question_id"] == bad and err["occurrences"] == 1
    assert str(bad) in err["message"] and reason in err["message"]
    assert "not sent" in err["message"]
    # the others completed, with comments and summaries
    assert status_counts(db) == {"completed": len(good), "failed": 1}
    assert comment_count(db, "chatgpt") == comment_count(db, "perplexity") == len(good)


def test_correct_answer_outside_a_to_e_is_sent_as_unknown_with_a_warning(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Policy: the comments do not depend on the official answer, so the question is sent;
    the summary gets 'unbekannt' instead of a bogus letter, and a person is told."""
    only(db, chatgpt=True)
    sent = capture_openai_requests(monkeypatch)
    good = insert_good(db, 2)
    not_a_letter = insert_question(db, correct_answer="F")
    empty_option = insert_question(db, correct_answer="E", option_e="")
    sloppy = insert_question(db, correct_answer=" b ")
    missing = insert_question(db, correct_answer=None)

    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(good) + 4}
    assert db.execute("SELECT count(*) AS n FROM ai_commentary_summaries").fetchone() == {
        "n": len(good) + 4
    }

    def official(qid: uuid.UUID) -> str:
        prompt = sent[custom_ids.make(qid, "summary")].user_prompt
        (line,) = [x for x in prompt.splitlines() if x.startswith("Offizielle Lösung: ")]
        return line.removeprefix("Offizielle Lösung: ")

    assert official(good[0]) == "B"
    assert official(sloppy) == "B"
    assert official(not_a_letter) == "unbekannt"
    assert official(empty_option) == "unbekannt"
    assert official(missing) == "unbekannt"
    # the comment prompts never carry the official answer
    assert "Lösung" not in sent[custom_ids.make(not_a_letter, "chatgpt")].user_prompt

    warnings = {e["question_id"]: e for e in errors(db, "bad_correct_answer")}
    assert set(warnings) == {not_a_letter, empty_option}
    assert "correct_answer 'F' is not one of A-E" in warnings[not_a_letter]["message"]
    assert "names option E, which is empty" in warnings[empty_option]["message"]
    for qid, e in warnings.items():
        assert str(qid) in e["message"] and "unbekannt" in e["message"]
        assert e["occurrences"] == 1
    assert errors(db, "bad_question") == []


def test_nul_and_lone_surrogates_cannot_be_stored_in_a_question(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    """Why the corpus has no question with NUL bytes or invalid surrogates: Postgres text
    (UTF-8) cannot hold them, so the application's insert fails before the worker could see
    one. The worker still cleans both out of model output (see the output tests below)."""
    with pytest.raises(psycopg.DataError):
        insert_question(db, question="Frage mit \x00 NUL")
    with pytest.raises(UnicodeEncodeError):
        insert_question(db, option_a="Leber \udcff")
    assert status_counts(db) == {}


def test_odd_unicode_a_question_can_hold_is_cleaned_before_sending(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    only(db, chatgpt=True)
    sent = capture_openai_requests(monkeypatch)
    good = insert_good(db, 3)
    text = (
        "Steuer\x01zeichen\x1b[31m, DEL\x7f, C1\x85, Zeilen\u2028trenner\u2029Absatz, "
        "null\u200bbreit, RTL \u202eabc\u202c, Akut e\u0301, Emoji 🫀, Tab\tEnde"
    )
    odd = insert_question(db, question=text, option_a="Le\u0301ber\x02", subject="Phys\x03iologie")

    assert drain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(good) + 1}
    prompt = sent[custom_ids.make(odd, "chatgpt")].user_prompt
    for removed in ("\x01", "\x1b", "\x7f", "\x85", "\x02", "\u2028", "\u2029", "e\u0301"):
        assert removed not in prompt
    assert "Steuerzeichen[31m, DEL, C1, Zeilen\ntrenner\nAbsatz" in prompt
    # visible or meaningful characters are kept (combining marks composed: NFC)
    for kept in ("null\u200bbreit", "RTL \u202eabc\u202c", "Akut \u00e9", "🫀", "Tab\tEnde"):
        assert kept in prompt
    assert "A) L\u00e9ber\n" in prompt
    # the stored question is not changed
    stored = db.execute("SELECT question FROM questions WHERE id = %s", (odd,)).fetchone()
    assert stored == {"question": text}


# --------------------------------------------------------------------------- model output


def test_model_output_that_is_not_json_fails_the_question_after_max_attempts(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    only(db, chatgpt=True)
    db.execute("UPDATE ai_commentary_settings SET max_attempts = 2")
    good = insert_good(db, 4)
    victim = insert_question(db, question="Frage mit Prosa-Antwort")
    victim_cid = custom_ids.make(victim, "chatgpt")

    def prose(lines: list[ResultLine]) -> list[ResultLine]:
        return [
            ResultLine(custom_id=x.custom_id, ok=True, text="Ich denke, B ist richtig.")
            if x.custom_id == victim_cid
            else x
            for x in lines
        ]

    tamper_openai_results(monkeypatch, prose)
    assert drain(60) == 0
    assert_no_crash(db)

    q = question(db, victim)
    assert q["status"] == "failed"
    assert q["error"].startswith("chatgpt: invalid_output: model output is not JSON")
    req = db.execute(
        "SELECT attempts, last_error FROM ai_commentary_requests"
        " WHERE question_id = %s AND model_key = 'chatgpt'",
        (victim,),
    ).fetchone()
    assert req is not None and req["attempts"] == 2
    assert req["last_error"].startswith("invalid_output: model output is not JSON")
    errs = errors(db, "invalid_output")
    assert len(errs) == 2  # one per batch that carried it
    for e in errs:
        assert e["provider"] == "openai" and e["batch_job_id"] is not None
        assert f"{victim_cid}: invalid_output: model output is not JSON" in e["message"]
        assert e["message"].startswith("1 answers were not usable") and e["occurrences"] == 1
    assert status_counts(db) == {"completed": len(good), "failed": 1}
    assert comment_count(db, "chatgpt") == len(good)


async def test_schema_violating_answers_are_recorded_and_retried(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    only(db, mistral=True)
    ids = insert_good(db, 12)
    seed = mixed_seed("violation", ids, "mistral", 0.5)
    pipeline.configure(schema_violation_rate=0.5, seed=seed)
    await one_round(opened_app.connector.pool, db)

    job = db.execute(
        "SELECT id, failed_count, succeeded_count FROM ai_commentary_batch_jobs"
        " WHERE model_key = 'mistral'"
    ).fetchone()
    assert job is not None and 0 < job["failed_count"] < len(ids)
    waiting = db.execute(
        "SELECT question_id, last_error FROM ai_commentary_requests"
        " WHERE model_key = 'mistral' AND status = 'waiting' AND attempts = 1"
    ).fetchall()
    assert len(waiting) == job["failed_count"]
    for r in waiting:
        assert r["last_error"].startswith(
            "invalid_output: model output violates the Commentary schema: "
        )
    (err,) = errors(db, "invalid_output")
    assert err["batch_job_id"] == job["id"] and err["provider"] == "mistral"
    assert err["message"].startswith(f"{job['failed_count']} answers were not usable")
    assert any(custom_ids.make(r["question_id"], "mistral") in err["message"] for r in waiting)
    # the valid answers were kept, the others wait for the next batch
    assert comment_count(db, "mistral") == job["succeeded_count"]

    pipeline.configure(schema_violation_rate=0.0)
    assert await adrain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}
    assert comment_count(db, "mistral") == len(ids)


async def test_broken_result_lines_are_recorded_and_retried(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any
) -> None:
    """The provider's output file itself has lines that are not JSON (cut in half)."""
    only(db, chatgpt=True)
    ids = insert_good(db, 12)
    seed = mixed_seed("malformed", ids, "chatgpt", 0.4)
    pipeline.configure(malformed_line_rate=0.4, seed=seed)
    await one_round(opened_app.connector.pool, db)

    job = db.execute(
        "SELECT id, failed_count, missing_count FROM ai_commentary_batch_jobs"
        " WHERE model_key = 'chatgpt'"
    ).fetchone()
    assert job is not None and 0 < job["failed_count"] < len(ids)
    assert job["missing_count"] == 0  # the id of a broken line is still readable
    broken = db.execute(
        "SELECT question_id FROM ai_commentary_requests WHERE model_key = 'chatgpt'"
        " AND status = 'waiting' AND attempts = 1 AND last_error = 'malformed_line: invalid JSON'"
    ).fetchall()
    assert len(broken) == job["failed_count"]
    (err,) = errors(db, "malformed_line")
    assert err["batch_job_id"] == job["id"] and err["occurrences"] == 1
    assert err["message"].startswith(f"{job['failed_count']} result lines were not valid JSON")
    assert custom_ids.make(broken[0]["question_id"], "chatgpt") in err["message"]

    pipeline.configure(malformed_line_rate=0.0)
    assert await adrain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


def cut_last_line(path: str) -> str:
    """Cut the file two thirds into its last line, with no final newline (an interrupted
    download or write); return the custom_id of that line."""
    with open(path, "rb") as fh:
        data = fh.read().rstrip(b"\n")
    start = data.rfind(b"\n") + 1
    keep = data[: start + (len(data) - start) * 2 // 3]
    cid = recover_id(keep[start:])
    assert cid is not None and cid.endswith("-chatgpt")
    with open(path, "wb") as fh:
        fh.write(keep)
    return cid


async def test_truncated_result_file_loses_nothing(
    pipeline: Emulator,
    db: psycopg.Connection[Any],
    opened_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The downloaded output file ends in the middle of its last line (no newline)."""
    only(db, chatgpt=True)
    ids = insert_good(db, 6)
    cut: list[str] = []
    original = OpenAIBatch._download

    async def truncated(self: OpenAIBatch, file_id: str, path: str) -> None:
        await original(self, file_id, path)
        if not cut:  # only the first file: the retry downloads a whole one
            cut.append(cut_last_line(path))

    monkeypatch.setattr(OpenAIBatch, "_download", truncated)
    await one_round(opened_app.connector.pool, db)

    (victim,) = cut
    job = db.execute(
        "SELECT id, succeeded_count, failed_count, missing_count FROM ai_commentary_batch_jobs"
        " WHERE model_key = 'chatgpt'"
    ).fetchone()
    assert job is not None
    assert (job["succeeded_count"], job["failed_count"], job["missing_count"]) == (5, 1, 0)
    qid, _ = custom_ids.parse(victim)
    req = db.execute(
        "SELECT status, attempts, last_error FROM ai_commentary_requests"
        " WHERE question_id = %s AND model_key = 'chatgpt'",
        (qid,),
    ).fetchone()
    assert req == {"status": "waiting", "attempts": 1, "last_error": "malformed_line: invalid JSON"}
    (err,) = errors(db, "malformed_line")
    assert err["batch_job_id"] == job["id"]
    assert err["message"] == (
        "1 result lines were not valid JSON (truncated or broken file), "
        f"e.g. {victim}: malformed_line: invalid JSON"
    )

    assert await adrain(60) == 0  # the next download is whole
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}


def test_result_lines_with_unknown_ids_are_recorded_and_ignored(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    only(db, chatgpt=True)
    ids = insert_good(db, 5)
    # a real question that is not enrolled (status NULL): never sent, must not be written
    bystander = insert_question(db, status=None, question="Nicht eingereiht")
    foreign = custom_ids.make(bystander, "chatgpt")
    wrong_model = custom_ids.make(ids[0], "gemini")

    def extra(lines: list[ResultLine]) -> list[ResultLine]:
        return [
            ResultLine(custom_id="request-7", ok=True, text=answer()),
            *lines,
            ResultLine(custom_id=foreign, ok=True, text=answer("fremd")),
            ResultLine(custom_id=wrong_model, ok=True, text=answer("falsches Modell")),
        ]

    tamper_openai_results(monkeypatch, extra)
    assert drain(60) == 0
    assert_no_crash(db)

    assert status_counts(db) == {"completed": len(ids), None: 1}
    assert comment_count(db, "chatgpt") == len(ids)
    assert comment_count(db, "gemini") == 0
    assert db.execute(
        "SELECT count(*) AS n FROM ai_answer_comments WHERE question_id = %s", (bystander,)
    ).fetchone() == {"n": 0}
    job = db.execute(
        "SELECT id, succeeded_count, failed_count FROM ai_commentary_batch_jobs"
        " WHERE model_key = 'chatgpt'"
    ).fetchone()
    assert job is not None and (job["succeeded_count"], job["failed_count"]) == (len(ids), 0)
    by_message = {e["message"]: e for e in errors(db, "unknown_custom_id")}
    assert set(by_message) == {
        "result line with an id we never sent: 'request-7'",
        "result for model 'gemini' in a 'chatgpt' batch",
        "1 result lines for requests this batch does not hold (never sent in it, or already "
        f"settled), e.g. {foreign}",
    }
    for e in by_message.values():
        assert e["batch_job_id"] == job["id"] and e["provider"] == "openai"
        assert e["occurrences"] == 1


def test_duplicate_result_lines_are_recorded_and_the_first_one_wins(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    only(db, chatgpt=True)
    ids = insert_good(db, 5)
    doubled: list[str] = []

    def duplicate(lines: list[ResultLine]) -> list[ResultLine]:
        out = list(lines)
        for line in lines[:2]:
            doubled.append(line.custom_id)
            out.append(ResultLine(custom_id=line.custom_id, ok=True, text=answer("DUPLIKAT")))
        return out

    tamper_openai_results(monkeypatch, duplicate)
    assert drain(60) == 0
    assert_no_crash(db)

    assert status_counts(db) == {"completed": len(ids)}
    rows = db.execute(
        "SELECT question_id, count(*) AS n, max(general_comment) AS c FROM ai_answer_comments"
        " WHERE model_key = 'chatgpt' GROUP BY 1"
    ).fetchall()
    assert len(rows) == len(ids) and all(r["n"] == 1 for r in rows)
    assert not any(r["c"] == "DUPLIKAT" for r in rows)
    (err,) = errors(db, "duplicate_lines")
    assert err["provider"] == "openai" and err["batch_job_id"] is not None
    assert err["message"] == (
        "2 duplicate result lines ignored (the first line of each id was used), "
        f"e.g. {', '.join(doubled)}"
    )
    assert err["occurrences"] == 1


def test_unencodable_model_output_is_cleaned_not_fatal(
    pipeline: Emulator, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer with JSON escapes for NUL, a lone surrogate and control characters: valid
    JSON, but Postgres cannot store it; unclean it aborted the whole batch's ingest."""
    only(db, chatgpt=True)
    ids = insert_good(db, 4)
    victim_cid = custom_ids.make(ids[0], "chatgpt")
    nasty = answer("Pan\x00kreas \udcff bildet\x01 Insulin\u2028.", comment_c="Milz \ud800")
    assert "\\u0000" in nasty and "\\udcff" in nasty

    def odd(lines: list[ResultLine]) -> list[ResultLine]:
        return [
            ResultLine(custom_id=x.custom_id, ok=True, text=nasty)
            if x.custom_id == victim_cid
            else x
            for x in lines
        ]

    tamper_openai_results(monkeypatch, odd)
    assert drain(60) == 0
    assert_no_crash(db)

    assert status_counts(db) == {"completed": len(ids)}
    row = db.execute(
        "SELECT general_comment, comment_c FROM ai_answer_comments"
        " WHERE question_id = %s AND model_key = 'chatgpt'",
        (ids[0],),
    ).fetchone()
    assert row == {
        "general_comment": "Pankreas \ufffd bildet Insulin\n.",
        "comment_c": "Milz \ufffd",
    }


# -------------------------------------------------------------------------------- settings

INVALID_SETTINGS: dict[str, tuple[str, tuple[Any, ...], str]] = {
    # The settings triggers refuse these (schema/0017, tests/integration/test_poison_pills);
    # a row written before them is found by the worker's parser, by the same rules.
    # (A bad entry of `models` no longer stops the row: test_poison_pills.)
    "processing_delay_over_a_day": (
        "UPDATE ai_commentary_settings SET processing_delay_minutes = %s",
        (6000,),
        "processing_delay_minutes: Input should be less than or equal to 1440",
    ),
    "unknown_template_placeholder": (
        "UPDATE ai_commentary_settings SET user_prompt_template = %s",
        ("Frage: {frage}\nA) {option_a}",),
        "user_prompt_template: Value error, {frage} is not a known placeholder",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_SETTINGS))
async def test_invalid_settings_row_is_reported_and_nothing_is_lost(
    pipeline: Emulator, db: psycopg.Connection[Any], opened_app: Any, case: str
) -> None:
    sql, params, expected = INVALID_SETTINGS[case]
    only(db, chatgpt=True)
    with db.transaction():  # as a database from before schema/0017 holds it: no trigger
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(sql, params)
    ids = insert_good(db, 3)
    pool = opened_app.connector.pool

    for _ in range(2):
        report = await submit.run_submit(pool)
        assert "invalid ai_commentary_settings row" in report["error"]
    (err,) = errors(db, "settings")
    assert expected in err["message"] and err["occurrences"] == 2
    assert err["last_seen_at"] > err["first_seen_at"]
    assert status_counts(db) == {"pending": len(ids)}  # nothing claimed, nothing lost
    assert sent_ids(pipeline.stats()) == set()

    # a person fixes the row; the worker, still running, takes the work
    db.execute(
        "UPDATE ai_commentary_settings SET models = %s, user_prompt_template = NULL,"
        " processing_delay_minutes = 0",
        (json.dumps(DEFAULT_MODELS),),
    )
    assert await adrain(60) == 0
    assert_no_crash(db)
    assert status_counts(db) == {"completed": len(ids)}
