"""One configuration model: every process setting is a field of worker.config.Settings.

No other module reads the environment (but the documented exceptions), every tunable the
modules use comes from the settings, an empty variable means unset, and an invalid value is
a set-up error naming the variable instead of a silent default."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.fixtures.settings import configure
from worker.config import PLATFORM_VARIABLES, Settings, get_settings
from worker.ops import alerts, breaker, credits, maintenance, resilience
from worker.providers.openai import OpenAIChat
from worker.providers.routing import Providers
from worker.providers.routing import Providers as RealtimeClients
from worker.queue import runner

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker"

#: The only environment reads outside worker/config.py (see its module doc for why).
ALLOWED_READS = {
    ("worker/database.py", "DATABASE_URL"),
    ("worker/providers/lean_http.py", "SSL_CERT_FILE"),
    ("worker/providers/lean_http.py", "SSL_CERT_DIR"),
}


def _environment_reads(path: Path) -> list[tuple[str, str | None]]:
    """(what, variable) for every read of the process environment in one module:
    os.environ.get / os.getenv / os.environ[...] / environ.get, and any BaseSettings class."""
    found: list[tuple[str, str | None]] = []
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = ast.unparse(node.func)
            if target in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                arg = node.args[0] if node.args else None
                name = arg.value if isinstance(arg, ast.Constant) else None
                found.append((target, name if isinstance(name, str) else None))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if ast.unparse(node.value) in ("os.environ", "environ"):
                key = node.slice
                name = key.value if isinstance(key, ast.Constant) else None
                found.append(("os.environ[]", name if isinstance(name, str) else None))
        elif isinstance(node, ast.ClassDef):
            if any(ast.unparse(b).endswith("BaseSettings") for b in node.bases):
                found.append((f"class {node.name}(BaseSettings)", None))
    return found


def test_no_module_but_config_reads_the_environment() -> None:
    offenders = []
    checked = 0
    for path in sorted(WORKER.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "worker/config.py" or rel.startswith("worker/emulator/"):
            continue  # the emulator is a separate program with its own CLI
        checked += 1
        for what, name in _environment_reads(path):
            if (rel, name) not in ALLOWED_READS:
                offenders.append(f"{rel}: {what} {name or ''}".strip())
    assert checked > 50  # the walk found the package
    assert offenders == []


def test_the_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "import os\nfrom pydantic_settings import BaseSettings\n"
        "a = os.environ.get('A_B')\nb = os.getenv('C_D')\nc = os.environ['E_F']\n"
        "class X(BaseSettings):\n    pass\n"
        "os.environ['G_H'] = 'written, not read'\n"
    )
    assert sorted(_environment_reads(sample), key=str) == sorted(
        [
            ("os.environ.get", "A_B"),
            ("os.getenv", "C_D"),
            ("os.environ[]", "E_F"),
            ("class X(BaseSettings)", None),
        ],
        key=str,
    )


def _clear_fields(mp: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        mp.delenv(name.upper(), raising=False)


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_fields(monkeypatch)
    defaults = Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    for name in Settings.model_fields:
        monkeypatch.setenv(name.upper(), "")
    assert Settings(_env_file=None).model_dump() == defaults  # type: ignore[call-arg]
    monkeypatch.setenv("BREAKER_FAILURE_THRESHOLD", "   ")  # blank is a value: not a number
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_max_attempts_is_not_a_process_setting() -> None:
    """Attempts are per-run policy in the settings rows (ai_commentary_settings.max_attempts,
    ai_jobs.max_attempts); the former MAX_ATTEMPTS variable was read by nothing."""
    assert "max_attempts" not in Settings.model_fields
    assert "MAX_ATTEMPTS=" not in (ROOT / ".env.example").read_text("utf-8")


def test_every_tunable_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        BREAKER_FAILURE_THRESHOLD="7",
        BREAKER_COOLDOWN_SECONDS="2.5",
        BREAKER_PROBE_TIMEOUT_SECONDS="9",
        ALERT_DEDUP_SECONDS="10",
        ALERT_RATE_LIMIT="2",
        ALERT_RATE_WINDOW_SECONDS="30",
        ALERT_HTTP_TIMEOUT="1.5",
        WORKER_STALLED_SECONDS="12",
        SHUTDOWN_GRACEFUL_SECONDS="7",
        BUDGET_TIMEZONE="Europe/Berlin",
        OPENROUTER_CREDIT_WARN_USD="50",
        OPENROUTER_CREDIT_CRITICAL_USD="20",
    )
    assert breaker.BreakerConfig.current() == breaker.BreakerConfig(7, 2.5, 9)
    assert alerts.AlertPolicy.current() == alerts.AlertPolicy(10, 2, 30, 1.5)
    assert maintenance.stalled_seconds() == 12
    assert runner.shutdown_graceful_seconds() == 7
    assert resilience.budget_timezone() == "Europe/Berlin"
    s = get_settings()
    assert credits.balance_level(Decimal("30"), s) == "warning"
    assert credits.balance_level(Decimal("10"), s) == "critical"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BREAKER_FAILURE_THRESHOLD", "0"),
        ("ALERT_RATE_LIMIT", "many"),
        ("WORKER_STALLED_SECONDS", "0.5"),
        ("BUDGET_TIMEZONE", "Mars/Olympus"),
        ("REALTIME_HTTP_CLIENT", "curl"),
        ("OPENROUTER_CREDIT_TIMEOUT_SECONDS", "0"),
    ],
)
def test_an_invalid_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert err.value.errors()[0]["loc"] == (name.lower(),)


def test_the_cli_says_which_setting_is_invalid_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BREAKER_COOLDOWN_SECONDS": "soon", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "worker", "db", "status"],
        env=env,
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: invalid setting BREAKER_COOLDOWN_SECONDS='soon'")


def _lean_headers(clients: RealtimeClients, provider: str) -> dict[str, str]:
    raw = clients.chat(provider).lean_client()._headers
    return dict(line.split(": ", 1) for line in raw.strip().split("\r\n"))


def _sdk_headers(client: Any) -> dict[str, str]:
    return {k: str(v) for k, v in client.default_headers.items()}


def test_both_lanes_and_both_clients_send_the_same_provider_headers() -> None:
    s = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-openai",
        openrouter_api_key="sk-test-openrouter",
        openrouter_base_url="https://openrouter.example/api/v1",
        openrouter_referer="https://example.org/app",
        openrouter_title="Exam bank",
        openai_org_id="org-123",
        openai_project_id="proj-456",
    )
    rt = RealtimeClients(s)
    commentary = Providers(s)
    expected = {
        "openrouter": {"HTTP-Referer": "https://example.org/app", "X-Title": "Exam bank"},
        "openai": {"OpenAI-Organization": "org-123", "OpenAI-Project": "proj-456"},
    }
    for provider, headers in expected.items():
        assert s.provider_headers(provider) == headers
        lean, sdk = _lean_headers(rt, provider), _sdk_headers(rt.chat(provider).sdk())
        chat = commentary.chat(provider)
        assert isinstance(chat, OpenAIChat)
        instant = _sdk_headers(chat.sdk())
        for name, value in headers.items():
            assert lean[name] == sdk[name] == instant[name] == value, (provider, name)
    assert s.provider_headers("gemini") == {}


def test_platform_variables_are_documented_as_such() -> None:
    text = (ROOT / ".env.example").read_text("utf-8")
    for name in PLATFORM_VARIABLES:
        assert f"\n{name}=" in text
        assert name.lower() not in Settings.model_fields
