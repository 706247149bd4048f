"""Mistral under ``/mistral`` (paths ``/mistral/v1/...``): files, batch jobs, chat, embeddings.

Batch jobs: ``QUEUED → RUNNING → SUCCESS | FAILED | TIMEOUT_EXCEEDED`` and
``CANCELLATION_REQUESTED → CANCELLED``. Every BatchJob carries ``errors`` (a list) and all four
counters, as the strict SDK models require. Output lines are
``{"id","custom_id","response":{"status_code":200,"body":{chat.completion}},"error":null}``;
failed lines go to the error file in the same envelope with the failure status and a flat
Mistral error body; timed-out lines have ``response: null`` and ``error: {message, code}``.
Jobs created with inline ``requests`` get ``outputs`` (all results, input order) once
finished; ``GET ?inline=true`` adds them for file-based jobs too. Files carry
``sample_type``/``source`` (results: ``batch_result``/``batch_error``, source ``mistral``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from json.encoder import encode_basestring
from typing import Any

from worker.emulator import content
from worker.emulator.faults import bad_request_reply, not_found_reply
from worker.emulator.lifecycle import (
    PreparedLines,
    advance,
    is_malformed,
    iter_jsonl,
    line_outcome,
    malformed_text,
    record_outcomes,
    request_cancel,
    slot,
    violates,
)
from worker.emulator.lifecycle import ResultFile as _ResultFile
from worker.emulator.openai_api import (
    chat_completion,
    chat_line_template,
    embeddings_response,
    prepare_chat_line,
    realtime_chat,
    realtime_embeddings,
    render_chat_line,
)
from worker.emulator.store import BatchRecord, BatchSettings, FileRecord, Store, now
from worker.emulator.wire import Request, Response, Router, parse_multipart

_STATUS = {
    "queued": "QUEUED",
    "running": "RUNNING",
    "cancelling": "CANCELLATION_REQUESTED",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelled": "CANCELLED",
}
_LIST_PARAMS = {
    "page",
    "page_size",
    "model",
    "agent_id",
    "status",
    "created_after",
    "created_by_me",
    "order_by",
    "metadata",
}


def _uuid() -> str:
    return str(uuid.uuid4())


def _line_error(status: int) -> dict[str, Any]:
    if status == 400:
        return {
            "object": "error",
            "message": "Invalid request",
            "type": "invalid_request_error",
            "param": None,
            "code": "3000",
        }
    return {
        "object": "error",
        "message": "Internal server error",
        "type": "internal_server_error",
        "param": None,
        "code": "1000",
    }


# A successful line of an output file.
_CHAT_LINE = chat_line_template(
    {
        "id": slot("line_id"),
        "custom_id": slot("cid"),
        "response": {"status_code": 200, "body": slot("body")},
        "error": None,
    }
)


class MistralApi:
    """Routes and handlers for ``/mistral``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        r = Router()
        r.add("POST", "/v1/files", self.upload_file)
        r.add("GET", "/v1/files", self.list_files)
        r.add("GET", r"/v1/files/(?P<id>[^/]+)", self.get_file)
        r.add("DELETE", r"/v1/files/(?P<id>[^/]+)", self.delete_file)
        r.add("GET", r"/v1/files/(?P<id>[^/]+)/content", self.file_content)
        r.add("POST", "/v1/batch/jobs", self.create_job)
        r.add("GET", "/v1/batch/jobs", self.list_jobs)
        r.add("GET", r"/v1/batch/jobs/(?P<id>[^/]+)", self.get_job)
        r.add("POST", r"/v1/batch/jobs/(?P<id>[^/]+)/cancel", self.cancel_job)
        r.add("DELETE", r"/v1/batch/jobs/(?P<id>[^/]+)", self.delete_job)
        r.add("POST", "/v1/chat/completions", self.chat)
        r.add("POST", "/v1/embeddings", self.embeddings)
        self.router = r

    # ---------------------------------------------------------------- files

    @staticmethod
    def file_json(f: FileRecord, with_deleted: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f.id,
            "object": "file",
            "bytes": f.bytes,
            "created_at": int(f.created_at),
            "filename": f.filename,
            "purpose": f.purpose,
            "sample_type": f.meta.get("sample_type", "batch_request"),
            "source": f.meta.get("source", "upload"),
            "num_lines": f.meta.get("num_lines"),
            "mimetype": f.meta.get("mimetype", "application/jsonl"),
            "signature": None,
            "expires_at": None,
            "visibility": f.meta.get("visibility", "workspace"),
        }
        if with_deleted:
            out["deleted"] = False
        return out

    def upload_file(self, req: Request) -> Response:
        file_id = _uuid()
        path = self.store.new_file_path(file_id)
        fields, up = parse_multipart(req.body, req.headers.get("Content-Type") or "", path)
        if up is None:
            return Response.error(bad_request_reply("mistral", "Missing file"))
        purpose = fields.get("purpose") or "fine-tune"
        num_lines = 0
        last = b"\n"
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                num_lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            num_lines += 1  # final line without a trailing newline
        rec = FileRecord(
            file_id,
            "mistral",
            up.filename,
            purpose,
            path,
            up.size,
            now(),
            {
                "sample_type": "batch_request" if purpose == "batch" else "instruct",
                "source": "upload",
                "num_lines": num_lines,
                "visibility": fields.get("visibility") or "workspace",
            },
        )
        self.store.add_file(rec)
        return Response.json(self.file_json(rec))

    def list_files(self, req: Request) -> Response:
        files = self.store.list_files("mistral")[::-1]
        for key in ("purpose", "sample_type", "source"):
            want = req.query.get(key)
            if want:
                files = [
                    f for f in files if (f.purpose if key == "purpose" else f.meta.get(key)) in want
                ]
        search = req.q("search")
        if search:
            files = [f for f in files if search in f.filename]
        page = int(req.q("page") or 0)
        size = max(1, int(req.q("page_size") or 100))
        items = files[page * size : (page + 1) * size]
        return Response.json(
            {"data": [self.file_json(f) for f in items], "object": "list", "total": len(files)}
        )

    def get_file(self, req: Request) -> Response:
        f = self.store.get_file("mistral", req.params["id"])
        if f is None:
            return Response.error(not_found_reply("mistral", f"File {req.params['id']}"))
        return Response.json(self.file_json(f, with_deleted=True))

    def delete_file(self, req: Request) -> Response:
        if not self.store.delete_file("mistral", req.params["id"]):
            return Response.error(not_found_reply("mistral", f"File {req.params['id']}"))
        return Response.json({"id": req.params["id"], "object": "file", "deleted": True})

    def file_content(self, req: Request) -> Response:
        f = self.store.get_file("mistral", req.params["id"])
        if f is None:
            return Response.error(not_found_reply("mistral", f"File {req.params['id']}"))
        return Response(file_path=f.path, content_type="application/octet-stream")

    # ---------------------------------------------------------------- batch jobs

    def create_job(self, req: Request) -> Response:
        body = req.json()
        endpoint = body.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/embeddings"):
            return Response.error(
                bad_request_reply("mistral", f"Unsupported endpoint {endpoint!r}")
            )
        input_files = body.get("input_files") or []
        inline = body.get("requests")
        paths: list[str] = []
        custom_ids: list[str] = []
        settings = BatchSettings.from_config(self.store.config)
        prepared: PreparedLines | None = None  # file-based chat jobs: read once, here
        if inline:
            for i, r in enumerate(inline):
                custom_ids.append(str(r.get("custom_id", i)))
        else:
            if not input_files:
                return Response.error(
                    bad_request_reply("mistral", "Either input_files or requests is required")
                )
            for fid in input_files:
                f = self.store.get_file("mistral", str(fid))
                if f is None:
                    return Response.error(not_found_reply("mistral", f"File {fid}"))
                paths.append(f.path)
            if endpoint == "/v1/chat/completions":
                prepared = PreparedLines()
            job_model = body.get("model") or "mistral-small-latest"
            for i, raw in self._iter_lines(paths):
                try:
                    line = json.loads(raw)
                    custom_ids.append(str(line.get("custom_id", i)))
                except (ValueError, AttributeError):
                    custom_ids.append(f"#{i}")
                    if prepared is not None:
                        prepared.add_unreadable()
                    continue
                if prepared is not None:
                    line_body = line.get("body") or {}
                    if isinstance(line_body, dict):
                        line_body = {"model": job_model, **line_body}
                    prepare_chat_line(prepared, line_body, settings.seed)
        created = now()
        job = BatchRecord(
            id=_uuid(),
            provider="mistral",
            created_at=created,
            settings=settings,
            finisher=self._finish,
            phase_since=created,
            custom_ids=custom_ids,
            data={
                "endpoint": endpoint,
                "model": body.get("model"),
                "agent_id": body.get("agent_id"),
                "metadata": body.get("metadata"),
                "input_files": [str(x) for x in input_files],
                "paths": paths,
                "prepared": prepared,
                "inline": inline,
                "timeout_hours": body.get("timeout_hours", 24),
            },
        )
        job.entered["queued"] = created
        self.store.add_batch(job)
        return Response.json(self.job_json(job))

    @staticmethod
    def _iter_lines(paths: list[str]) -> Iterator[tuple[int, str]]:
        base = 0
        for p in paths:
            n = 0
            for i, raw in iter_jsonl(p):
                yield base + i, raw
                n = i + 1
            base += n

    def job_json(self, j: BatchRecord, inline: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": j.id,
            "object": "batch",
            "input_files": j.data["input_files"],
            "metadata": j.data["metadata"],
            "endpoint": j.data["endpoint"],
            "model": j.data["model"],
            "agent_id": j.data["agent_id"],
            "output_file": j.output_file_id,
            "error_file": j.error_file_id,
            "errors": j.data.get("errors", []),
            "outputs": None,
            "status": _STATUS[j.phase],
            "created_at": int(j.created_at),
            "total_requests": len(j.custom_ids),
            "completed_requests": j.counts["ok"] + j.counts["failed"],
            "succeeded_requests": j.counts["ok"],
            "failed_requests": j.counts["failed"],
            "started_at": int(j.entered["running"]) if "running" in j.entered else None,
            "completed_at": int(j.phase_since) if j.terminal else None,
        }
        if j.terminal and j.inline_results is not None and (j.data["inline"] or inline):
            out["outputs"] = j.inline_results
        elif inline and j.terminal and j.output_file_id:
            f = self.store.get_file("mistral", j.output_file_id)
            if f is not None:
                outputs = []
                for _, raw in iter_jsonl(f.path):
                    try:
                        outputs.append(json.loads(raw))
                    except ValueError:
                        continue
                out["outputs"] = outputs
        return out

    def _job(self, req: Request) -> BatchRecord | None:
        j = self.store.get_batch("mistral", req.params["id"])
        if j is not None:
            advance(self.store, j)
        return j

    def get_job(self, req: Request) -> Response:
        j = self._job(req)
        if j is None:
            return Response.error(not_found_reply("mistral", f"Batch job {req.params['id']}"))
        return Response.json(self.job_json(j, inline=(req.q("inline") or "").lower() == "true"))

    def list_jobs(self, req: Request) -> Response:
        jobs = self.store.list_batches("mistral")
        for j in jobs:
            advance(self.store, j)
        if (req.q("order_by") or "-created") == "-created":
            jobs = jobs[::-1]
        model = req.q("model")
        if model:
            jobs = [j for j in jobs if j.data["model"] == model]
        statuses = req.query.get("status")
        if statuses:
            jobs = [j for j in jobs if _STATUS[j.phase] in statuses]
        # Metadata filters arrive exploded as arbitrary top-level query params.
        for key, values in req.query.items():
            if key in _LIST_PARAMS:
                continue
            jobs = [j for j in jobs if str((j.data["metadata"] or {}).get(key)) in values]
        page = int(req.q("page") or 0)
        size = max(1, int(req.q("page_size") or 100))
        items = jobs[page * size : (page + 1) * size]
        return Response.json(
            {"object": "list", "data": [self.job_json(j) for j in items], "total": len(jobs)}
        )

    def cancel_job(self, req: Request) -> Response:
        j = self._job(req)
        if j is None:
            return Response.error(not_found_reply("mistral", f"Batch job {req.params['id']}"))
        request_cancel(self.store, j)
        return Response.json(self.job_json(j))

    def delete_job(self, req: Request) -> Response:
        j = self.store.get_batch("mistral", req.params["id"])
        if j is None:
            return Response.error(not_found_reply("mistral", f"Batch job {req.params['id']}"))
        j.deleted = True
        return Response.json({"id": j.id, "object": "batch", "deleted": True})

    def _finish(self, j: BatchRecord, terminal: str) -> None:
        s = j.settings
        if terminal == "failed":
            j.data["errors"] = [{"message": "The batch job failed: internal error.", "count": 1}]
            return
        if terminal == "cancelled":
            return
        model = j.data["model"] or "mistral-small-latest"
        embeddings = j.data["endpoint"] == "/v1/embeddings"
        inline = j.data["inline"]
        prepared: PreparedLines | None = j.data.get("prepared")
        lines: Iterator[tuple[int, Any]]
        if inline:
            lines = iter(enumerate(inline))
        elif prepared is not None:
            lines = ((i, None) for i in range(len(prepared)))
        else:
            lines = self._iter_lines(j.data["paths"])
        created = str(int(time.time()))
        out = _ResultFile(
            self.store,
            "mistral",
            _uuid(),
            f"{j.id}_output.jsonl",
            "batch",
            {"sample_type": "batch_result", "source": "mistral"},
        )
        err = _ResultFile(
            self.store,
            "mistral",
            _uuid(),
            f"{j.id}_error.jsonl",
            "batch",
            {"sample_type": "batch_error", "source": "mistral"},
        )
        results: list[dict[str, Any]] = []
        outcomes: dict[int, str] = {}
        tin_total = tout_total = 0
        for idx, item in lines:
            cid = j.custom_ids[idx]
            outcome = line_outcome(s, terminal, cid, idx)
            body: dict[str, Any] = {}
            if prepared is not None:
                if prepared.answer_of[idx] < 0:
                    outcome = "failed"
            else:
                try:
                    line = item if isinstance(item, dict) else json.loads(item)
                    body = dict(line.get("body") or {})
                except ValueError:
                    outcome = "failed"
            outcomes[idx] = outcome
            line_id = f"batch-{content.seed_from(j.id, cid):016x}"
            record: dict[str, Any]
            if outcome == "expired":
                record = {
                    "id": line_id,
                    "custom_id": cid,
                    "response": None,
                    "error": {
                        "message": "The batch job timed out before this request was processed.",
                        "code": "timeout_exceeded",
                    },
                }
                err.write_obj(record)
                j.counts["failed"] += 1
            elif outcome == "failed":
                record = {
                    "id": line_id,
                    "custom_id": cid,
                    "response": {
                        "status_code": s.line_failure_status,
                        "body": _line_error(s.line_failure_status),
                    },
                    "error": None,
                }
                err.write_obj(record)
                j.counts["failed"] += 1
            elif prepared is not None:  # file-based chat job (never inline: no record needed)
                result_line, tin, tout = render_chat_line(
                    _CHAT_LINE,
                    prepared,
                    idx,
                    violates(s, cid),
                    created,
                    "",
                    line_id=f'"{line_id}"',
                    cid=encode_basestring(cid),
                )
                tin_total += tin
                tout_total += tout
                if is_malformed(s, cid):
                    result_line = malformed_text(result_line)
                out.write_line(result_line)
                j.counts["ok"] += 1
            else:
                body.setdefault("model", model)
                if embeddings:
                    resp, tin = embeddings_response(
                        body, s.seed, "mistral-embed", dims_key="output_dimension"
                    )
                    tout = 0
                else:
                    resp, tin, tout = chat_completion(body, s.seed, violates(s, cid), "")
                tin_total += tin
                tout_total += tout
                record = {
                    "id": line_id,
                    "custom_id": cid,
                    "response": {"status_code": 200, "body": resp},
                    "error": None,
                }
                if is_malformed(s, cid):
                    out.write_raw(malformed_text(json.dumps(record, ensure_ascii=False)))
                else:
                    out.write_obj(record)
                j.counts["ok"] += 1
            if inline:
                results.append(record)
        keep = not s.no_output_file
        j.output_file_id = out.close(keep=keep)
        j.error_file_id = err.close()
        if inline and keep:
            j.inline_results = results
        j.usage["input"] = tin_total
        j.usage["output"] = tout_total
        record_outcomes(self.store, j, outcomes)
        self.store.add_usage("mistral", model, "batch", tin_total, tout_total)

    # ---------------------------------------------------------------- realtime

    def chat(self, req: Request) -> Response:
        return realtime_chat(self.store, "mistral", req)

    def embeddings(self, req: Request) -> Response:
        return realtime_embeddings(self.store, "mistral", req)
