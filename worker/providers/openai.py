"""OpenAI: the Batch API (:class:`OpenAIBatch`) and the chat / embeddings API
(:class:`OpenAIChat`), which also serves every OpenAI-compatible endpoint
(:mod:`worker.providers.compat`).

Batch (``AsyncOpenAI``: Files + Batches, ``/v1/chat/completions``).

Flow: requests -> JSONL temp file (written in a thread, always deleted) -> ``files.create
(purpose="batch")`` -> ``batches.create(metadata={"intent_id": ...})``. Results: the output
file, then the error file, are each streamed to a temp file with
``files.with_streaming_response.content`` and parsed line by line from disk, so neither a
whole file nor an open HTTP stream is held while the caller processes lines (a slow
consumer cannot time out the download, and a failed download yields nothing twice).

Chat: ``complete`` (commentary instant models: the body of
:func:`worker.providers.jsonl.openai_chat_body`, byte for byte what a batch line sends)
through the SDK; ``converse`` (realtime jobs) through the lean HTTP client
(:mod:`worker.providers.lean_http`: the SDK's per-call CPU, ~1.5 ms, capped a worker process
at about 600 calls/s) unless a proxy is configured or ``REALTIME_HTTP_CLIENT=sdk``; both
paths send the same body and headers and classify errors with the same
:func:`worker.providers.error_policy.classify_http`. Embeddings keep the SDK (one request
carries up to 2048 texts; base64 decoded by the SDK). No SDK retries (``SDK_MAX_RETRIES``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast

from openai import AsyncOpenAI, omit
from openai.types import Batch
from pydantic import SecretStr

from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.providers import idempotent
from worker.providers.answer_rules import schema_instruction, to_reply
from worker.providers.base import (
    SDK_MAX_RETRIES,
    BatchLimits,
    BatchStatus,
    ChatRequest,
    Embedded,
    Prompt,
    Reply,
    ResultLine,
    SubmittedBatch,
    secret_value,
)
from worker.providers.error_policy import classify_http, translate_errors
from worker.providers.jsonl import (
    OPENAI_CHAT_URL,
    MalformedCallback,
    check_batch_size,
    openai_chat_body,
    parse_chat_completion,
    parse_jsonl_file,
    parse_openai_line,
    request_line_encoder,
    temp_path,
    write_jsonl_path_async,
)
from worker.providers.lean_http import LeanClient, Response
from worker.providers.states import map_state

log = logging.getLogger(__name__)

#: 50,000 requests is the documented per-batch cap; 190 MB keeps headroom under the
#: documented 200 MB input-file cap (multipart overhead, rounding of "MB").
OPENAI_LIMITS = BatchLimits(max_requests=50_000, max_bytes=190 * 1000 * 1000)

INTENT_KEY = "intent_id"


def _failure(batch: Batch) -> tuple[str | None, str | None]:
    """The batch-level reason: the first ``errors.data[]`` entry (with its line and how many
    more there are); (None, None) when there is none."""
    data = batch.errors.data if batch.errors is not None else None
    if not data:
        return None, None
    first = data[0]
    message = first.message or ""
    if first.line is not None:
        message += f" (line {first.line})"
    if len(data) > 1:
        message += f" (+{len(data) - 1} more errors)"
    return first.code, message or None


class OpenAIBatch:
    """:class:`~worker.providers.base.BatchProvider` for the OpenAI Batch API."""

    name = "openai"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        max_retries: int = 2,
        limits: BatchLimits = OPENAI_LIMITS,
        list_page_size: int = 100,
        max_list_pages: int = 5,
        on_malformed: MalformedCallback | None = None,
        client: AsyncOpenAI | None = None,
    ) -> None:
        """``base_url`` must include ``/v1`` (the SDK's paths are relative to it).
        ``max_list_pages`` bounds :meth:`find_by_intent` (newest batches come first)."""
        self.limits = limits
        self._list_page_size = list_page_size
        self._max_list_pages = max_list_pages
        self._on_malformed = on_malformed
        self._client = client or AsyncOpenAI(
            api_key=secret_value(api_key),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        # Creates and uploads are not idempotent: never retried by the SDK.
        self._once = self._client.with_options(max_retries=0)

    async def submit(
        self,
        model: str,
        requests: Sequence[ChatRequest],
        *,
        intent_id: str,
        created_after: datetime | None = None,
    ) -> SubmittedBatch:
        """Upload the requests as one JSONL file named ``{intent_id}.jsonl`` and create one
        batch tagged ``intent_id``, each exactly once (worker.providers.idempotent): SDK
        retries are off for both calls, and after an ambiguous failure the file or batch
        is looked up by the intent id (created after ``created_after``) before trying again."""
        encode = request_line_encoder(self.name, model)
        lines = (encode(r) for r in requests)
        file_name = f"{intent_id}.jsonl"
        with temp_path() as path:
            count, size = await write_jsonl_path_async(path, lines)
            check_batch_size(self.name, self.limits, count, size)

            async def upload() -> str:
                with translate_errors(self.name):
                    with open(path, "rb") as fh:  # noqa: ASYNC230 - httpx streams it in chunks
                        uploaded = await self._once.files.create(
                            file=(file_name, fh, "application/jsonl"), purpose="batch"
                        )
                return uploaded.id

            file_id = await idempotent.once(
                upload, lambda: self._find_file(file_name, created_after)
            )

            async def create() -> SubmittedBatch:
                with translate_errors(self.name):
                    batch = await self._once.batches.create(
                        input_file_id=file_id,
                        endpoint=OPENAI_CHAT_URL,
                        completion_window="24h",
                        metadata={INTENT_KEY: intent_id},
                    )
                return SubmittedBatch(
                    batch_id=batch.id,
                    input_file_id=batch.input_file_id,
                    request_count=count,
                    raw_state=batch.status,
                )

            try:
                return await idempotent.once(
                    create, lambda: self.find_by_intent(intent_id, created_after)
                )
            except Exception as exc:
                idempotent.mark_create_failure(exc)
                raise

    async def _find_file(self, file_name: str, created_after: datetime | None) -> str | None:
        """The newest uploaded batch file named ``file_name`` (files list newest first,
        paged until files older than the intent)."""
        since = idempotent.not_before(created_after)
        with translate_errors(self.name):
            page = await self._client.files.list(
                purpose="batch", order="desc", limit=self._list_page_size
            )
            pages = 0
            while True:
                for f in page.data:
                    if f.filename == file_name:
                        return f.id
                    created = idempotent.as_datetime(f.created_at)
                    if since is not None and created is not None and created < since:
                        return None
                pages += 1
                if not page.has_next_page() or (since is None and pages >= self._max_list_pages):
                    return None
                page = await page.get_next_page()

    async def find_by_intent(
        self, intent_id: str, created_after: datetime | None = None
    ) -> SubmittedBatch | None:
        """The batch tagged ``intent_id``. Batches come newest first; the search pages back
        to ``created_after`` (minus clock slack) however many batches the account has, or,
        without a time, ``max_list_pages`` pages. When several batches carry the tag (a
        create whose answer was lost, then retried), the oldest is returned and the others
        are cancelled: they would be billed for requests nobody ingests."""
        since = idempotent.not_before(created_after)
        found: list[Batch] = []
        with translate_errors(self.name):
            page = await self._client.batches.list(limit=self._list_page_size)
            pages = 0
            done = False
            while not done:
                for batch in page.data:
                    if (batch.metadata or {}).get(INTENT_KEY) == intent_id:
                        found.append(batch)
                    created = idempotent.as_datetime(batch.created_at)
                    if since is not None and created is not None and created < since:
                        done = True
                        break
                pages += 1
                if done or not page.has_next_page():
                    break
                if since is None and pages >= self._max_list_pages:
                    break
                page = await page.get_next_page()
        if not found:
            return None
        found.sort(key=lambda b: (b.created_at, b.id))
        for dup in found[1:]:
            await self._cancel_duplicate(dup.id, intent_id)
        return self._submitted(found[0])

    async def _cancel_duplicate(self, batch_id: str, intent_id: str) -> None:
        try:
            await self.cancel(batch_id)
            log.warning("cancelled duplicate batch %s of intent %s", batch_id, intent_id)
        except Exception as exc:  # best effort; recorded by the log
            log.warning("could not cancel duplicate batch %s: %s", batch_id, exc)

    @staticmethod
    def _submitted(batch: Batch) -> SubmittedBatch:
        counts = batch.request_counts
        return SubmittedBatch(
            batch_id=batch.id,
            input_file_id=batch.input_file_id,
            request_count=counts.total if counts is not None else 0,
            raw_state=batch.status,
        )

    async def status(self, batch_id: str) -> BatchStatus:
        with translate_errors(self.name):
            batch = await self._client.batches.retrieve(batch_id)
        counts = batch.request_counts
        code, message = _failure(batch)
        return BatchStatus(
            batch_id=batch.id,
            state=map_state(self.name, batch.status),
            raw_state=str(batch.status),
            # a clean batch may report error_file_id "" (seen live): no file
            output_file_id=batch.output_file_id or None,
            error_file_id=batch.error_file_id or None,
            total=counts.total if counts else None,
            completed=counts.completed if counts else None,
            failed=counts.failed if counts else None,
            failure_code=code,
            failure_message=message,
        )

    async def results(self, status: BatchStatus) -> AsyncIterator[ResultLine]:
        """Every line of the output file, then of the error file (either may be absent:
        a batch whose requests all failed has only an error file)."""
        for file_id in (status.output_file_id, status.error_file_id):
            if not file_id:
                continue
            with temp_path() as path:
                await self._download(file_id, path)
                async for line in parse_jsonl_file(path, parse_openai_line, self._on_malformed):
                    yield line

    async def _download(self, file_id: str, path: str) -> None:
        with translate_errors(self.name):
            async with self._client.files.with_streaming_response.content(file_id) as resp:
                with open(path, "wb") as fh:  # noqa: ASYNC230 - chunked local writes
                    async for chunk in resp.iter_bytes():
                        fh.write(chunk)

    async def cancel(self, batch_id: str) -> None:
        with translate_errors(self.name):
            await self._client.batches.cancel(batch_id)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()


JsonMode = Literal["json_schema", "json_object"]

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"

#: SDK clients per chat provider, used round-robin. httpcore's pool scans every pooled
#: connection on each request (``has_expired`` polls each socket), so one client with 100
#: busy connections spends more CPU on the scan than on the request; a few smaller pools
#: keep that cost flat.
CLIENT_SHARDS = 8


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema, "strict": True},
    }


class OpenAIChat:
    """``ChatProvider`` over ``/chat/completions`` and ``/embeddings`` of OpenAI or any
    OpenAI-compatible API.

    ``json_mode="json_object"`` is the fallback for endpoints without ``json_schema``
    response formats (DeepSeek): the schema then travels in the system prompt and the answer
    is validated against it. ``max_tokens_field`` defaults to ``max_completion_tokens`` for
    OpenAI and ``max_tokens`` elsewhere (the compatible servers implement the older name).
    ``embeddings=False``: the provider has no embeddings API (the job fails at once)."""

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        name: str = "openai",
        json_mode: JsonMode = "json_schema",
        max_tokens_field: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        lean: bool = False,
        embeddings: bool = True,
        float_embeddings: bool = False,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self.name = name
        self.json_mode: JsonMode = json_mode
        self._max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if name == "openai" else "max_tokens"
        )
        self._key = secret_value(api_key)
        self._base_url = base_url
        self._timeout = timeout
        self._headers = dict(extra_headers) if extra_headers else {}
        self.lean = lean
        self._embeddings = embeddings
        self._float_embeddings = float_embeddings
        self._shards: list[AsyncOpenAI] = [client] if client is not None else []
        self._turn = 0
        self._lean_client: LeanClient | None = None

    def sdk(self) -> AsyncOpenAI:
        """One of :data:`CLIENT_SHARDS` SDK clients, round-robin."""
        if not self._shards:
            self._shards = [
                AsyncOpenAI(
                    api_key=self._key,
                    base_url=self._base_url,
                    timeout=self._timeout,
                    max_retries=SDK_MAX_RETRIES,
                    default_headers=self._headers or None,
                )
                for _ in range(CLIENT_SHARDS)
            ]
        self._turn += 1
        return self._shards[self._turn % len(self._shards)]

    def lean_client(self) -> LeanClient:
        """The lean HTTP client (one keep-alive pool per provider)."""
        if self._lean_client is None:
            headers = {"Authorization": f"Bearer {self._key}", **self._headers}
            try:
                self._lean_client = LeanClient(self._base_url or OPENAI_DEFAULT_URL, headers)
            except ValueError as exc:
                raise ConfigError(f"{self.name}: {exc}") from exc
        return self._lean_client

    # -------------------------------------------------------------- commentary

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        body = openai_chat_body(
            request, model, json_mode=self.json_mode, max_tokens_field=self._max_tokens_field
        )
        with translate_errors(self.name):
            # The body is built (and unit-tested) in jsonl; the SDK's overloads cannot type
            # a prebuilt dict, hence the cast.
            completion = await self.sdk().chat.completions.create(**cast(Any, body))
        return parse_chat_completion(request.custom_id, completion.model_dump(mode="json"))

    # -------------------------------------------------------------- realtime

    def conversation_body(
        self, model: str, prompt: Prompt, messages: list[dict[str, str]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if prompt.json_output:
            if prompt.json_schema is not None and self.json_mode == "json_schema":
                body["response_format"] = json_schema_format(prompt.json_schema)
            else:
                # json_object-only endpoints (DeepSeek): the schema travels in the prompt.
                body["response_format"] = {"type": "json_object"}
                if prompt.json_schema is not None:
                    hint = schema_instruction(prompt.json_schema)
                    body["messages"] = [{"role": "system", "content": hint}, *messages]
        if prompt.max_output_tokens is not None:
            body[self._max_tokens_field] = prompt.max_output_tokens
        if prompt.temperature is not None:
            body["temperature"] = prompt.temperature
        return body

    async def converse(self, model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
        body = self.conversation_body(model, prompt, messages)
        with translate_errors(self.name):
            if self.lean:
                resp = await self.lean_client().post_json("/chat/completions", body)
                return lean_reply(self.name, resp, messages)
            completion = await self.sdk().chat.completions.create(**cast(Any, body))
        choice = completion.choices[0] if completion.choices else None
        usage = completion.usage
        return to_reply(
            self.name,
            choice.message.content if choice is not None else None,
            choice.finish_reason if choice is not None else None,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            messages,
            refusal=choice.message.refusal if choice is not None else None,
        )

    async def embed(self, model: str, texts: Sequence[str]) -> Embedded:
        if not self._embeddings:
            raise ProviderError(
                f"{self.name} has no embeddings API",
                kind=ErrorKind.INVALID_REQUEST,
                provider=self.name,
                code="no_embeddings_api",
            )
        with translate_errors(self.name):
            # base64 (the SDK's default, decoded by the SDK) is ~4x smaller on the wire and
            # far cheaper to parse than JSON floats; Ollama gets plain floats.
            emb = await self.sdk().embeddings.create(
                model=model,
                input=list(texts),
                encoding_format="float" if self._float_embeddings else omit,
            )
        vectors = [list(d.embedding) for d in sorted(emb.data, key=lambda d: d.index)]
        return Embedded(vectors, emb.usage.prompt_tokens if emb.usage else 0)

    async def aclose(self) -> None:
        if self._lean_client is not None:
            await self._lean_client.aclose()
            self._lean_client = None
        for client in self._shards:
            await client.close()
        self._shards = []


def lean_reply(provider: str, resp: Response, messages: list[dict[str, str]]) -> Reply:
    """A chat completion answer of the lean client (what the SDK path reads, from plain
    JSON); an error answer is classified exactly as the SDK's ``APIStatusError`` would be."""
    if resp.status >= 300:
        raise classify_http(provider, resp.status, resp.body, resp.headers)
    try:
        data = resp.json()
    except ValueError as exc:
        raise ProviderError(
            f"the answer is not JSON: {exc}",
            kind=ErrorKind.UNKNOWN,
            provider=provider,
            status_code=resp.status,
            code="response_validation",
        ) from exc
    if not isinstance(data, dict):
        data = {}
    choices = data.get("choices")
    if not choices and isinstance(data.get("error"), dict):
        # An error in a 2xx envelope (some OpenAI-compatible gateways): classify it by the
        # code it carries, as a server error when that is not an HTTP status.
        code = data["error"].get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise classify_http(provider, status, data, resp.headers)
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        choice = {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return to_reply(
        provider,
        content if isinstance(content, str) else None,
        finish if isinstance(finish, str) else None,
        prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens if isinstance(completion_tokens, int) else None,
        messages,
        refusal=refusal if isinstance(refusal, str) else None,
    )
