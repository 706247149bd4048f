""".env.example lists exactly the environment variables the code reads, each with its default
and meaning, and a copy of it used as is changes no setting."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from worker.config import PLATFORM_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*)\s+# default (\S+) · (\S.*)$")
# Calls whose first argument names an environment variable: os.environ.get / os.getenv.
# (Everything else is a field of worker.config.Settings; tests/unit/test_config.py checks
# that no other module reads os.environ.)
READERS = {"get", "getenv"}


def documented() -> dict[str, tuple[str, str]]:
    """NAME -> (default, meaning) from .env.example; every assignment line must parse."""
    out: dict[str, tuple[str, str]] = {}
    for line in EXAMPLE.read_text("utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f".env.example line does not read `NAME=   # default X · meaning`: {line!r}"
        name, value, default, meaning = m.groups()
        assert value == "", f"{name}: .env.example leaves values empty (the default applies)"
        assert name not in out, f"{name} listed twice"
        out[name] = (default, meaning)
    return out


def _const_str(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def read_by_code() -> dict[str, str | None]:
    """NAME -> literal default (when the call gives one) for every variable worker/ reads."""
    found: dict[str, str | None] = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                name = _const_str(node.args[0])
                if fname in READERS and name and ENV_NAME.match(name):
                    default = _const_str(node.args[1]) if len(node.args) > 1 else None
                    found.setdefault(name, default)
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                name = _const_str(node.slice)
                if name and ENV_NAME.match(name):
                    found.setdefault(name, None)
    for field, info in Settings.model_fields.items():
        found[field.upper()] = None if info.default is None else str(info.default)
    for name in PLATFORM_VARIABLES:
        found.setdefault(name, None)
    return found


def test_every_variable_the_code_reads_is_documented_and_nothing_else() -> None:
    docs = documented()
    code = read_by_code()
    assert "DATABASE_URL" in code and "WORKER_STALLED_SECONDS" in code  # the scan works
    assert "BREAKER_COOLDOWN_SECONDS" in code and "HTTPS_PROXY" in code
    assert sorted(set(code) - set(docs)) == [], "read by the code, missing from .env.example"
    assert sorted(set(docs) - set(code)) == [], "in .env.example, read by no code"


def _same(documented_default: str, code_default: str) -> bool:
    if documented_default == code_default:
        return True
    try:
        return float(documented_default) == float(code_default)
    except ValueError:
        return False


def test_documented_defaults_match_the_code() -> None:
    docs = documented()
    for name, default in read_by_code().items():
        shown = docs[name][0]
        if default is None:
            continue
        secret = default.startswith("*")  # SecretStr defaults are None anyway
        assert secret or _same(shown, default), f"{name}: .env.example says {shown}, code {default}"
    for name, field in Settings.model_fields.items():
        if field.default is None:
            assert docs[name.upper()][0] == "unset", name


def test_a_copied_env_example_changes_no_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in read_by_code():
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(EXAMPLE.read_text("utf-8"), "utf-8")
    monkeypatch.chdir(tmp_path)
    values = dotenv_values(".env")
    assert values and all(v == "" for v in values.values()), "inline comments are not values"

    def dump(model: Any) -> dict[str, Any]:
        return {k: v for k, v in model.model_dump().items()}

    assert dump(Settings()) == dump(Settings(_env_file=None))

    from worker.cli import load_env_file

    load_env_file()
    import os

    assert not [n for n in values if n in os.environ], "an empty value was exported"
