"""The worker's module graph: production code never loads the emulator, and module-level
imports among worker modules form no cycle.

Both read the source (``ast``) and, for the emulator, also run the code: every production
module is imported in a fresh interpreter, the ``mock`` provider answers on both lanes, and
``worker.emulator`` must still be absent from ``sys.modules``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker"

#: Allowed to import the emulator: the emulator itself, the demo (it starts one when no key
#: is set) and the CLI, whose `emulator` command runs it (a function-local import).
EMULATOR_USERS = {"worker.demo", "worker.cli"}
#: Not imported by the subprocess check: the emulator, the demo, and `python -m worker`'s
#: entry point (importing it runs the CLI).
NOT_IMPORTED = ("worker.emulator", "worker.demo", "worker.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_emulator(name: str) -> bool:
    return name == "worker.emulator" or name.startswith("worker.emulator.")


def production_modules() -> list[str]:
    return [
        m for m in all_modules() if not any(m == x or m.startswith(x + ".") for x in NOT_IMPORTED)
    ]


def _targets(node: ast.Import | ast.ImportFrom, here: str, known: set[str]) -> set[str]:
    """The worker modules an import statement needs: ``import a.b`` and ``from a.b import
    x`` need ``a.b``; ``from a import b`` needs the submodule ``a.b`` when there is one,
    else ``a``. (A package's ``__init__`` runs first in every case, but a package that
    imports its own submodules is not a cycle Python trips over, so those edges are left
    out.) Relative imports are resolved."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:
        pkg = here.split(".")
        if not (PACKAGE / Path(*pkg[1:]) / "__init__.py").exists():
            pkg = pkg[:-1]  # a module: relative to its package
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, base] if base else pkg)
    out: set[str] = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif base in known:
            out.add(base)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def module_level_imports(path: Path, here: str, known: set[str]) -> set[str]:
    """Imports executed when the module is imported: top-level statements, also inside
    top-level try/if blocks, not inside functions, classes or ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text("utf-8"))
    out: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= _targets(node, here, known)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for h in node.handlers:
                todo += h.body
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            todo += node.body
    out.discard(here)
    return out


def all_imports(path: Path, here: str, known: set[str]) -> set[str]:
    """Every import anywhere in the module (function-local ones too)."""
    tree = ast.parse(path.read_text("utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= _targets(node, here, known)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {m: module_level_imports(p, m, known) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None. Iterative DFS."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, rest = stack[-1]
            if not rest:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = rest.pop(0)
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_module_level_imports_only() -> None:
    graph = import_graph()
    assert "worker.queries" in graph["worker.commentary.poll"]  # `from worker.queries import q`
    assert "worker.ops.metrics" in graph["worker.commentary.poll"]  # `from worker import metrics`
    # worker.cli imports the emulator inside a function: not a module-level edge
    assert not any(is_emulator(m) for m in graph["worker.cli"])


def test_no_import_cycles_among_worker_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_production_module_imports_the_emulator_anywhere() -> None:
    """Function-local imports included: a lazy import is still a dependency."""
    modules = all_modules()
    known = set(modules)
    offenders = {
        m: sorted(i for i in all_imports(p, m, known) if is_emulator(i))
        for m, p in modules.items()
        if not is_emulator(m) and m not in EMULATOR_USERS
    }
    assert {m: i for m, i in offenders.items() if i} == {}


PROBE = textwrap.dedent(
    """
    import asyncio, importlib, json, sys
    for name in json.loads(sys.argv[1]):
        importlib.import_module(name)
    imported = sorted(m for m in sys.modules if m.startswith("worker."))

    # the mock provider answers on both lanes without the emulator
    from worker.providers.base import ChatRequest
    from worker.realtime.sessions import Prompt
    from worker.providers.routing import Providers
    from worker.commentary.schemas import COMMENTARY_SCHEMA

    request = ChatRequest(custom_id="c1", system_prompt="S", user_prompt="Frage",
                          json_schema=COMMENTARY_SCHEMA, schema_name="commentary")
    line = asyncio.run(Providers().chat("mock").complete("m", request))
    reply = asyncio.run(Providers().converse(
        "mock", "m", Prompt(system=None, history=[], user="Hi", json_output=True)))
    vectors = asyncio.run(Providers().embed("mock", "e", ["a"])).vectors
    print(json.dumps({
        "imported": imported,
        "emulator": sorted(m for m in sys.modules if m == "worker.emulator"
                           or m.startswith("worker.emulator.")),
        "answered": bool(line.ok and json.loads(line.text) and json.loads(reply.text)
                         and len(vectors[0]) == 256),
    }))
    """
)


def test_production_code_runs_without_loading_the_emulator() -> None:
    names = production_modules()
    assert "worker.cli" in names and "worker.realtime.drain" in names and len(names) > 50
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(names) - {"worker"} <= set(result["imported"])  # the probe imported them all
    assert result["answered"] is True
    assert result["emulator"] == []


#: Entry points: they import lazily (a fast `--help`), and nothing imports them back.
ENTRY_POINTS = {"worker.cli", "worker.demo", "worker.__main__"}


def test_no_cycles_even_through_function_local_imports() -> None:
    """A lazy import that closes a circle hides a layering mistake (issue 13 found
    budget -> submit -> budget, health -> metrics -> health, migrate -> preflight ->
    migrate): among production modules there is none."""
    modules = all_modules()
    known = set(modules)
    graph = {
        m: all_imports(p, m, known)
        for m, p in modules.items()
        if not is_emulator(m) and m not in ENTRY_POINTS
    }
    graph = {m: {i for i in deps if i in graph} for m, deps in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
    assert "worker.commentary.defer" in graph["worker.commentary.poll"]
