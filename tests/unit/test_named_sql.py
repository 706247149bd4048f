"""Every SQL statement the worker runs lives in the named SQL files (worker/sql/*.sql, read
with worker.queries.q): no module outside the emulator passes a literal to execute()."""

from __future__ import annotations

import ast
from pathlib import Path

from worker.queries import _all

ROOT = Path(__file__).resolve().parents[2] / "worker"
EXECUTORS = {"execute", "executemany", "fetch", "copy", "stream"}


def _literal_sql(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _literal_sql(node.left) or _literal_sql(node.right)
    return False


def inline_statements() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "emulator" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in EXECUTORS
                and node.args
                and _literal_sql(node.args[0])
            ):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return found


def test_no_inline_sql_outside_the_named_files() -> None:
    assert inline_statements() == []


def test_the_check_sees_an_inline_statement(tmp_path: Path) -> None:
    sample = ast.parse('async def f(conn):\n    await conn.execute("SELECT 1")\n')
    call = next(n for n in ast.walk(sample) if isinstance(n, ast.Call) and n.args)
    assert _literal_sql(call.args[0])


def test_named_queries_load_and_are_unique() -> None:
    names = _all()
    assert "claim_pending" in names and "intent_state" in names and "record_task_run" in names


def test_the_ingest_copy_names_the_staged_columns_in_order() -> None:
    from worker.commentary.ingest import COLUMNS

    copy = _all()["copy_ingest_lines"]
    listed = [c.strip() for c in copy.split("(", 1)[1].split(")", 1)[0].split(",")]
    assert listed == list(COLUMNS)
