"""The built wheel is enough to run the worker: its schema files ship inside the package.

Builds the wheel from a copy of the working tree (pip, with build isolation, as a user
would), installs it into a fresh virtualenv outside the repository, and runs
`python -m worker db migrate`, `db status` and `status` against a scratch database.

Speed: the fresh virtualenv gets the wheel itself (`pip install --no-deps`) and borrows the
already-installed dependencies of the project's .venv through a `.pth` line, instead of
resolving ~60 packages again (a `.pth` line only adds the directory: the editable install's
own `.pth` hook there is not run, so only the wheel's `worker` is importable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = (".venv", ".git", ".data", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


def test_wheel_installs_and_migrates_outside_the_repository(
    tmp_path: Path, empty_db_url: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SKIP))
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        tmp_path / "dist",
        src,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("pg_ai_worker-*.whl")
    shutil.rmtree(src)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-deps",
        wheel,
        cwd=tmp_path,
    )
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).strip()
    )
    (site / "_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["DATABASE_URL"] = empty_db_url
    where = _run(python, "-c", "import worker; print(worker.__file__)", cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(site), where

    out = _run(python, "-m", "worker", "db", "migrate", cwd=work, env=env)
    shipped = sorted(p.name for p in (site / "worker" / "schema").glob("*.sql"))
    assert shipped == sorted(p.name for p in (ROOT / "worker" / "schema").glob("*.sql"))
    for name in shipped:
        assert f"applied {name}" in out, out
    assert "schema is up to date and intact" in _run(
        python, "-m", "worker", "db", "status", cwd=work, env=env
    )
    status = _run(python, "-m", "worker", "status", cwd=work, env=env)
    assert "Questions" in status or "questions" in status, status
