"""Mistral Batch API adapter (``mistralai.client.Mistral``, ``*_async`` methods).

Flow: requests -> JSONL temp file (``{"custom_id", "body"}`` lines, always deleted) ->
``files.upload_async(purpose="batch")`` -> ``batch.jobs.create_async(input_files=[id],
model, endpoint="/v1/chat/completions", metadata={"intent_id": ...})``. Results: the
``output_file`` then the ``error_file`` are each streamed (``files.download_async`` returns
an un-read streaming httpx response) to a temp file and parsed line by line; inline
``outputs`` (if the server filled them) follow.

Limits (our choice): 50,000 requests / 190 MB. Mistral documents only 1,000,000 pending
requests per workspace and 512 MB per file; we use the OpenAI-sized cap so one chunking
policy serves every provider and a single failed batch stays cheap to redo.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, cast

from mistralai.client import Mistral
from mistralai.client.models import BatchJob
from mistralai.client.types import UNSET
from pydantic import SecretStr

from worker.providers import idempotent
from worker.providers.answer_rules import to_reply
from worker.providers.base import (
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
from worker.providers.error_policy import translate_errors
from worker.providers.jsonl import (
    OPENAI_CHAT_URL,
    MalformedCallback,
    check_batch_size,
    openai_chat_body,
    parse_chat_completion,
    parse_jsonl_file,
    parse_mistral_line,
    request_line_encoder,
    temp_path,
    write_jsonl_path_async,
)
from worker.providers.states import map_state, raw_state_str

log = logging.getLogger(__name__)

MISTRAL_LIMITS = BatchLimits(max_requests=50_000, max_bytes=190 * 1000 * 1000)

INTENT_KEY = "intent_id"


def _str(value: object) -> str | None:
    """An optional SDK string field (may be the UNSET sentinel) as ``str | None``."""
    return value if isinstance(value, str) and value else None


def make_mistral_client(api_key: SecretStr | str, base_url: str | None, timeout: float) -> Mistral:
    """``base_url`` must NOT end in ``/v1`` (the SDK's paths start with ``/v1/``)."""
    return Mistral(
        api_key=secret_value(api_key),
        server_url=base_url,
        timeout_ms=int(timeout * 1000),
    )


class MistralBatch:
    """:class:`~worker.providers.base.BatchProvider` for the Mistral Batch API."""

    name = "mistral"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        limits: BatchLimits = MISTRAL_LIMITS,
        list_page_size: int = 100,
        max_list_pages: int = 5,
        on_malformed: MalformedCallback | None = None,
        client: Mistral | None = None,
    ) -> None:
        self.limits = limits
        self._list_page_size = list_page_size
        self._max_list_pages = max_list_pages
        self._on_malformed = on_malformed
        self._client = client or make_mistral_client(api_key, base_url, timeout)

    async def submit(
        self,
        model: str,
        requests: Sequence[ChatRequest],
        *,
        intent_id: str,
        created_after: datetime | None = None,
    ) -> SubmittedBatch:
        """Upload the requests as one JSONL file named ``{intent_id}.jsonl`` and create one
        job tagged ``intent_id``, each exactly once (worker.providers.idempotent): no SDK
        retries, and after an ambiguous failure a lookup by intent before trying again."""
        encode = request_line_encoder(self.name, model)
        lines = (encode(r) for r in requests)
        file_name = f"{intent_id}.jsonl"
        with temp_path() as path:
            count, size = await write_jsonl_path_async(path, lines)
            check_batch_size(self.name, self.limits, count, size)

            async def upload() -> str:
                with translate_errors(self.name):
                    with open(path, "rb") as fh:  # noqa: ASYNC230 - multipart streams it
                        uploaded = await self._client.files.upload_async(
                            file={"file_name": file_name, "content": fh},
                            purpose="batch",
                            retries=None,
                        )
                return str(uploaded.id)

            file_id = await idempotent.once(upload, lambda: self._find_file(file_name))

            async def create() -> SubmittedBatch:
                with translate_errors(self.name):
                    job = await self._client.batch.jobs.create_async(
                        endpoint=OPENAI_CHAT_URL,
                        input_files=[file_id],
                        model=model,
                        metadata={INTENT_KEY: intent_id},
                        retries=None,
                    )
                return SubmittedBatch(
                    batch_id=job.id,
                    input_file_id=file_id,
                    request_count=count,
                    raw_state=raw_state_str(job.status),
                )

            try:
                return await idempotent.once(
                    create, lambda: self.find_by_intent(intent_id, created_after)
                )
            except Exception as exc:
                idempotent.mark_create_failure(exc)
                raise

    async def _find_file(self, file_name: str) -> str | None:
        """An uploaded batch file named ``file_name`` (the server searches by name)."""
        with translate_errors(self.name):
            listing = await self._client.files.list_async(
                page=0, page_size=self._list_page_size, search=file_name, purpose="batch"
            )
        for f in listing.data or []:
            if f.filename == file_name:
                return str(f.id)
        return None

    async def find_by_intent(
        self, intent_id: str, created_after: datetime | None = None
    ) -> SubmittedBatch | None:
        """Ask the server to filter by our metadata (exploded into query params) and by
        ``created_after`` (minus clock slack), and still check each job's metadata
        ourselves. Without a time, at most ``max_list_pages`` pages. Of several jobs with
        the tag the oldest is returned and the others are cancelled."""
        since = idempotent.not_before(created_after)
        found: list[BatchJob] = []
        with translate_errors(self.name):
            page = 0
            while since is not None or page < self._max_list_pages:
                listing = await self._client.batch.jobs.list_async(
                    page=page,
                    page_size=self._list_page_size,
                    metadata={INTENT_KEY: intent_id},
                    created_after=since if since is not None else UNSET,
                )
                jobs = listing.data or []
                for job in jobs:
                    meta = job.metadata if isinstance(job.metadata, dict) else {}
                    if meta.get(INTENT_KEY) == intent_id:
                        found.append(job)
                total = listing.total if isinstance(listing.total, int) else None
                if len(jobs) < self._list_page_size or (
                    total is not None and (page + 1) * self._list_page_size >= total
                ):
                    break
                page += 1
        if not found:
            return None
        found.sort(key=lambda j: (j.created_at, j.id))
        for dup in found[1:]:
            try:
                await self.cancel(dup.id)
                log.warning("cancelled duplicate batch %s of intent %s", dup.id, intent_id)
            except Exception as exc:  # best effort; logged
                log.warning("could not cancel duplicate batch %s: %s", dup.id, exc)
        job = found[0]
        return SubmittedBatch(
            batch_id=job.id,
            input_file_id=job.input_files[0] if job.input_files else None,
            request_count=job.total_requests,
            raw_state=raw_state_str(job.status),
        )

    async def status(self, batch_id: str) -> BatchStatus:
        with translate_errors(self.name):
            job = await self._client.batch.jobs.get_async(job_id=batch_id)
        return self._status(job)

    def _status(self, job: BatchJob) -> BatchStatus:
        raw = raw_state_str(job.status)
        outputs: list[dict[str, Any]] | None = (
            list(job.outputs) if isinstance(job.outputs, list) else None
        )
        return BatchStatus(
            batch_id=job.id,
            state=map_state(self.name, raw),
            raw_state=raw,
            output_file_id=_str(job.output_file),
            error_file_id=_str(job.error_file),
            total=job.total_requests,
            completed=job.succeeded_requests,
            failed=job.failed_requests,
            inline_results=outputs,
            failure_message=_errors_text(job),
        )

    async def results(self, status: BatchStatus) -> AsyncIterator[ResultLine]:
        """Output file lines, error file lines, then inline ``outputs`` (if any)."""
        for file_id in (status.output_file_id, status.error_file_id):
            if not file_id:
                continue
            with temp_path() as path:
                await self._download(file_id, path)
                async for line in parse_jsonl_file(path, parse_mistral_line, self._on_malformed):
                    yield line
        for item in status.inline_results or ():
            result = parse_mistral_line(item)
            if result is not None:
                yield result
            elif self._on_malformed is not None:
                self._on_malformed(repr(item)[:1024].encode(), "inline output has no custom_id")
            else:
                log.warning("mistral inline output without custom_id dropped")

    async def _download(self, file_id: str, path: str) -> None:
        with translate_errors(self.name):
            resp = await self._client.files.download_async(file_id=file_id)
            try:
                with open(path, "wb") as fh:  # noqa: ASYNC230 - chunked local writes
                    async for chunk in resp.aiter_bytes():
                        fh.write(chunk)
            finally:
                await resp.aclose()

    async def cancel(self, batch_id: str) -> None:
        with translate_errors(self.name):
            await self._client.batch.jobs.cancel_async(job_id=batch_id)

    async def aclose(self) -> None:
        """Close the async HTTP client the SDK created."""
        cfg = self._client.sdk_configuration
        if cfg.async_client is not None and not cfg.async_client_supplied:
            await cfg.async_client.aclose()
        cfg.async_client = None


def _errors_text(job: BatchJob) -> str | None:
    """The job's ``errors: [{message, count}]`` as one line, or None when empty."""
    parts = []
    for e in job.errors or []:
        count = getattr(e, "count", None)
        message = getattr(e, "message", None) or ""
        parts.append(f"{message} (x{count})" if count and count > 1 else message)
    text = "; ".join(p for p in parts if p)
    return text or None


class MistralChat:
    """``ChatProvider`` over Mistral ``chat.complete`` (``json_schema`` response format) and
    ``embeddings.create``; the same client settings as the batch adapter."""

    name = "mistral"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        client: Mistral | None = None,
    ) -> None:
        self._client = client or make_mistral_client(api_key, base_url, timeout)

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        body = openai_chat_body(
            request, None, json_mode="json_schema", max_tokens_field="max_tokens"
        )
        # Only set fields are passed: an explicit None would be sent as JSON null.
        optional: dict[str, Any] = {k: body[k] for k in ("max_tokens", "temperature") if k in body}
        with translate_errors(self.name):
            response = await self._client.chat.complete_async(
                model=model,
                messages=cast(Any, body["messages"]),
                response_format=cast(Any, body["response_format"]),
                **optional,
            )
        return parse_chat_completion(request.custom_id, response.model_dump(mode="json"))

    async def converse(self, model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
        extra: dict[str, Any] = {}
        if prompt.json_output:
            extra["response_format"] = (
                {
                    "type": "json_schema",
                    "json_schema": {"name": "result", "schema": prompt.json_schema, "strict": True},
                }
                if prompt.json_schema is not None
                else {"type": "json_object"}
            )
        if prompt.max_output_tokens is not None:
            extra["max_tokens"] = prompt.max_output_tokens
        if prompt.temperature is not None:
            extra["temperature"] = prompt.temperature
        with translate_errors(self.name):
            response = await self._client.chat.complete_async(
                model=model, messages=cast(Any, messages), **extra
            )
        choice = response.choices[0] if response.choices else None
        content = choice.message.content if choice is not None and choice.message else None
        text = content if isinstance(content, str) or content is None else str(content)
        usage = response.usage
        return to_reply(
            self.name,
            text,
            str(choice.finish_reason) if choice is not None else None,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            messages,
        )

    async def embed(self, model: str, texts: Sequence[str]) -> Embedded:
        with translate_errors(self.name):
            response = await self._client.embeddings.create_async(model=model, inputs=list(texts))
        data = sorted(response.data, key=lambda d: d.index or 0)
        return Embedded([list(d.embedding or []) for d in data], response.usage.prompt_tokens or 0)

    async def aclose(self) -> None:
        cfg = self._client.sdk_configuration
        if cfg.async_client is not None and not cfg.async_client_supplied:
            await cfg.async_client.aclose()
        cfg.async_client = None
