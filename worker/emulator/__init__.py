"""Local provider emulator: OpenAI, Gemini (Developer API), Mistral and OpenAI-compatible
aliases, close enough on the wire that the official SDKs work against it unchanged.

Architecture (one module per concern):

- :mod:`.server`      selectors event loop (HTTP/1.1 keep-alive; slow requests get a thread
                      each), routing by path prefix,
                      control endpoints ``/_emulator/{stats,config,reset,health}``
- :mod:`.wire`        request/response objects, chunked bodies, streaming multipart
- :mod:`.store`       files (bytes on disk), batches, statistics
- :mod:`.lifecycle`   lazy batch state advancement, per-line outcomes, result files
- :mod:`.content`     deterministic schema-valid JSON, filler text, tokens, embeddings
- :mod:`.config`      :class:`EmulatorConfig` and :class:`FaultRule`
- :mod:`.faults`      provider-shaped error bodies, fault injection
- :mod:`.limits`      the real batch limits (enqueued tokens, creation rate, concurrent
                      batches) and lost responses, checked when a batch is created
- :mod:`.openai_api`, :mod:`.gemini_api`, :mod:`.mistral_api`, :mod:`.compat_api`

Usage::

    emu = Emulator(config=EmulatorConfig(state_seconds=0))
    emu.start()
    client = OpenAI(api_key="sk-test", base_url=emu.openai_base_url)
    emu.configure(http_faults=[{"provider": "openai", "kind": "rate_limit", "count": 1}])
    emu.configure(openai_enqueued_tokens_per_model=2_000_000, lost_response_rate=0.3)
    emu.stats()["openai"]["custom_ids"], emu.stats()["openai"]["paid_twice"]
    emu.stop()
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from worker.emulator.config import EmulatorConfig, FaultRule
from worker.emulator.server import App, HTTPServerThread
from worker.emulator.store import Store

__all__ = ["Emulator", "EmulatorConfig", "FaultRule", "main"]

COMPAT_NAMES = ("openrouter", "perplexity", "deepseek", "ollama")


def emulator_env(base_url: str) -> dict[str, str]:
    """Everything the worker needs to use an emulator at ``base_url``: every provider's
    base URL and a placeholder key (a provider without a key is not called at all)."""
    out = {
        "OPENAI_BASE_URL": base_url + "/openai/v1",
        "GEMINI_BASE_URL": base_url + "/gemini",
        "MISTRAL_BASE_URL": base_url + "/mistral",
    }
    for name in COMPAT_NAMES:
        out[f"{name.upper()}_BASE_URL"] = f"{base_url}/{name}/v1"
    for name in ("OPENAI", "GEMINI", "MISTRAL", "OPENROUTER", "PERPLEXITY", "DEEPSEEK"):
        out[f"{name}_API_KEY"] = "emulator-key"
    return out


class Emulator:
    """An in-process emulator server. ``port=0`` picks a free port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: EmulatorConfig | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.store = Store(data_dir, config or EmulatorConfig())
        self._http: HTTPServerThread | None = None

    def start(self) -> None:
        """Bind and serve in a background thread."""
        if self._http is not None:
            return
        self._http = HTTPServerThread(self.host, self._requested_port, App(self.store))
        self._http.start()

    def stop(self) -> None:
        """Stop serving and remove the temporary data directory (if we created it)."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        self.store.close()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("emulator not started")
        return self._http.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/openai/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.base_url + "/gemini"

    @property
    def mistral_base_url(self) -> str:
        return self.base_url + "/mistral"

    def compat_base_url(self, name: str) -> str:
        """Base URL of an OpenAI-compatible alias (openrouter, perplexity, deepseek, ollama)."""
        if name not in COMPAT_NAMES:
            raise ValueError(f"unknown compat provider {name!r}; expected one of {COMPAT_NAMES}")
        return self.base_url + f"/{name}/v1"

    @property
    def config(self) -> EmulatorConfig:
        return self.store.config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change config fields at runtime (same as ``POST /_emulator/config``)."""
        return self.store.configure(**changes)

    def stats(self) -> dict[str, Any]:
        """Same as ``GET /_emulator/stats``."""
        return self.store.snapshot_stats()

    def reset(self) -> None:
        """Forget all files, batches and stats; restore the start-up config."""
        self.store.reset()

    def env(self) -> dict[str, str]:
        """Environment variables that point the worker at this emulator."""
        return emulator_env(self.base_url)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve the emulator until Ctrl-C / SIGTERM."""
    p = argparse.ArgumentParser(
        prog="python -m worker emulator",
        description="Serve the local provider emulator: OpenAI, Gemini, Mistral and the\n"
        "OpenAI-compatible APIs (OpenRouter, Perplexity, DeepSeek, Ollama), close enough on\n"
        "the wire that the official SDKs work unchanged. No keys, no cost; answers are\n"
        "deterministic filler, not medicine.",
        epilog="In another shell, point the worker at it with:\n"
        '  eval "$(python -m worker emulator --print-env)"\n'
        "(or paste the export lines it prints at start-up into that shell).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    p.add_argument(
        "--state-seconds",
        type=float,
        default=1.0,
        help="seconds a batch stays in each non-terminal state, 0 = instant (default: %(default)s)",
    )
    p.add_argument(
        "--line-failure-rate",
        type=float,
        default=0.0,
        help="share of batch lines that fail, 0..1 (default: %(default)s)",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="added latency per request in milliseconds (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the deterministic answers (default: 0)"
    )
    p.add_argument(
        "--data-dir", default=None, help="where files live (default: a temporary directory)"
    )
    p.add_argument(
        "--print-env",
        action="store_true",
        help="print `export NAME=value` lines (base URLs and placeholder keys) for an "
        "emulator at --host/--port and exit, without serving",
    )
    args = p.parse_args(argv)
    if args.print_env:
        for k, v in emulator_env(f"http://{args.host}:{args.port}").items():
            print(f"export {k}={v}")
        return 0
    config = EmulatorConfig(
        state_seconds=args.state_seconds,
        line_failure_rate=args.line_failure_rate,
        latency_ms=args.latency_ms,
        seed=args.seed,
    )
    config.validate()
    emu = Emulator(args.host, args.port, config, args.data_dir)
    emu.start()
    print(f"provider emulator listening on {emu.base_url}")
    print(f"  OpenAI     {emu.openai_base_url}")
    print(f"  Gemini     {emu.gemini_base_url}")
    print(f"  Mistral    {emu.mistral_base_url}")
    for name in COMPAT_NAMES:
        print(f"  {name:<11}{emu.compat_base_url(name)}")
    print(f"  control    {emu.base_url}/_emulator/stats | /config | /reset")
    print("Point the worker at it with:")
    for k, v in emu.env().items():
        print(f"  export {k}={v}")
    sys.stdout.flush()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    emu.stop()
    print("emulator stopped")
    return 0
