"""The prompts, versioned. ``de-v1`` follows the original system: a German reviewer who does
not know the official answer sees only the question and its options. A settings row can
replace the system prompt and the user template (``{question}``, ``{option_a}``…); the
version string recorded with every comment says which prompt produced it."""

from __future__ import annotations

from dataclasses import dataclass

from worker.validation import render_template

SYSTEM_DE_V1 = (
    "Du bist ein erfahrener medizinischer Prüfer und begutachtest Multiple-Choice-Fragen "
    "aus deutschen Staatsexamina. Die offizielle Lösung kennst du nicht. Lies die Frage "
    "sorgfältig, entscheide dich für genau eine Antwort (A bis E) und begründe fachlich "
    "korrekt und knapp auf Deutsch. Kommentiere jede Antwortoption einzeln: warum sie "
    "zutrifft oder nicht. Wenn die Frage unklar oder fehlerhaft formuliert ist, schlage eine "
    "verbesserte Fassung der Frage und der Optionen vor, sonst lasse diese Felder leer (null). "
    "Antworte ausschließlich mit einem JSON-Objekt nach dem vorgegebenen Schema."
)

USER_DE_V1 = (
    "Frage:\n{question}\n\n"
    "A) {option_a}\n"
    "B) {option_b}\n"
    "C) {option_c}\n"
    "D) {option_d}\n"
    "E) {option_e}\n\n"
    "Welche Antwort ist richtig? Gib chosen_answer, general_comment und comment_a bis "
    "comment_e an."
)

# A question with four options (option_e empty) is sent as four options: no empty "E)" line,
# and the prompt, the system prompt and the answer schema (worker.commentary.schemas) all say A to D.
USER_DE_V1_FOUR = (
    "Frage:\n{question}\n\n"
    "A) {option_a}\n"
    "B) {option_b}\n"
    "C) {option_c}\n"
    "D) {option_d}\n\n"
    "Die Frage hat vier Antwortoptionen (A bis D). Welche Antwort ist richtig? Gib "
    "chosen_answer (A bis D), general_comment und comment_a bis comment_d an; comment_e "
    "bleibt leer."
)

SUMMARY_SYSTEM_DE_V1 = (
    "Du fasst die Kommentare mehrerer KI-Modelle zu einer medizinischen Prüfungsfrage für "
    "Studierende zusammen. Die offizielle Lösung ist angegeben. Schreibe auf Deutsch einen "
    "allgemeinen Kommentar (höchstens 150 Wörter) und je Antwortoption einen Kommentar "
    "(höchstens 50 Wörter). Beschreibe in model_agreement_analysis, wo die Modelle "
    "übereinstimmen, wo sie abweichen und ob sie die offizielle Lösung treffen. Antworte "
    "ausschließlich mit einem JSON-Objekt nach dem vorgegebenen Schema."
)


@dataclass(frozen=True)
class QuestionText:
    question: str
    option_a: str
    option_b: str
    option_c: str
    option_d: str
    option_e: str
    subject: str | None = None
    correct_answer: str | None = None

    @property
    def letters(self) -> str:
        """The options the question has: ``ABCDE``, or ``ABCD`` when option E is empty."""
        return "ABCDE" if (self.option_e or "").strip() else "ABCD"


def system_prompt(q: QuestionText, custom: str | None = None) -> str:
    """The system prompt for ``q``: a settings row's own text as it is, else de-v1 with
    the range of answers the question actually has."""
    if custom:
        return custom
    return SYSTEM_DE_V1 if q.letters == "ABCDE" else SYSTEM_DE_V1.replace("(A bis E)", "(A bis D)")


def user_prompt(q: QuestionText, template: str | None = None) -> str:
    values = {
        "question": q.question,
        "option_a": q.option_a,
        "option_b": q.option_b,
        "option_c": q.option_c,
        "option_d": q.option_d,
        "option_e": q.option_e or "(keine Option E)",
        "subject": q.subject or "",
    }
    if template is None:
        template = USER_DE_V1 if q.letters == "ABCDE" else USER_DE_V1_FOUR
    # Plain substitution, never str.format on a user template (issue #11: a format spec
    # such as {question:>100000000000000} ran out of memory on every submit run).
    return render_template(template, values)


def summary_prompt(q: QuestionText, comments: dict[str, dict[str, str | None]]) -> str:
    lines = [
        f"Fach: {q.subject or 'unbekannt'}",
        f"Frage:\n{q.question}",
        "",
        *(f"{letter}) {getattr(q, 'option_' + letter.lower()) or '-'}" for letter in q.letters),
        *(
            []
            if q.letters == "ABCDE"
            else ["(Die Frage hat vier Antwortoptionen, A bis D: comment_e bleibt leer.)"]
        ),
        "",
        f"Offizielle Lösung: {q.correct_answer or 'unbekannt'}",
        "",
    ]
    for model_key in sorted(comments):
        c = comments[model_key]
        lines.append(f"## Modell {model_key}: gewählt {c.get('chosen_answer') or '?'}")
        lines.append(str(c.get("general_comment") or ""))
        for letter in q.letters.lower():
            text = c.get(f"comment_{letter}")
            if text:
                lines.append(f"{letter.upper()}: {text}")
        lines.append("")
    return "\n".join(lines)
