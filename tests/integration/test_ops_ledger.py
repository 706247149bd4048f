"""The cost ledger against the emulator: what the views say we spent must equal the tokens
the emulator reports it served, times the price table (with the batch discount)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg

from tests.fixtures.pipeline import drain, insert_questions, status_counts
from worker.emulator import Emulator

N_QUESTIONS = 300
# Each recorded cost is rounded to 8 decimals (off by at most 0.5e-8); 5 rows per question.
TOLERANCE = Decimal("0.000000005") * 5 * N_QUESTIONS


def _price(db: psycopg.Connection[Any], provider: str, model: str) -> dict[str, Any]:
    rows = db.execute(
        "SELECT * FROM ai_model_prices WHERE provider = %s AND model IN (%s, '*')"
        " ORDER BY (model = %s) DESC LIMIT 1",
        (provider, model, model),
    ).fetchall()
    assert rows, f"no price for {provider}/{model}"
    return rows[0]


def _expected_from_emulator(
    db: psycopg.Connection[Any], stats: dict[str, Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(provider, model) -> tokens and cost computed from the emulator's usage counters."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for provider, st in stats.items():
        for model, modes in st["usage"].items():
            p = _price(db, provider, model)
            e = out.setdefault(
                (provider, model),
                {"input": 0, "output": 0, "cost": Decimal(0), "list": Decimal(0), "batch_input": 0},
            )
            for mode, u in modes.items():
                tin, tout = u["input_tokens"], u["output_tokens"]
                if tin == 0 and tout == 0:
                    continue
                at_list = (
                    tin * p["input_usd_per_mtok"] + tout * p["output_usd_per_mtok"]
                ) / Decimal(1_000_000)
                factor = 1 - p["batch_discount"] if mode == "batch" else Decimal(1)
                e["input"] += tin
                e["output"] += tout
                e["cost"] += at_list * factor
                if mode == "batch":
                    e["list"] += at_list
                    e["batch_input"] += tin
    return {k: v for k, v in out.items() if v["input"] or v["output"]}


def test_ledger_equals_emulator_usage_times_price_table(
    pipeline: Emulator, db: psycopg.Connection[Any]
) -> None:
    ids = insert_questions(db, N_QUESTIONS)
    assert drain(120) == 0
    assert status_counts(db) == {"completed": N_QUESTIONS}

    expected = _expected_from_emulator(db, pipeline.stats())
    # openai (comments + summaries), gemini, mistral in batches; perplexity, deepseek instant.
    assert {k[0] for k in expected} == {"openai", "gemini", "mistral", "perplexity", "deepseek"}

    by_model = {
        (r["provider"], r["model_name"]): r
        for r in db.execute("SELECT * FROM ai_cost_by_model").fetchall()
    }
    assert set(by_model) == set(expected)
    for key, e in expected.items():
        got = by_model[key]
        assert got["input_tokens"] == e["input"], key
        assert got["output_tokens"] == e["output"], key
        assert abs(got["cost_usd"] - e["cost"]) <= TOLERANCE, (key, got["cost_usd"], e["cost"])
        assert got["cost_usd"] > 0, key

    # Batch pricing: the savings view re-prices the batch rows at list price.
    savings = {
        (r["provider"], r["model_name"]): r
        for r in db.execute("SELECT * FROM ai_cost_batch_savings").fetchall()
    }
    assert set(savings) == {k for k, e in expected.items() if e["batch_input"]}
    assert ("perplexity", "sonar") not in savings
    for key, s in savings.items():
        e = expected[key]
        assert abs(s["list_cost_usd"] - e["list"]) <= TOLERANCE, key
        assert abs(s["batch_cost_usd"] - e["cost"]) <= TOLERANCE, key
        assert s["saved_usd"] == s["list_cost_usd"] - s["batch_cost_usd"]
        # The seeded prices give every batch model half off.
        assert abs(s["saved_usd"] - s["list_cost_usd"] / 2) <= TOLERANCE, key

    total = sum((e["cost"] for e in expected.values()), Decimal(0))
    daily = db.execute(
        "SELECT sum(cost_usd) AS cost, sum(requests) AS n, min(day) = current_date AS today"
        " FROM ai_cost_daily"
    ).fetchone()
    assert daily is not None
    assert abs(daily["cost"] - total) <= TOLERANCE
    assert daily["today"] is True
    # 5 model comments + 1 summary per question.
    assert daily["n"] == 6 * N_QUESTIONS

    per_q = db.execute(
        "SELECT count(*) AS n, sum(cost_usd) AS cost, min(requests) AS lo, max(requests) AS hi"
        " FROM ai_cost_by_question"
    ).fetchone()
    assert per_q == {"n": len(ids), "cost": daily["cost"], "lo": 6, "hi": 6}

    tokens = db.execute(
        "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o FROM ops_tokens_per_day"
    ).fetchone()
    assert tokens == {
        "i": sum(e["input"] for e in expected.values()),
        "o": sum(e["output"] for e in expected.values()),
    }
    assert db.execute("SELECT count(*) AS n FROM ai_cost_unpriced").fetchone() == {"n": 0}


def test_unpriced_model_shows_up_and_reprices(db: psycopg.Connection[Any]) -> None:
    (qid,) = insert_questions(db, 1, status="completed")
    db.execute(
        "INSERT INTO ai_answer_comments (question_id, model_key, provider, model_name,"
        " input_tokens, output_tokens, cost_usd, batch_priced)"
        " VALUES (%s, 'x', 'acme', 'acme-1', 1000000, 500000,"
        " worker_cost_usd('acme', 'acme-1', 1000000, 500000, true), true)",
        (qid,),
    )
    row = db.execute("SELECT * FROM ai_cost_unpriced").fetchone()
    assert row is not None and row["provider"] == "acme" and row["model_name"] == "acme-1"
    assert row["input_tokens"] == 1000000
    db.execute(
        "INSERT INTO ai_model_prices (provider, model, input_usd_per_mtok, output_usd_per_mtok,"
        " batch_discount) VALUES ('acme', 'acme-1', 2, 4, 0.25)"
    )
    assert db.execute("SELECT count(*) AS n FROM ai_cost_unpriced").fetchone() == {"n": 0}
    s = db.execute("SELECT * FROM ai_cost_batch_savings WHERE provider = 'acme'").fetchone()
    assert s is not None
    assert s["batch_cost_usd"] == 0  # recorded before the price existed
    assert s["list_cost_usd"] == Decimal("4")  # 1 Mtok x $2 + 0.5 Mtok x $4
