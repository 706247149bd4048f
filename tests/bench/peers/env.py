"""Throw-away environments for the peers, installed on demand under ``.bench-peers/``.

Nothing here touches the project's own virtualenv: pgqueuer and pgai each get a
virtualenv of their own, graphile-worker a ``node_modules`` of its own, all under the
gitignored ``.bench-peers/`` at the repository root (``PEERS_DIR`` overrides). Versions are
pinned so a rerun measures the same peer (``PEERS_PGQUEUER_VERSION``, ``PEERS_PGAI_VERSION``,
``PEERS_GRAPHILE_VERSION`` measure another release); an install that fails raises
:class:`PeerUnavailable` with the installer's last lines, and the bench reports that peer
as unavailable.

pgai: its ``vectorizer-worker`` extra pulls docling, pymupdf4llm and google-cloud-aiplatform
(document parsing and Vertex AI, several GB with torch) that a text column embedded through
an OpenAI-compatible endpoint never imports; we install the rest of that extra's list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PEERS_DIR = Path(os.environ.get("PEERS_DIR", ROOT / ".bench-peers"))

PGQUEUER_VERSION = os.environ.get("PEERS_PGQUEUER_VERSION", "1.6.0")
PGAI_VERSION = os.environ.get("PEERS_PGAI_VERSION", "0.12.1")
GRAPHILE_VERSION = os.environ.get("PEERS_GRAPHILE_VERSION", "0.18.0")

PIP_SPECS: dict[str, list[str]] = {
    "pgqueuer": [f"pgqueuer=={PGQUEUER_VERSION}", "psycopg[binary]>=3.2,<4", "asyncpg>=0.29"],
    "pgai": [
        f"pgai=={PGAI_VERSION}",
        # pgai's [vectorizer-worker] extra without docling / pymupdf4llm / aiplatform
        "boto3>=1.35,<2",
        "exceptiongroup<2",
        "filetype==1.2.0",
        "ijson>=3.3",
        "langchain-text-splitters>=0.2,<1",
        "litellm>=1.65,<1.73",
        "mistral-common>=1,<2",
        "ollama>=0.4.5,<0.6",
        "openai>=1.44,<2",
        "pgvector>=0.3,<1",
        "smart-open==7.1.0",
        "tiktoken>=0.7,<1",
        "voyageai>=0.3.1,<0.3.2",
    ],
}


class PeerUnavailable(RuntimeError):
    """The peer could not be installed or started here (the message says why)."""


@dataclass(frozen=True)
class PythonPeer:
    name: str
    python: Path
    version: str


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 1800) -> None:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise PeerUnavailable(
            f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): "
            + _tail(proc.stdout + proc.stderr)
        )


def python_peer(name: str) -> PythonPeer:
    """The peer's own virtualenv, created and filled on first use (a marker file records
    the specs it was filled with, so a changed pin reinstalls)."""
    specs = PIP_SPECS[name]
    venv = PEERS_DIR / name
    py = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = "\n".join(specs)
    if not (marker.exists() and marker.read_text() == wanted and py.exists()):
        print(f"installing {name} into {venv} (once) ...", flush=True)
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        if venv.exists():
            shutil.rmtree(venv)
        try:
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *specs])
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"{name}: {exc}") from exc
        marker.write_text(wanted)
    version = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not version:
        raise PeerUnavailable(f"{name} is not importable in {venv}")
    return PythonPeer(name, py, version)


def graphile_dir() -> tuple[Path, str]:
    """``node_modules`` with graphile-worker; returns (project dir, installed version)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node or not npm:
        raise PeerUnavailable("graphile-worker needs node and npm on PATH")
    where = PEERS_DIR / "graphile"
    pkg = where / "node_modules" / "graphile-worker" / "package.json"
    if not pkg.exists() or f'"version": "{GRAPHILE_VERSION}"' not in pkg.read_text():
        print(f"installing graphile-worker into {where} (once) ...", flush=True)
        where.mkdir(parents=True, exist_ok=True)
        (where / "package.json").write_text('{"name": "bench-peers", "private": true}\n')
        try:
            _run(
                [npm, "install", "--no-audit", "--no-fund", f"graphile-worker@{GRAPHILE_VERSION}"],
                cwd=where,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"graphile-worker: {exc}") from exc
    return where, GRAPHILE_VERSION
