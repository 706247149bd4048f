"""Changing the settings row so that waiting work becomes sendable defers `submit` at once
(schema/0022), instead of leaving it to the next tick; other changes defer nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.test_triggers import submit_jobs


def _reset(db: psycopg.Connection[Any], **values: Any) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    db.execute(f"UPDATE ai_commentary_settings SET {sets}", values)  # type: ignore[arg-type]
    db.execute("DELETE FROM procrastinate_jobs WHERE task_name = 'submit'")
    assert submit_jobs(db) == 0


@pytest.mark.parametrize(
    ("before", "change"),
    [
        ({"feature_enabled": False}, "feature_enabled = true"),
        (
            {"models_enabled": '{"chatgpt": true, "gemini": false}'},
            "models_enabled = models_enabled || '{\"gemini\": true}'",
        ),
        ({"daily_budget_usd": 1}, "daily_budget_usd = 5"),
        ({"daily_budget_usd": 1}, "daily_budget_usd = NULL"),
        ({"processing_delay_minutes": 3}, "processing_delay_minutes = 0"),
        ({"batch_size": 10}, "batch_size = 40"),
    ],
)
def test_a_change_that_frees_work_wakes_submit(
    db: psycopg.Connection[Any], before: dict[str, Any], change: str
) -> None:
    _reset(db, **before)
    db.execute(f"UPDATE ai_commentary_settings SET {change}")  # type: ignore[arg-type]
    assert submit_jobs(db) == 1


@pytest.mark.parametrize(
    ("before", "change"),
    [
        ({"feature_enabled": True}, "feature_enabled = false"),
        ({"daily_budget_usd": 5}, "daily_budget_usd = 1"),
        ({"feature_enabled": False}, "daily_budget_usd = NULL, batch_size = batch_size + 1"),
        (
            {"models_enabled": '{"chatgpt": true, "gemini": true}'},
            'models_enabled = \'{"chatgpt": true, "gemini": false}\'',
        ),
    ],
)
def test_a_change_that_frees_nothing_defers_nothing(
    db: psycopg.Connection[Any], before: dict[str, Any], change: str
) -> None:
    _reset(db, **before)
    db.execute(f"UPDATE ai_commentary_settings SET {change}")  # type: ignore[arg-type]
    assert submit_jobs(db) == 0


def test_many_changes_keep_one_waiting_submit(db: psycopg.Connection[Any]) -> None:
    _reset(db, feature_enabled=False, processing_delay_minutes=5)
    db.execute("UPDATE ai_commentary_settings SET feature_enabled = true")
    db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0")
    assert submit_jobs(db) == 1
