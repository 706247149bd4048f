"""OpenAI Batch API adapter (``AsyncOpenAI``: Files + Batches, ``/v1/chat/completions``).

Flow: requests -> JSONL temp file (written in a thread, always deleted) -> ``files.create
(purpose="batch")`` -> ``batches.create(metadata={"intent_id": ...})``. Results: the output
file, then the error file, are each streamed to a temp file with
``files.with_streaming_response.content`` and parsed line by line from disk, so neither a
whole file nor an open HTTP stream is held while the caller processes lines (a slow
consumer cannot time out the download, and a failed download yields nothing twice).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from openai import AsyncOpenAI
from openai.types import Batch
from pydantic import SecretStr

from worker.providers import idempotent
from worker.providers.base import (
    BatchLimits,
    BatchStatus,
    ChatRequest,
    ResultLine,
    SubmittedBatch,
    secret_value,
)
from worker.providers.error_policy import translate_errors
from worker.providers.jsonl import (
    OPENAI_CHAT_URL,
    MalformedCallback,
    check_batch_size,
    parse_jsonl_file,
    parse_openai_line,
    request_line_encoder,
    temp_path,
    write_jsonl_path_async,
)
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
