"""The README's module map lists every module of worker/ (and nothing that is gone)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker"
#: Folders the map names without listing their files.
OPAQUE = {"emulator", "sql", "schema", "data"}


def map_entries() -> set[str]:
    """Paths the map lists: level-1 lines are worker/'s own modules and folders, level-2
    lines the modules of the folder above them (two spaces a level; a name ends in .py or
    /; what follows two spaces is the description)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- module-map:start -->", 1)[1].split("<!-- module-map:end -->", 1)[0]
    entries: set[str] = set()
    folder: str | None = None
    for line in block.splitlines():
        indent = (len(line) - len(line.lstrip(" "))) // 2
        head = line.strip().split("  ")[0]
        names = re.findall(r"[A-Za-z_]+(?:\.py|/)", head)
        if not names or indent not in (1, 2):
            continue
        if indent == 1:
            folder = names[0].rstrip("/") if len(names) == 1 and names[0].endswith("/") else None
            entries.update(names)
        elif folder is not None:
            entries.update(f"{folder}/{name}" for name in names)
    return entries


def tree_entries() -> set[str]:
    out: set[str] = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in OPAQUE or "__pycache__" in rel.parts:
            continue
        if path.is_dir():
            out.add(f"{rel.as_posix()}/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            out.add(rel.as_posix())
    for folder in OPAQUE:
        out.add(f"{folder}/")
    return out


def test_the_readme_map_matches_the_tree() -> None:
    listed, present = map_entries(), tree_entries()
    assert sorted(present - listed) == [], "modules missing from the README's module map"
    assert sorted(listed - present) == [], "the README's module map lists what is gone"


def test_the_map_parser_sees_nested_modules() -> None:
    listed = map_entries()
    assert {"commentary/", "commentary/claim.py", "providers/openai.py", "cli.py"} <= listed
