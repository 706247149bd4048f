"""worker.commentary.question_input: which questions are refused, which answers are unknown, and how
text is cleaned before it is sent (the policy is in the module docstring)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.commentary.question_input import (
    MAX_QUESTION_CHARS,
    answer_problem,
    check_question,
    clean_text,
    is_blank,
    official_answer,
)

GOOD: dict[str, Any] = {
    "question": "Welches Organ produziert Insulin?",
    "option_a": "Leber",
    "option_b": "Pankreas",
    "option_c": "Milz",
    "option_d": "Niere",
    "option_e": "Herz",
    "correct_answer": "B",
}


# ------------------------------------------------------------------------------ clean_text


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        (None, ""),
        ("", ""),
        ("Pankreas", "Pankreas"),
        ("Pan\x00kreas", "Pankreas"),
        ("Leber \udcff", "Leber \ufffd"),
        ("\ud800\udc00", "\ufffd\ufffd"),  # a surrogate *pair* in a str is still two lone ones
        ("a\x01b\x08c\x0bd\x0ce\x1bf\x7fg\x85h\x9fi", "abcdefghi"),
        ("Tab\tNeue\nZeile\r\n", "Tab\tNeue\nZeile\r\n"),
        ("Zeilen\u2028trenner\u2029Absatz", "Zeilen\ntrenner\nAbsatz"),
        ("Le\u0301ber", "L\u00e9ber"),  # NFC: combining mark composed
        ("null\u200bbreit \u202eRTL\u202c 🫀 \u00a0", "null\u200bbreit \u202eRTL\u202c 🫀 \u00a0"),
        ("ﬁ ½ ²", "ﬁ ½ ²"),  # NFC, not NFKC: compatibility characters stay
    ],
)
def test_clean_text(raw: str | None, cleaned: str) -> None:
    assert clean_text(raw) == cleaned


def test_clean_text_output_can_always_be_encoded_and_is_stable() -> None:
    nasty = "".join(chr(c) for c in range(0, 0x3000)) + "\ud800\udfff\U0001f600"
    out = clean_text(nasty)
    out.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in out
    assert clean_text(out) == out


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        (None, True),
        ("", True),
        ("   \n\t", True),
        ("\u200b\u2060\ufeff\u00a0\u00ad", True),
        ("\x01\x02", True),
        ("A", False),
        ("\u200bA", False),
        ("0", False),
        ("-", False),
    ],
)
def test_is_blank(text: str | None, blank: bool) -> None:
    assert is_blank(text) is blank


# -------------------------------------------------------------------------- check_question


def test_a_normal_question_passes() -> None:
    assert check_question(GOOD) is None


def test_four_options_are_enough() -> None:
    assert check_question({**GOOD, "option_e": ""}) is None
    assert check_question({**GOOD, "option_e": None}) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"question": ""}, "the question text is empty"),
        ({"question": None}, "the question text is empty"),
        ({"question": " \u200b "}, "the question text is empty"),
        ({"option_c": ""}, "option C is empty"),
        ({"option_a": None}, "option A is empty"),
        ({"option_d": "\u00a0"}, "option D is empty"),
        ({"option_b": "", "option_d": " "}, "options B, D are empty"),
        (
            {"option_a": "", "option_b": "", "option_c": "", "option_d": "", "option_e": ""},
            "options A-D are all empty (missing)",
        ),
    ],
)
def test_empty_or_missing_text_is_refused(changes: dict[str, Any], reason: str) -> None:
    assert check_question({**GOOD, **changes}) == reason


def test_missing_keys_count_as_empty() -> None:
    assert check_question({"question": "Frage?"}) == "options A-D are all empty (missing)"
    assert check_question({}) == "the question text is empty"


def test_an_empty_question_is_reported_before_its_options() -> None:
    assert check_question({"question": ""}) == "the question text is empty"


def test_size_limit_counts_question_and_all_options() -> None:
    options = sum(len(GOOD[f"option_{x}"]) for x in "abcde")
    at_limit = {**GOOD, "question": "x" * (MAX_QUESTION_CHARS - options)}
    assert check_question(at_limit) is None
    over = {**at_limit, "option_e": GOOD["option_e"] + "y"}
    assert check_question(over) == (
        f"question and options are {MAX_QUESTION_CHARS + 1:,} characters, more than the "
        f"limit of {MAX_QUESTION_CHARS:,}"
    )


def test_200_kb_of_text_is_refused() -> None:
    reason = check_question({**GOOD, "option_b": "Pankreas " * 23_000})
    assert reason is not None and "207,0" in reason and "limit of 100,000" in reason


def test_size_is_measured_after_cleaning() -> None:
    # 150 K of control characters clean to nothing: the question is short.
    text = "Frage?" + "\x01" * 150_000
    assert check_question({**GOOD, "question": text}) is None


def test_odd_but_storable_text_passes() -> None:
    odd = {
        **GOOD,
        "question": "Zeilen\u2028trenner, null\u200bbreit, e\u0301, 🫀, \x01",
        "option_a": "\u202eRTL\u202c",
    }
    assert check_question(odd) is None


# --------------------------------------------------------------- official answer (summary)


@pytest.mark.parametrize(
    ("correct", "option_e", "letter", "problem"),
    [
        ("B", "Herz", "B", None),
        (" b ", "Herz", "B", None),
        ("E", "Herz", "E", None),
        (None, "Herz", None, None),
        ("", "Herz", None, None),
        ("  ", "Herz", None, None),
        ("F", "Herz", None, "correct_answer 'F' is not one of A-E"),
        ("AB", "Herz", None, "correct_answer 'AB' is not one of A-E"),
        ("2", "Herz", None, "correct_answer '2' is not one of A-E"),
        ("E", "", None, "correct_answer 'E' names option E, which is empty"),
        ("e", None, None, "correct_answer 'e' names option E, which is empty"),
    ],
)
def test_official_answer(
    correct: str | None, option_e: str | None, letter: str | None, problem: str | None
) -> None:
    row = {**GOOD, "correct_answer": correct, "option_e": option_e}
    assert official_answer(row) == letter
    assert answer_problem(row) == problem


def test_answer_problem_quotes_a_long_value_short_and_clean() -> None:
    problem = answer_problem({**GOOD, "correct_answer": "\x00" + "Z" * 100})
    assert problem == f"correct_answer {'Z' * 20!r} is not one of A-E"
