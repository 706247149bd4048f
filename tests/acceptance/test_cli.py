"""The command surface as a user meets it."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from tests.bench.common import free_port


def test_emulator_command_serves_on_the_given_port() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "emulator", "--port", str(port), "--state-seconds", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/_emulator/config").json()["state_seconds"] == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_db_status_lists_migrations(db_url: str) -> None:
    import os

    out = subprocess.run(
        [sys.executable, "-m", "worker", "db", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": db_url},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("procrastinate/schema.sql") and "applied" in lines[0]
    assert any(line.startswith("0007_triggers.sql") and "applied" in line for line in lines)
