"""OpenAI-compatible aliases: ``/openrouter/v1``, ``/perplexity/v1``, ``/deepseek/v1``,
``/ollama/v1``.

Each serves chat completions and embeddings exactly like the OpenAI module (same bodies,
same error envelopes), counted under its own name in the stats. OpenRouter also serves
``GET /credits`` → ``{"data": {"total_credits": X, "total_usage": Y}}`` from the config
fields ``openrouter_total_credits`` / ``openrouter_total_usage``.
"""

from __future__ import annotations

from worker.emulator.openai_api import realtime_chat, realtime_embeddings
from worker.emulator.store import Store
from worker.emulator.wire import Request, Response, Router


class CompatApi:
    """Routes for one OpenAI-compatible alias."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        r = Router()
        r.add("POST", "/v1/chat/completions", self.chat)
        r.add("POST", "/v1/embeddings", self.embeddings)
        if name == "openrouter":
            r.add("GET", "/v1/credits", self.credits)
        self.router = r

    def chat(self, req: Request) -> Response:
        return realtime_chat(self.store, self.name, req)

    def embeddings(self, req: Request) -> Response:
        return realtime_embeddings(self.store, self.name, req)

    def credits(self, req: Request) -> Response:
        cfg = self.store.config
        return Response.json(
            {
                "data": {
                    "total_credits": cfg.openrouter_total_credits,
                    "total_usage": cfg.openrouter_total_usage,
                }
            }
        )
