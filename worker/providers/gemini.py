"""Gemini Developer API Batch adapter (``google-genai`` async client, ``client.aio``).

Flow: requests -> JSONL temp file (``{"key", "request"}`` lines, always deleted) ->
``aio.files.upload(mime_type="jsonl")`` (resumable upload) -> ``aio.batches.create(model,
src="files/...", config={"display_name": intent_id})``. Results come from
``dest.file_name`` (downloaded with ``aio.files.download(destination=path)``, which google-genai
3.4 streams to disk in 1 MiB chunks, then parsed line by line from the temp file) or from
``dest.inlined_responses`` (keyed by ``metadata.key``, never by position).

Limits (our choice): 50,000 requests and 1.5 GB per input file. The documented caps are
2 GB per input file and 20 GB of Files storage per project; 1.5 GB leaves headroom for
several batches in flight in the same project's storage and keeps a single upload (8 MB
resumable chunks) well below the file cap. There is no documented request-count cap for
file input; 50,000 matches the other providers so one chunking policy serves all three and
a failed batch costs at most that many retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from google import genai
from google.genai import types
from pydantic import SecretStr

from worker.errors import ProviderError
from worker.providers import idempotent
from worker.providers.answer_rules import to_reply
from worker.providers.base import (
    BatchLimits,
    BatchState,
    BatchStatus,
    ChatRequest,
    Embedded,
    Prompt,
    Reply,
    ResultLine,
    SubmittedBatch,
    estimate_tokens,
    secret_value,
)
from worker.providers.error_policy import GRPC_CODES, translate_errors
from worker.providers.jsonl import (
    MalformedCallback,
    check_batch_size,
    parse_gemini_inline,
    parse_gemini_line,
    parse_generate_content,
    parse_jsonl_file,
    request_line_encoder,
    temp_path,
    write_jsonl_path_async,
)
from worker.providers.states import map_state, raw_state_str

log = logging.getLogger(__name__)

GEMINI_LIMITS = BatchLimits(max_requests=50_000, max_bytes=1_500 * 1000 * 1000)

#: The docs use ``mime_type='jsonl'``; Python 3.11's mimetypes does not know ``.jsonl``, so
#: it must be given explicitly.
JSONL_MIME = "jsonl"

#: Batch creation and upload are not idempotent: the SDK must never retry them by itself
#: (google-genai retries nothing unless HttpOptions.retry_options is set; said explicitly).
NO_RETRY = types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: The API version every Gemini call is pinned to. The published references serve batch
#: creation and the Files API only under ``v1beta`` (the ``v1`` surface maps batches
#: get/list/cancel/delete and lacks ``system_instruction`` and ``response_mime_type``);
#: google-genai 3.x sends to ``v1`` when ``api_version`` is unset, 1.x-2.34 to ``v1beta``.
#: ``generateContent`` and ``batchEmbedContents`` are served under ``v1beta`` too, so one
#: client serves both.
GEMINI_API_VERSION = "v1beta"


def make_genai_client(
    api_key: SecretStr | str,
    base_url: str | None,
    timeout: float,
    api_version: str | None = None,
) -> genai.Client:
    """A Developer-API client (never Vertex) pinned to ``api_version`` (default
    :data:`GEMINI_API_VERSION`). ``base_url`` must not include a version: the SDK appends
    ``/{api_version}/``. The SDK's upload URL follows the same version
    (``/upload/v1beta/files``)."""
    options = types.HttpOptions(
        base_url=base_url,
        timeout=int(timeout * 1000),  # HttpOptions.timeout is in milliseconds
        api_version=api_version or GEMINI_API_VERSION,
    )
    return genai.Client(api_key=secret_value(api_key), vertexai=False, http_options=options)


def _dump(model: Any) -> dict[str, Any]:
    """An SDK pydantic object as a plain dict (snake_case keys; the parsers accept both)."""
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped


class GeminiBatch:
    """:class:`~worker.providers.base.BatchProvider` for the Gemini Batch API (file input)."""

    name = "gemini"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        api_version: str | None = None,
        limits: BatchLimits = GEMINI_LIMITS,
        list_page_size: int = 100,
        max_list_pages: int = 5,
        schema_field: str = "responseJsonSchema",
        on_malformed: MalformedCallback | None = None,
        client: genai.Client | None = None,
    ) -> None:
        self.limits = limits
        self._list_page_size = list_page_size
        self._max_list_pages = max_list_pages
        self._schema_field = schema_field
        self._on_malformed = on_malformed
        self._client = client or make_genai_client(api_key, base_url, timeout, api_version)

    async def submit(
        self,
        model: str,
        requests: Sequence[ChatRequest],
        *,
        intent_id: str,
        created_after: datetime | None = None,
    ) -> SubmittedBatch:
        """Upload the requests as a JSONL file and create one batch, both named
        ``intent_id``, each exactly once (worker.providers.idempotent): no SDK retries, and
        after an ambiguous failure a lookup by display name before trying again."""
        encode = request_line_encoder(self.name, model, schema_field=self._schema_field)
        lines = (encode(r) for r in requests)
        with temp_path() as path:
            count, size = await write_jsonl_path_async(path, lines)
            check_batch_size(self.name, self.limits, count, size)

            async def upload() -> str:
                with translate_errors(self.name):
                    uploaded = await self._client.aio.files.upload(
                        file=path,
                        config=types.UploadFileConfig(
                            display_name=intent_id, mime_type=JSONL_MIME, http_options=NO_RETRY
                        ),
                    )
                if not uploaded.name:
                    raise ValueError("upload returned a file without a name")
                return uploaded.name

            file_name = await idempotent.once(
                upload, lambda: self._find_file(intent_id, created_after)
            )

            async def create() -> SubmittedBatch:
                with translate_errors(self.name):
                    job = await self._client.aio.batches.create(
                        model=model,
                        src=file_name,
                        config=types.CreateBatchJobConfig(
                            display_name=intent_id, http_options=NO_RETRY
                        ),
                    )
                if not job.name:
                    raise ValueError("batch created without a name")
                return SubmittedBatch(
                    batch_id=job.name,
                    input_file_id=file_name,
                    request_count=count,
                    raw_state=raw_state_str(job.state),
                )

            try:
                return await idempotent.once(
                    create, lambda: self.find_by_intent(intent_id, created_after)
                )
            except Exception as exc:
                idempotent.mark_create_failure(exc)
                raise

    async def _find_file(self, intent_id: str, created_after: datetime | None) -> str | None:
        """The newest file whose display name is ``intent_id`` (files list newest first)."""
        since = idempotent.not_before(created_after)
        with translate_errors(self.name):
            pager = await self._client.aio.files.list(
                config=types.ListFilesConfig(page_size=self._list_page_size)
            )
            pages = 0
            while True:
                for f in pager.page:
                    if f.display_name == intent_id and f.name:
                        return f.name
                    created = idempotent.as_datetime(f.create_time)
                    if since is not None and created is not None and created < since:
                        return None
                pages += 1
                if since is None and pages >= self._max_list_pages:
                    return None
                try:
                    await pager.next_page()
                except IndexError:  # the pager's "no more pages"
                    return None

    async def find_by_intent(
        self, intent_id: str, created_after: datetime | None = None
    ) -> SubmittedBatch | None:
        """The batch whose ``display_name`` is ``intent_id``. The Developer API offers no
        server-side filter (the SDK rejects ``filter``), so we page, newest first, back to
        ``created_after`` (minus clock slack) however many batches there are, or
        ``max_list_pages`` pages without a time. Of several batches with the name (a lost
        create answer, then a retry) the oldest is returned and the others are cancelled.
        The request count is unknown from a listing and reported as 0."""
        since = idempotent.not_before(created_after)
        found: list[types.BatchJob] = []
        with translate_errors(self.name):
            pager = await self._client.aio.batches.list(
                config=types.ListBatchJobsConfig(page_size=self._list_page_size)
            )
            pages = 0
            done = False
            while not done:
                for job in pager.page:
                    if job.display_name == intent_id and job.name:
                        found.append(job)
                    created = idempotent.as_datetime(job.create_time)
                    if since is not None and created is not None and created < since:
                        done = True
                        break
                pages += 1
                if done or (since is None and pages >= self._max_list_pages):
                    break
                try:
                    await pager.next_page()
                except IndexError:  # the pager's "no more pages"
                    break
        if not found:
            return None
        found.sort(key=lambda j: (idempotent.as_datetime(j.create_time) or _EPOCH, j.name or ""))
        for dup in found[1:]:
            try:
                await self.cancel(dup.name or "")
                log.warning("cancelled duplicate batch %s of intent %s", dup.name, intent_id)
            except Exception as exc:  # best effort; logged
                log.warning("could not cancel duplicate batch %s: %s", dup.name, exc)
        job = found[0]
        return SubmittedBatch(
            batch_id=job.name or "",
            input_file_id=job.src.file_name if job.src else None,
            request_count=0,
            raw_state=raw_state_str(job.state),
        )

    async def status(self, batch_id: str) -> BatchStatus:
        with translate_errors(self.name):
            job = await self._client.aio.batches.get(name=batch_id)
        raw = raw_state_str(job.state)
        dest = job.dest
        inline: list[dict[str, Any]] | None = None
        if dest is not None and dest.inlined_responses:
            inline = [_dump(r) for r in dest.inlined_responses]
        stats = job.completion_stats  # Vertex only; None on the Developer API
        total = completed = failed = None
        if stats is not None:
            completed = stats.successful_count
            failed = stats.failed_count
            if completed is not None and failed is not None:
                total = completed + failed + (stats.incomplete_count or 0)
        state = map_state(self.name, raw)
        code = message = None
        if state is BatchState.FAILED:
            code, message = await self._operation_error(batch_id)
        return BatchStatus(
            batch_id=job.name or batch_id,
            state=state,
            raw_state=raw,
            output_file_id=dest.file_name if dest is not None else None,
            error_file_id=None,  # Gemini puts error lines in the same file
            total=total,
            completed=completed,
            failed=failed,
            inline_results=inline,
            failure_code=code,
            failure_message=message,
        )

    async def _operation_error(self, batch_id: str) -> tuple[str | None, str | None]:
        """The failed operation's ``error`` (google.rpc.Status): google-genai's
        ``_BatchJob_from_mldev`` drops it in Developer-API mode, so the raw operation is
        read once more through the SDK's own API client (same URL, key and version).
        Returns (rpc code name, message); (None, None) if there is none or it is
        unreadable (the failure is then of unknown cause)."""
        try:
            with translate_errors(self.name):
                resp = await self._client.aio._api_client.async_request("get", batch_id, {}, None)
            op = json.loads(resp.body or "{}")
        except (ProviderError, ValueError) as exc:
            log.warning("could not read the failed batch's error: %s", exc)
            return None, None
        err = op.get("error") if isinstance(op, dict) else None
        if not isinstance(err, dict):
            return None, None
        raw_code = err.get("code")
        name = err.get("status")
        if not isinstance(name, str) and isinstance(raw_code, int):
            name = GRPC_CODES.get(raw_code, (str(raw_code), 0))[0]
        message = err.get("message")
        return (name if isinstance(name, str) else None), (
            str(message) if message is not None else None
        )

    async def results(self, status: BatchStatus) -> AsyncIterator[ResultLine]:
        """The result file's lines, then any inline responses."""
        if status.output_file_id:
            with temp_path() as path:
                with translate_errors(self.name):
                    await self._client.aio.files.download(
                        file=status.output_file_id, destination=path
                    )
                async for line in parse_jsonl_file(path, parse_gemini_line, self._on_malformed):
                    yield line
        for item in status.inline_results or ():
            result = parse_gemini_inline(item)
            if result is not None:
                yield result
            elif self._on_malformed is not None:
                self._on_malformed(repr(item)[:1024].encode(), "inline response has no key")
            else:
                log.warning("gemini inline response without metadata.key dropped")

    async def cancel(self, batch_id: str) -> None:
        with translate_errors(self.name):
            await self._client.aio.batches.cancel(name=batch_id)

    async def aclose(self) -> None:
        """Close the async HTTP client."""
        await self._client.aio.aclose()


class GeminiChat:
    """``ChatProvider`` over Gemini ``generateContent`` (``responseJsonSchema`` for JSON)
    and ``embedContent``; the same pinned client as the batch adapter."""

    name = "gemini"

    def __init__(
        self,
        api_key: SecretStr | str,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        api_version: str | None = None,
        client: genai.Client | None = None,
    ) -> None:
        self._client = client or make_genai_client(api_key, base_url, timeout, api_version)

    @staticmethod
    def config(request: ChatRequest) -> types.GenerateContentConfig:
        """The same generation settings as :func:`jsonl.gemini_generate_request`."""
        return types.GenerateContentConfig(
            system_instruction=request.system_prompt,
            response_mime_type="application/json",
            response_json_schema=request.json_schema,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
        )

    async def complete(self, model: str, request: ChatRequest) -> ResultLine:
        with translate_errors(self.name):
            response = await self._client.aio.models.generate_content(
                model=model,
                contents=[types.Content(role="user", parts=[types.Part(text=request.user_prompt)])],
                config=self.config(request),
            )
        dumped = response.model_dump(mode="json", exclude_none=True, exclude={"sdk_http_response"})
        return parse_generate_content(request.custom_id, dumped)

    async def converse(self, model: str, prompt: Prompt, messages: list[dict[str, str]]) -> Reply:
        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in messages
            if m["role"] != "system"
        ]
        config = types.GenerateContentConfig(
            system_instruction=prompt.system or None,
            response_mime_type="application/json" if prompt.json_output else None,
            response_json_schema=prompt.json_schema if prompt.json_output else None,
            max_output_tokens=prompt.max_output_tokens,
            temperature=prompt.temperature,
        )
        with translate_errors(self.name):
            response = await self._client.aio.models.generate_content(
                model=model, contents=cast(Any, contents), config=config
            )
        finish = None
        if response.candidates:
            fr = response.candidates[0].finish_reason
            finish = str(fr.value if hasattr(fr, "value") else fr) if fr is not None else None
        block = None
        if response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            br = response.prompt_feedback.block_reason
            block = str(br.value if hasattr(br, "value") else br)
        meta = response.usage_metadata
        text: str | None
        try:
            text = response.text
        except ValueError:
            text = None
        return to_reply(
            self.name,
            text,
            finish,
            meta.prompt_token_count if meta else None,
            meta.candidates_token_count if meta else None,
            messages,
            block_reason=block,
        )

    async def embed(self, model: str, texts: Sequence[str]) -> Embedded:
        with translate_errors(self.name):
            result = await self._client.aio.models.embed_content(
                model=model, contents=cast(Any, list(texts))
            )
        vectors = [list(e.values or []) for e in (result.embeddings or [])]
        # embedContent reports no usage: estimated.
        return Embedded(vectors, sum(estimate_tokens(t) for t in texts))

    async def aclose(self) -> None:
        await self._client.aio.aclose()
