"""Named SQL: the statements each stage runs, kept in ``worker/sql/*.sql`` and looked up by
name (``-- name: claim_pending`` starts a query). Loaded once; every value is a bind
parameter."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString

_DIR = Path(__file__).resolve().parent / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def _all() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(_DIR.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in out:
                raise RuntimeError(f"duplicate query name {name} in {path.name}")
            out[name] = body.strip().rstrip(";")
    return out


def q(name: str) -> LiteralString:
    """The SQL text of query ``name``."""
    return _all()[name]
