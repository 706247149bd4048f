"""Gemini Developer API under ``/gemini``, for both ``v1`` and ``v1beta``.

Serves the resumable upload protocol (``/upload/{v}/files``), files get/list/delete/download,
``models/{m}:batchGenerateContent`` (inline requests or a JSONL file), batches get/list/
cancel/delete, ``:generateContent``, ``:embedContent`` and ``:batchEmbedContents``.

Batches are long-running Operations: ``name`` at top level, ``metadata`` with ``@type``,
``state`` (``BATCH_STATE_PENDING → RUNNING → SUCCEEDED | FAILED | EXPIRED | CANCELLED``),
``batchStats`` (int64 as strings) and ``output``; ``done: true`` and a mirrored ``response``
once terminal. Cancel is immediate (``CANCELLED``); ``EXPIRED`` has no results. Failed lines
carry a google.rpc.Status with an rpc code (13 INTERNAL for ``line_failure_status=500``,
3 INVALID_ARGUMENT for 400); inline ``error.details`` is omitted (the SDK wants strings).

Real limits (off by default, :mod:`.limits`): over ``gemini_max_concurrent_batches`` or
``gemini_enqueued_tokens_per_model`` the create (and, at the cap, the listing) answers the
generic 429 ``RESOURCE_EXHAUSTED``; ``gemini_output_delay_polls`` keeps a succeeded batch's
``output`` away for N more reads; ``strict_api_versions`` serves batch and file routes only
under ``v1beta``; a failed batch's operation ``error`` follows ``batch_failure_code``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from worker.emulator import answer_faults, content
from worker.emulator.faults import bad_request_reply, not_found_reply
from worker.emulator.lifecycle import (
    LineTemplate,
    PreparedLines,
    advance,
    is_malformed,
    iter_jsonl,
    line_outcome,
    malformed_text,
    new_result_file,
    record_outcomes,
    request_cancel,
    shuffled_blocks,
    slot,
    violates,
)
from worker.emulator.store import BatchRecord, BatchSettings, FileRecord, Store, new_id, now
from worker.emulator.wire import Request, Response, Router

_V = r"/(?P<v>v1|v1beta)"
_STATE = {
    "queued": "BATCH_STATE_PENDING",
    "running": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
_TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    """Proto-JSON servers accept both spellings; so does the emulator."""
    return d.get(camel, d.get(snake))


def contents_text(request: dict[str, Any]) -> str:
    """All text of a GenerateContentRequest (system instruction + contents)."""
    parts: list[str] = []
    sys_inst = _get(request, "systemInstruction", "system_instruction")
    items: list[Any] = []
    if sys_inst:
        items.append(sys_inst)
    c = request.get("contents")
    if isinstance(c, list):
        items.extend(c)
    elif c is not None:
        items.append(c)
    for item in items:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, dict):
            for p in item.get("parts") or []:
                if isinstance(p, dict) and "text" in p:
                    parts.append(f"{item.get('role', 'user')}: {p['text']}")
    return "\n".join(parts)


def gemini_schema(request: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(wants JSON, schema) from ``generationConfig``."""
    gc = _get(request, "generationConfig", "generation_config") or {}
    schema = None
    for camel, snake in (
        ("responseJsonSchema", "response_json_schema"),
        ("responseSchema", "response_schema"),
    ):
        schema = _get(gc, camel, snake)
        if schema:
            break
    schema = schema or gc.get("_responseJsonSchema")
    mime = _get(gc, "responseMimeType", "response_mime_type")
    return (mime == "application/json" or schema is not None), schema


def content_response(
    text: Any, tokens_in: Any, tokens_out: Any, tokens_total: Any, model: Any, response_id: Any
) -> dict[str, Any]:
    """A GenerateContentResponse (also filled with placeholders for line templates)."""
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": tokens_in,
            "candidatesTokenCount": tokens_out,
            "totalTokenCount": tokens_total,
        },
        "modelVersion": model,
        "responseId": response_id,
    }


def generate_content(
    model: str, request: dict[str, Any], config_seed: int, violate: bool
) -> tuple[dict[str, Any], int, int]:
    """A GenerateContentResponse; returns (response, prompt tokens, candidate tokens)."""
    model = model.removeprefix("models/")
    prompt = contents_text(request)
    seed = content.seed_from(config_seed, model, prompt)
    wants_json, schema = gemini_schema(request)
    text = content.answer_text(wants_json, schema, seed, violate)
    tin = content.count_tokens(prompt)
    tout = content.count_tokens(text)
    return content_response(text, tin, tout, tin + tout, model, f"{seed:016x}"), tin, tout


def prepare_request(prepared: PreparedLines, model: str, request: Any, config_seed: int) -> None:
    """Record what :func:`generate_content` needs for one batch line's ``request``."""
    try:
        if not isinstance(request, dict):
            raise TypeError("request must be an object")
        model = model.removeprefix("models/")
        prompt = contents_text(request)
        wants_json, schema = gemini_schema(request)
        seed = content.seed_from(config_seed, model, prompt)
        prepared.add(seed, content.count_tokens(prompt), model, wants_json, schema)
    except (AttributeError, TypeError, ValueError):
        prepared.add_unreadable()


# A successful line of a results file.
_RESULT_LINE = LineTemplate(
    {
        "key": slot("key"),
        "response": content_response(
            slot("text"), slot("tin"), slot("tout"), slot("ttotal"), slot("model"), slot("rid")
        ),
    }
)


def _line_error(status: int) -> dict[str, Any]:
    if status == 400:
        return {"code": 3, "message": "Request contains an invalid argument."}
    return {"code": 13, "message": "An internal error has occurred."}


class GeminiApi:
    """Routes and handlers for ``/gemini``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        r = Router()
        v = self._v1beta_only  # batch and file routes: v1beta only with strict_api_versions
        r.add("POST", r"/upload" + _V + "/files", v(self.upload))
        r.add("GET", _V + "/files", v(self.list_files))
        r.add("GET", _V + r"/files/(?P<id>[^/:]+):download", v(self.download))
        r.add("GET", r"/download" + _V + r"/files/(?P<id>[^/:]+):download", v(self.download))
        r.add("GET", _V + r"/files/(?P<id>[^/:]+)", v(self.get_file))
        r.add("DELETE", _V + r"/files/(?P<id>[^/:]+)", v(self.delete_file))
        r.add("POST", _V + r"/models/(?P<m>[^/:]+):batchGenerateContent", v(self.create_batch))
        r.add("GET", _V + "/batches", v(self.list_batches))
        r.add("GET", _V + r"/batches/(?P<id>[^/:]+)", v(self.get_batch))
        r.add("POST", _V + r"/batches/(?P<id>[^/:]+):cancel", v(self.cancel_batch))
        r.add("DELETE", _V + r"/batches/(?P<id>[^/:]+)", v(self.delete_batch))
        r.add("POST", _V + r"/batches/(?P<id>[^/:]+):delete", v(self.delete_batch))
        r.add("POST", _V + r"/models/(?P<m>[^/:]+):generateContent", self.generate)
        r.add("POST", _V + r"/models/(?P<m>[^/:]+):embedContent", self.embed_one)
        r.add("POST", _V + r"/models/(?P<m>[^/:]+):batchEmbedContents", self.embed_many)
        self.router = r

    def _v1beta_only(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """``handler``, refusing ``v1`` with 404 while ``strict_api_versions`` is on: the
        published references serve batch creation and the Files API under ``v1beta``."""

        def wrapped(req: Request) -> Response:
            if self.store.config.strict_api_versions and req.params.get("v") != "v1beta":
                return Response.error(
                    not_found_reply("gemini", f"Method {req.method} {req.path} on v1")
                )
            return handler(req)

        return wrapped

    # ---------------------------------------------------------------- files

    def file_json(self, f: FileRecord, req: Request) -> dict[str, Any]:
        short = f.id.removeprefix("files/")
        base = f"http://{req.host}/{req.provider}"
        v = req.params.get("v", "v1beta")
        out: dict[str, Any] = {
            "name": f.id,
            "displayName": f.filename,
            "mimeType": f.meta.get("mime_type", "application/jsonl"),
            "sizeBytes": str(f.bytes),
            "createTime": rfc3339(f.created_at),
            "updateTime": rfc3339(f.created_at),
            "expirationTime": rfc3339(self.store.file_expires_at(f) or f.created_at + 48 * 3600),
            "uri": f"{base}/{v}/files/{short}",
            "state": "ACTIVE",
            "source": f.meta.get("source", "UPLOADED"),
        }
        if out["source"] == "GENERATED":
            out["downloadUri"] = f"{base}/download/{v}/files/{short}:download?alt=media"
        return out

    def upload(self, req: Request) -> Response:
        command = (req.headers.get("X-Goog-Upload-Command") or "").lower()
        upload_id = req.q("upload_id")
        if upload_id is None:
            if "start" not in command:
                return Response.error(
                    bad_request_reply("gemini", "Only resumable uploads are supported.")
                )
            body = req.json()
            meta = body.get("file") or {}
            uid = new_id()
            file_id = "files/" + new_id(nbytes=8)
            display = (
                _get(meta, "displayName", "display_name")
                or req.headers.get("X-Goog-Upload-File-Name")
                or short_id(file_id)
            )
            mime = (
                _get(meta, "mimeType", "mime_type")
                or req.headers.get("X-Goog-Upload-Header-Content-Type")
                or "application/octet-stream"
            )
            path = self.store.new_file_path(file_id)
            open(path, "wb").close()
            with self.store.lock:
                self.store.uploads[uid] = {
                    "file_id": file_id,
                    "display": display,
                    "mime": mime,
                    "path": path,
                }
            url = f"http://{req.host}/{req.provider}/upload/{req.params['v']}/files?upload_id={uid}"
            return Response.json(
                {}, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}
            )
        with self.store.lock:
            session = self.store.uploads.get(upload_id)
        if session is None:
            return Response.error(not_found_reply("gemini", "upload session")).with_status(404)
        written = 0
        with open(session["path"], "ab") as f:
            while True:
                chunk = req.body.read()
                if not chunk:
                    break
                f.write(chunk)
                written += len(chunk)
        if "finalize" not in command:
            return Response.json({}, headers={"X-Goog-Upload-Status": "active"})
        with self.store.lock:
            self.store.uploads.pop(upload_id, None)
        rec = FileRecord(
            session["file_id"],
            "gemini",
            session["display"],
            "upload",
            session["path"],
            os.path.getsize(session["path"]),
            now(),
            {"mime_type": session["mime"], "source": "UPLOADED"},
        )
        self.store.add_file(rec)
        return Response.json(
            {"file": self.file_json(rec, req)}, headers={"X-Goog-Upload-Status": "final"}
        )

    def _file(self, req: Request) -> FileRecord | None:
        return self.store.get_file("gemini", "files/" + req.params["id"])

    def get_file(self, req: Request) -> Response:
        f = self._file(req)
        if f is None:
            return Response.error(not_found_reply("gemini", f"File files/{req.params['id']}"))
        return Response.json(self.file_json(f, req))

    def list_files(self, req: Request) -> Response:
        files = self.store.list_files("gemini")[::-1]
        items, token = _page(files, req.q("pageSize"), req.q("pageToken"))
        out: dict[str, Any] = {"files": [self.file_json(f, req) for f in items]}
        if token:
            out["nextPageToken"] = token
        return Response.json(out)

    def delete_file(self, req: Request) -> Response:
        if not self.store.delete_file("gemini", "files/" + req.params["id"]):
            return Response.error(not_found_reply("gemini", f"File files/{req.params['id']}"))
        return Response.json({})

    def download(self, req: Request) -> Response:
        f = self._file(req)
        if f is None:
            return Response.error(not_found_reply("gemini", f"File files/{req.params['id']}"))
        return Response(file_path=f.path, content_type="application/octet-stream")

    # ---------------------------------------------------------------- batches

    def create_batch(self, req: Request) -> Response:
        body = req.json()
        batch_body = body.get("batch", body)
        model = "models/" + req.params["m"].removeprefix("models/")
        ic = _get(batch_body, "inputConfig", "input_config") or {}
        file_name = _get(ic, "fileName", "file_name")
        data: dict[str, Any] = {
            "model": model,
            "display_name": _get(batch_body, "displayName", "display_name") or "",
        }
        custom_ids: list[str] = []
        cfg = self.store.config
        settings = BatchSettings.from_config(cfg)
        tokens = 0
        if file_name:
            f = self.store.get_file("gemini", str(file_name))
            if f is None:
                return Response.error(
                    bad_request_reply("gemini", f"File {file_name} not found or not accessible.")
                )
            data["file_name"] = f.id
            data["input_path"] = f.path
            prepared = data["prepared"] = PreparedLines()
            seed = settings.seed
            for i, raw in iter_jsonl(f.path):
                try:
                    line = json.loads(raw)
                    custom_ids.append(str(line.get("key", f"#{i}")))
                except (ValueError, AttributeError):
                    custom_ids.append(f"#{i}")
                    prepared.add_unreadable()
                    continue
                prepare_request(prepared, model, line.get("request") or {}, seed)
            tokens = sum(prepared.tokens_in)
        else:
            reqs = ic.get("requests")
            if isinstance(reqs, dict):
                reqs = reqs.get("requests")
            if not isinstance(reqs, list) or not reqs:
                return Response.error(
                    bad_request_reply("gemini", "inputConfig needs fileName or requests.")
                )
            data["inline"] = reqs
            for i, item in enumerate(reqs):
                md = item.get("metadata") or {}
                custom_ids.append(str(md.get("key", f"#{i}")))
                request = item.get("request")
                if isinstance(request, dict):
                    tokens += content.count_tokens(contents_text(request))
        data["enqueued_tokens"] = tokens
        data["output_delay_polls"] = cfg.gemini_output_delay_polls
        limits = self.store.limits
        with limits.lock:
            over = limits.gemini_over(model, tokens)
            if over is not None:
                return Response.error(over)
            batch = self._new_batch(custom_ids, data, settings)
            self.store.add_batch(batch)
        return Response.json(self.operation(batch))

    def _new_batch(
        self, custom_ids: list[str], data: dict[str, Any], settings: BatchSettings
    ) -> BatchRecord:
        created = now()
        batch = BatchRecord(
            id="batches/" + new_id(nbytes=8),
            provider="gemini",
            created_at=created,
            settings=settings,
            finisher=self._finish,
            phase_since=created,
            custom_ids=custom_ids,
            data=data,
        )
        batch.entered["queued"] = created
        return batch

    def operation(self, b: BatchRecord, show_output: bool = True) -> dict[str, Any]:
        total = len(b.custom_ids)
        done_lines = b.counts["ok"] + b.counts["failed"]
        md: dict[str, Any] = {
            "@type": _TYPE_PREFIX + "GenerateContentBatch",
            "name": b.id,
            "model": b.data["model"],
            "displayName": b.data["display_name"],
            "createTime": rfc3339(b.created_at),
            "updateTime": rfc3339(b.phase_since or b.created_at),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(b.counts["ok"]),
                "failedRequestCount": str(b.counts["failed"]),
                "pendingRequestCount": str(0 if b.terminal else total - done_lines),
            },
            "state": _STATE[b.phase],
            "priority": "0",
        }
        if "file_name" in b.data:
            md["inputConfig"] = {"fileName": b.data["file_name"]}
        op: dict[str, Any] = {"name": b.id, "metadata": md}
        if b.terminal:
            md["endTime"] = rfc3339(b.phase_since)
            op["done"] = True
            output: dict[str, Any] | None = None
            if b.output_file_id:
                output = {"responsesFile": b.output_file_id}
            elif b.inline_results is not None:
                output = {"inlinedResponses": {"inlinedResponses": b.inline_results}}
            if output is not None and show_output:
                md["output"] = output
                op["response"] = {"@type": _TYPE_PREFIX + "GenerateContentBatchOutput", **output}
            if b.phase == "failed":
                code = b.settings.failure_code
                if code and code.startswith("invalid"):
                    op["error"] = {"code": 3, "message": f"The batch job failed: {code}."}
                else:
                    op["error"] = {"code": 13, "message": "The batch job failed: internal error."}
        return op

    def _batch(self, req: Request) -> BatchRecord | None:
        b = self.store.get_batch("gemini", "batches/" + req.params["id"])
        if b is not None:
            advance(self.store, b)
        return b

    def get_batch(self, req: Request) -> Response:
        b = self._batch(req)
        if b is None:
            return Response.error(not_found_reply("gemini", f"Batch batches/{req.params['id']}"))
        return Response.json(self.operation(b, show_output=not self._output_delayed(b, True)))

    @staticmethod
    def _output_delayed(b: BatchRecord, count: bool) -> bool:
        """Succeeded, but the results are not readable yet (``gemini_output_delay_polls``):
        the first N reads after success show no output; ``count``: this read is one."""
        if b.phase != "completed" or b.data.get("output_delay_polls", 0) <= 0:
            return False
        if count:
            with b.lock:
                b.data["output_delay_polls"] -= 1
        return True

    def list_batches(self, req: Request) -> Response:
        limits = self.store.limits
        with limits.lock:
            over = limits.gemini_over()
        if over is not None:
            return Response.error(over)
        batches = self.store.list_batches("gemini")[::-1]
        items, token = _page(batches, req.q("pageSize"), req.q("pageToken"))
        for b in items:
            advance(self.store, b)
        out: dict[str, Any] = {
            "operations": [
                self.operation(b, show_output=not self._output_delayed(b, False)) for b in items
            ]
        }
        if token:
            out["nextPageToken"] = token
        return Response.json(out)

    def cancel_batch(self, req: Request) -> Response:
        b = self._batch(req)
        if b is None:
            return Response.error(not_found_reply("gemini", f"Batch batches/{req.params['id']}"))
        request_cancel(self.store, b, immediate=True)
        return Response.json({})

    def delete_batch(self, req: Request) -> Response:
        b = self.store.get_batch("gemini", "batches/" + req.params["id"])
        if b is None:
            return Response.error(not_found_reply("gemini", f"Batch batches/{req.params['id']}"))
        b.deleted = True
        return Response.json({})

    def _finish(self, b: BatchRecord, terminal: str) -> None:
        s = b.settings
        if terminal not in ("completed",):
            return  # FAILED / EXPIRED / CANCELLED carry no results
        model = b.data["model"]
        tin_total = tout_total = 0
        outcomes: dict[int, str] = {}
        if "inline" in b.data:
            results: list[dict[str, Any]] = []
            for i, item in enumerate(b.data["inline"]):
                md = {str(k): str(v) for k, v in (item.get("metadata") or {}).items()}
                cid = b.custom_ids[i]
                outcome = line_outcome(s, terminal, cid, i, partial_on_expiry=False)
                outcomes[i] = outcome
                entry: dict[str, Any] = {}
                if outcome == "succeeded":
                    resp, tin, tout = generate_content(
                        model, item.get("request") or {}, s.seed, violates(s, cid)
                    )
                    tin_total += tin
                    tout_total += tout
                    entry["response"] = resp
                    b.counts["ok"] += 1
                else:
                    entry["error"] = _line_error(s.line_failure_status)
                    b.counts["failed"] += 1
                if md:
                    entry["metadata"] = md
                results.append(entry)
            if not s.no_output_file:
                b.inline_results = results
        else:
            out = new_result_file(
                self.store,
                "gemini",
                "files/batch",
                "batch-results.jsonl",
                "batch_output",
                {"mime_type": "application/jsonl", "source": "GENERATED"},
            )
            prepared: PreparedLines = b.data["prepared"]
            short_model = model.removeprefix("models/")
            for idx in shuffled_blocks(range(len(prepared)), s.seed):
                cid = b.custom_ids[idx]
                outcome = line_outcome(s, terminal, cid, idx, partial_on_expiry=False)
                if prepared.answer_of[idx] < 0:
                    outcome = "failed"
                outcomes[idx] = outcome
                if outcome != "succeeded":
                    out.write_obj({"key": cid, "error": _line_error(s.line_failure_status)})
                    b.counts["failed"] += 1
                    continue
                seed = prepared.seeds[idx]
                tin = prepared.tokens_in[idx]
                text = prepared.answers[prepared.answer_of[idx]].text(seed, violates(s, cid))
                tout = content.count_tokens(text)
                tin_total += tin
                tout_total += tout
                line = _RESULT_LINE.render(
                    key=encode_basestring(cid),
                    text=encode_basestring(text),
                    tin=str(tin),
                    tout=str(tout),
                    ttotal=str(tin + tout),
                    model=encode_basestring(short_model),
                    rid=f'"{seed:016x}"',
                )
                out.write_line(malformed_text(line) if is_malformed(s, cid) else line)
                b.counts["ok"] += 1
            b.output_file_id = out.close(keep=not s.no_output_file)
        b.usage["input"] = tin_total
        b.usage["output"] = tout_total
        record_outcomes(self.store, b, outcomes)
        self.store.add_usage(
            "gemini", model.removeprefix("models/"), "batch", tin_total, tout_total
        )

    # ---------------------------------------------------------------- realtime

    def generate(self, req: Request) -> Response:
        body = req.json()
        cfg = self.store.config
        violate = bool(cfg.schema_violation_rate) and (
            content.unit_fraction(cfg.seed, "violation", contents_text(body))
            < cfg.schema_violation_rate
        )
        resp, tin, tout = generate_content(req.params["m"], body, cfg.seed, violate)
        if req.answer_fault is not None:
            resp = answer_faults.gemini_answer(req.answer_fault, resp)
        self.store.count("gemini", "chat_calls")
        self.store.add_usage("gemini", req.params["m"], "realtime", tin, tout)
        return Response.json(resp)

    def _embed(self, default_model: str, item: dict[str, Any]) -> tuple[list[float], int]:
        model = str(item.get("model") or default_model).removeprefix("models/")
        c = item.get("content") or {}
        text = " ".join(str(p.get("text", "")) for p in c.get("parts") or [] if isinstance(p, dict))
        dims = content.embedding_dims(
            model, _get(item, "outputDimensionality", "output_dimensionality")
        )
        return content.embed(model, text, dims, self.store.config.seed), content.count_tokens(text)

    def embed_one(self, req: Request) -> Response:
        vec, tokens = self._embed(req.params["m"], req.json())
        self.store.count("gemini", "embedding_calls")
        self.store.add_usage("gemini", req.params["m"], "realtime", tokens, 0)
        return Response.json({"embedding": {"values": vec}})

    def embed_many(self, req: Request) -> Response:
        body = req.json()
        out = []
        tokens = 0
        for item in body.get("requests") or []:
            vec, t = self._embed(req.params["m"], item)
            tokens += t
            out.append({"values": vec})
        self.store.count("gemini", "embedding_calls")
        self.store.add_usage("gemini", req.params["m"], "realtime", tokens, 0)
        return Response.json({"embeddings": out})


def short_id(name: str) -> str:
    return name.split("/", 1)[-1]


def _page(items: list[Any], size: str | None, token: str | None) -> tuple[list[Any], str | None]:
    """Offset paging with an opaque-looking token (the offset as a string)."""
    n = max(1, int(size or 50))
    start = int(token) if token and token.isdigit() else 0
    page = items[start : start + n]
    nxt = str(start + n) if start + n < len(items) else None
    return page, nxt
