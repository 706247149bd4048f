"""A new user's first hour, from a fresh clone: `.env.example` copied to `.env` as is, then
the README's commands (`--help`, `db migrate`, the emulator with `--print-env`, `status`,
a first question, `run --until-idle`). The clone's own code runs (cwd on sys.path first),
with the project's virtualenv standing in for `make setup` (same dependencies).

The clone is of the committed HEAD: uncommitted changes are not part of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]

# The README's first question (section "Using it on your database").
FIRST_QUESTION = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
    " correct_answer, subject, ai_commentary_status)"
    " VALUES ('Welches Organ produziert Insulin?', 'Leber', 'Pankreas', 'Milz', 'Niere', '',"
    " 'B', 'Physiologie', 'pending')"
)


def _clean_env(**extra: str) -> dict[str, str]:
    """A new shell: nothing of ours exported (no keys, no base URLs, no test knobs)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(extra)
    return env


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    target = tmp_path / "pg-ai-worker"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copy(target / ".env.example", target / ".env")
    return target


def test_fresh_clone_with_env_example_runs_the_readme(clone: Path, empty_db_url: str) -> None:
    env = _clean_env(DATABASE_URL=empty_db_url)

    def worker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import worker; print(worker.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(clone), "the clone's code must run"

    out = worker("--help")
    assert out.returncode == 0, out.stderr
    assert "DATABASE_URL" in out.stdout and "``" not in out.stdout and ":mod:" not in out.stdout

    out = worker("db", "migrate")
    assert out.returncode == 0, out.stderr
    assert "applied 0022_first_hour.sql" in out.stdout and "Traceback" not in out.stderr

    port = free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "worker", "emulator", "--port", str(port), "--state-seconds", "0"],
        cwd=clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1)
                break
            except httpx.HTTPError:
                assert emulator.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        # eval "$(python -m worker emulator --print-env --port N)"
        out = worker("emulator", "--print-env", "--port", str(port))
        assert out.returncode == 0, out.stderr
        for line in out.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
        assert env["OPENAI_API_KEY"] and env["GEMINI_BASE_URL"].endswith(f":{port}/gemini")

        out = worker("status")
        assert out.returncode == 0, out.stderr

        with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as db:
            # The README: processing_delay_minutes (3 by default) lets editors fix a new
            # question before it is paid for; set 0 to have it picked up at once.
            db.execute("UPDATE ai_commentary_settings SET processing_delay_minutes = 0")
            db.execute(FIRST_QUESTION)

            out = worker("run", "--until-idle", "--timeout", "180", timeout=240)
            assert out.returncode == 0, out.stderr[-3000:]
            assert "Traceback" not in out.stderr
            assert "is not configured" not in out.stderr, "the emulator env lacked a key"
            row: Any = db.execute(
                "SELECT q.ai_commentary_status AS status,"
                " (SELECT array_agg(model_key ORDER BY model_key) FROM ai_answer_comments c"
                "   WHERE c.question_id = q.id) AS models,"
                " EXISTS (SELECT 1 FROM ai_commentary_summaries s WHERE s.question_id = q.id)"
                "   AS summary"
                " FROM questions q"
            ).fetchone()
        assert row == {
            "status": "completed",
            "models": ["chatgpt", "gemini", "mistral"],
            "summary": True,
        }
        out = worker("status")
        assert out.returncode == 0 and "completed" in out.stdout, out.stdout + out.stderr
    finally:
        emulator.terminate()
        emulator.wait(10)
