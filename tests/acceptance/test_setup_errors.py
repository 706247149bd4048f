"""Every set-up mistake a new user makes gives one line naming the fix, a non-zero exit and
no traceback (``--debug`` shows it): the real CLI in a subprocess, against real Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.bench.common import free_port
from tests.fixtures.database import PREFIX
from worker.database import with_database

MIGRATE = "run `python -m worker db migrate`"


def cli(
    *args: str, url: str | None, cwd: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    env.update(extra or {})
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,  # no .env there
        timeout=120,
    )


def assert_one_line(out: subprocess.CompletedProcess[str], *fix: str) -> str:
    """Exit 2, stderr is exactly one `error: ...` line naming the fix, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for text in fix:
        assert text in line, (text, line)
    return line


@pytest.fixture
def unreachable_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


@pytest.mark.parametrize("command", [["db", "migrate"], ["db", "status"], ["status"]])
def test_unreachable_database(command: list[str], unreachable_url: str, tmp_path: Path) -> None:
    out = cli(*command, url=unreachable_url, cwd=tmp_path)
    assert_one_line(out, "cannot connect", "127.0.0.1", "start PostgreSQL", "DATABASE_URL")


@pytest.mark.parametrize("command", [["db", "migrate"], ["status"], ["run", "--until-idle"]])
def test_malformed_database_url(command: list[str], tmp_path: Path) -> None:
    out = cli(*command, url="not-a-url", cwd=tmp_path)
    assert_one_line(out, "DATABASE_URL", "not a valid connection string", "postgresql://")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = cli("--debug", "db", "migrate", url="not-a-url", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: DATABASE_URL")


def test_database_that_does_not_exist(pg_server_url: str, tmp_path: Path) -> None:
    url = with_database(pg_server_url, f"{PREFIX}_never_created")
    assert_one_line(cli("status", url=url, cwd=tmp_path), "does not exist", "createdb")


@pytest.mark.parametrize("command", [["status"], ["run", "--until-idle"]])
def test_unmigrated_database(command: list[str], empty_db_url: str, tmp_path: Path) -> None:
    out = cli(*command, url=empty_db_url, cwd=tmp_path)
    assert_one_line(out, "not migrated", MIGRATE)


def test_db_status_on_an_unmigrated_database_says_what_to_run(
    empty_db_url: str, tmp_path: Path
) -> None:
    out = cli("db", "status", url=empty_db_url, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stdout.strip().splitlines()[-1].endswith(f"pending: {MIGRATE}")


def test_a_database_behind_this_version(db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM worker_schema_migrations WHERE filename = "
            "(SELECT max(filename) FROM worker_schema_migrations)"
        )
    assert_one_line(cli("status", url=db_url, cwd=tmp_path), "behind this version", MIGRATE)


def test_schema_drift_is_found_by_db_status_and_refused_by_status_and_run(
    db_url: str, tmp_path: Path
) -> None:
    ok = cli("db", "status", url=db_url, cwd=tmp_path)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE worker_task_runs")
    out = cli("db", "status", url=db_url, cwd=tmp_path)
    assert "MISSING table worker_task_runs" in out.stdout
    assert_one_line(out, "schema drift", "worker_task_runs", "restore")
    assert_one_line(cli("status", url=db_url, cwd=tmp_path), "schema drift", "worker_task_runs")
    out = cli("run", "--until-idle", "--timeout", "30", url=db_url, cwd=tmp_path)
    assert_one_line(out, "schema drift")
    # migrate cannot repair it (the ledger says applied) and says so instead of "up to date"
    out = cli("db", "migrate", url=db_url, cwd=tmp_path)
    assert "up to date" not in out.stdout
    assert_one_line(out, "schema drift")


@pytest.fixture
def unprivileged_role(pg_server_url: str) -> Iterator[str]:
    """A login role of this run with no privileges beyond PUBLIC's (dropped afterwards)."""
    role = f"{PREFIX}_nopriv"
    with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "DO $$BEGIN CREATE ROLE {} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$"
            ).format(sql.Identifier(role))
        )
    yield role
    with psycopg.connect(with_database(pg_server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _as_role(url: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(url, user=role, password=None)


def test_missing_privileges(
    empty_db_url: str, db_url: str, unprivileged_role: str, tmp_path: Path
) -> None:
    # migrate needs CREATE on schema public (PostgreSQL 15 grants it to nobody by default)
    out = cli("db", "migrate", url=_as_role(empty_db_url, unprivileged_role), cwd=tmp_path)
    assert_one_line(out, "lacks a privilege", "permission denied", "GRANT")
    # reading a migrated schema the role was never granted
    out = cli("status", url=_as_role(db_url, unprivileged_role), cwd=tmp_path)
    assert_one_line(out, unprivileged_role, "permission denied", "worker_grant_runtime")
    out = cli("run", "--until-idle", url=_as_role(db_url, unprivileged_role), cwd=tmp_path)
    assert_one_line(out, unprivileged_role, "worker_grant_runtime")


@pytest.mark.parametrize(
    ("line", "shown"), [("METRICS_PORT=eighty", "'eighty'"), ("LOG_LEVEL=verbose", "'verbose'")]
)
def test_invalid_setting_names_the_variable(tmp_path: Path, line: str, shown: str) -> None:
    (tmp_path / ".env").write_text(line + "\n")
    out = cli("status", url="not-a-url", cwd=tmp_path)
    assert_one_line(out, line.split("=")[0], shown, ".env")


def test_run_waits_for_the_database_and_obeys_ctrl_c(unreachable_url: str, tmp_path: Path) -> None:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env={**env, "DATABASE_URL": unreachable_url},
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "waiting for the database at postgres@127.0.0.1:" in first, first
        assert "Ctrl-C to stop" in first
        assert proc.poll() is None, "run gave up instead of waiting"
        proc.send_signal(signal.SIGINT)
        # generous bound (the figure is ~0.4 s): the wait must not hang on the pool
        assert proc.wait(timeout=20) == 130
        rest = proc.stderr.read()
        assert "Traceback" not in rest and rest.strip() == "interrupted", rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_into_a_closed_pipe_is_quiet(db_url: str, tmp_path: Path) -> None:
    """`status | head`: the reader is gone before status writes; no BrokenPipeError."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "worker", "status"],
            env={**env, "DATABASE_URL": db_url},
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
