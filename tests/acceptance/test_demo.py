"""`python -m worker demo` shows the product: what it runs against first, one question in
full (every model's answer, comments A–E, the summary), the table in the sample file's order,
only this run's batches, prices as "would cost" on the emulator, and how to open the result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from worker.demo import load_questions

KEYS = ("OPENAI", "GEMINI", "MISTRAL", "OPENROUTER", "PERPLEXITY", "DEEPSEEK")


def _demo(url: str, cwd: Path, n: int) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL")) and k not in ("DATABASE_URL",)
    }
    env["DEMO_DATABASE_URL"] = url
    out = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--questions", str(n)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return out.stdout


def test_demo_shows_the_product(empty_db_url: str, tmp_path: Path) -> None:
    n = 4
    sample = load_questions()[:n]
    four = next(i for i, q in enumerate(sample) if not q["option_e"])  # the 4-option one
    text = _demo(empty_db_url, tmp_path, n)
    lines = text.splitlines()

    # what it runs against and what the answers mean, before anything else
    head = "\n".join(lines[:8])
    assert "BUILT-IN EMULATOR" in head and "not medicine" in head and "by chance" in head

    # one question in full: every model's chosen answer and comments A-E, and the summary
    full = text[text.index("Question 1 in full") : text.index("All questions")]
    models = re.findall(
        r"^  (\w+) \((\w+) [^,]+, (batch|instant)\): chose ([A-E]) [✓✗]$", full, re.M
    )
    assert {m[0] for m in models} == {"chatgpt", "gemini", "mistral", "perplexity"}
    for letter in "ABCDE":
        assert len(re.findall(rf"^      {letter}: \S", full, re.M)) == len(models) + 1  # + summary
    assert "Summary (Zusammenfassung):" in full and "Models: " in full

    # the table in the sample file's order, with full model names in the header
    table = text[text.index("All questions") :]
    header = next(line for line in table.splitlines() if line.lstrip().startswith("#"))
    assert all(m in header.split() for m in ("chatgpt", "gemini", "mistral", "perplexity"))
    rows = re.findall(r"^\s+(\d+) (.{16}) ", table, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, n + 1))
    assert [r[1].strip() for r in rows] == [q["subject"][:16] for q in sample]

    # money: nothing spent on the emulator, the price it would have had
    flat = " ".join(text.split())
    assert "nothing was spent (emulator)" in flat and "would cost $" in flat
    assert "cost $" not in flat.replace("would cost $", "")
    # how to open it
    assert "python -m worker db psql" in text

    # four-option question: sent as four options, so no model answered E
    with psycopg.connect(empty_db_url, row_factory=dict_row) as db:
        got: list[Any] = db.execute(
            "SELECT c.chosen_answer FROM ai_answer_comments c JOIN questions q"
            " ON q.id = c.question_id WHERE q.question = %s",
            (sample[four]["question"],),
        ).fetchall()
    assert len(got) == 4 and all(r["chosen_answer"] in "ABCD" for r in got), got

    # a second run counts only its own batches
    sent = re.search(r"This run sent (.*?) \(", text.replace("\n  ", " "))
    again = _demo(empty_db_url, tmp_path, n)
    sent_again = re.search(r"This run sent (.*?) \(", again.replace("\n  ", " "))
    assert sent and sent_again and sent.group(1) == sent_again.group(1), (sent, sent_again)
