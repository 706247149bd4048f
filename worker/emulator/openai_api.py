"""OpenAI under ``/openai/v1``: files, batches, chat completions, embeddings.

Batch lifecycle: ``validating → in_progress → finalizing → completed``; ``validating →
failed`` when the input file is invalid (``errors.data`` codes ``invalid_json_line``,
``missing_custom_id``, ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``,
``empty_file``, ``too_many_tasks``, ``file_too_large``), when the model's enqueued-token
limit is reached (``token_limit_exceeded``, see :mod:`.limits`), or when
``batch_outcome="failed"`` (``batch_failure_code``, default ``server_error``); creates over
``openai_batches_per_hour`` get a 429. ``in_progress → expired`` (every other line done, the
rest in the error file as ``batch_expired``); ``cancelling`` (``cancel_seconds``) →
``cancelled``: cancelled while in progress, the lines done so far (``cancel_done_share``)
are billed and in the output file, the others have no line at all [chosen]; cancelled while
validating, no files. Options: ``error_file_id: ""`` on clean batches, lines with
``status_code: 0``. Output lines come
in a different order than the input (shuffled in blocks). When every line failed the output
file id is null. The chat/embedding builders here are shared with the Mistral and
OpenAI-compatible modules, whose response shapes are the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from json.encoder import encode_basestring
from typing import Any

from worker.emulator import answer_faults, content
from worker.emulator.content import unit_fraction
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
from worker.emulator.limits import estimate_embedding_tokens, estimate_openai_line_tokens
from worker.emulator.store import (
    BatchRecord,
    BatchSettings,
    FileRecord,
    Store,
    new_id,
    now,
)
from worker.emulator.wire import Request, Response, Router, parse_multipart

_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_PHASE_TO_STATUS = {
    "queued": "validating",
    "running": "in_progress",
    "finalizing": "finalizing",
    "cancelling": "cancelling",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}
_PHASE_TIMESTAMP = {
    "running": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}


# --------------------------------------------------------------------------- shared builders


def messages_text(messages: Any) -> str:
    """All text of an OpenAI/Mistral ``messages`` list, role-tagged (for seeds and tokens)."""
    parts: list[str] = []
    if not isinstance(messages, list):
        return str(messages or "")
    for m in messages:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, list):
            c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
        parts.append(f"{m.get('role', 'user')}: {c or ''}")
    return "\n".join(parts)


def response_schema(body: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(wants JSON, schema or None) from an OpenAI/Mistral ``response_format``."""
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return False, None
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema") or {}
        schema = js.get("schema") or js.get("schema_definition")
        return True, schema if isinstance(schema, dict) else None
    if rf.get("type") != "json_object":
        return False, None
    # JSON-object mode: answer with JSON following the schema the prompt gives, if any.
    messages = body.get("messages")
    texts = [m.get("content") for m in messages or [] if isinstance(m, dict)]
    for text in texts:
        if isinstance(text, str) and "schema" in text.lower():
            schema = content.schema_in_text(text)
            if schema is not None:
                return True, schema
    return True, None


def chat_response(
    resp_id: Any,
    created: Any,
    model: Any,
    text: Any,
    tokens_in: Any,
    tokens_out: Any,
    tokens_total: Any,
) -> dict[str, Any]:
    """The ``chat.completion`` object (also filled with placeholders for line templates)."""
    return {
        "id": resp_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_total,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": "fp_emulator",
    }


def chat_completion(
    body: dict[str, Any], config_seed: int, violate: bool, id_prefix: str = "chatcmpl-"
) -> tuple[dict[str, Any], int, int]:
    """A ``chat.completion`` for ``body``; returns (response, input tokens, output tokens)."""
    model = str(body.get("model") or "gpt-4o-mini")
    prompt = messages_text(body.get("messages"))
    seed = content.seed_from(config_seed, model, prompt)
    wants_json, schema = response_schema(body)
    text = content.answer_text(wants_json, schema, seed, violate)
    tin = content.count_tokens(prompt)
    tout = content.count_tokens(text)
    resp = chat_response(
        f"{id_prefix}{seed:016x}", int(time.time()), model, text, tin, tout, tin + tout
    )
    return resp, tin, tout


def prepare_chat_line(
    prepared: PreparedLines, body: Any, config_seed: int, default_model: str = "gpt-4o-mini"
) -> None:
    """Record what :func:`chat_completion` needs from one batch line's ``body``."""
    body = body or {}
    try:
        if not isinstance(body, dict):
            raise TypeError("body must be an object")
        model = str(body.get("model") or default_model)
        prompt = messages_text(body.get("messages"))
        wants_json, schema = response_schema(body)
        seed = content.seed_from(config_seed, model, prompt)
        prepared.add(seed, content.count_tokens(prompt), model, wants_json, schema)
    except (AttributeError, TypeError, ValueError):
        prepared.add_unreadable()


def chat_line_template(envelope: Any) -> LineTemplate:
    """A template for a chat result line: ``envelope`` holds ``slot("body")`` where the
    ``chat.completion`` goes; the completion's own slots are ``resp_id``, ``created``,
    ``model``, ``text``, ``tin``, ``tout``, ``ttotal``."""

    def fill(node: Any) -> Any:
        if node == slot("body"):
            names = ("resp_id", "created", "model", "text", "tin", "tout", "ttotal")
            return chat_response(*(slot(n) for n in names))
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    return LineTemplate(fill(envelope))


def render_chat_line(
    template: LineTemplate,
    prepared: PreparedLines,
    idx: int,
    violate: bool,
    created: str,
    id_prefix: str,
    **envelope: str,
) -> tuple[str, int, int]:
    """One successful result line from prepared inputs: (line, input tokens, output tokens)."""
    seed = prepared.seeds[idx]
    tin = prepared.tokens_in[idx]
    text = prepared.answers[prepared.answer_of[idx]].text(seed, violate)
    tout = content.count_tokens(text)
    line = template.render(
        resp_id=f'"{id_prefix}{seed:016x}"',
        created=created,
        model=encode_basestring(prepared.models[prepared.model_of[idx]]),
        text=encode_basestring(text),
        tin=str(tin),
        tout=str(tout),
        ttotal=str(tin + tout),
        **envelope,
    )
    return line, tin, tout


def embedding_inputs(raw: Any) -> list[str]:
    """Normalise ``input`` (str, list of str, token list(s)) to a list of texts."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if raw and all(isinstance(x, int) for x in raw):
            return [" ".join(map(str, raw))]
        return [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
    raise ValueError("input must be a string or a list")


def embeddings_response(
    body: dict[str, Any],
    config_seed: int,
    default_model: str = "text-embedding-3-small",
    dims_key: str = "dimensions",
) -> tuple[dict[str, Any], int]:
    """An embeddings ``list`` response; returns (response, input tokens)."""
    model = str(body.get("model") or default_model)
    texts = embedding_inputs(body.get("input"))
    if not texts:
        raise ValueError("input must not be empty")
    dims = content.embedding_dims(model, body.get(dims_key))
    b64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, t in enumerate(texts):
        vec = content.embed(model, t, dims, config_seed)
        tokens += content.count_tokens(t)
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": content.embedding_b64(vec) if b64 else vec,
            }
        )
    return (
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        tokens,
    )


def openai_line_error(status: int) -> dict[str, Any]:
    """The error body of a failed batch line."""
    if status == 400:
        return {
            "error": {
                "message": "Invalid request: the request could not be processed.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request",
            }
        }
    return {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }


# A successful chat line of an output file.
_CHAT_LINE = chat_line_template(
    {
        "id": slot("req_id"),
        "custom_id": slot("cid"),
        "response": {"status_code": 200, "request_id": slot("req_id"), "body": slot("body")},
        "error": None,
    }
)


# --------------------------------------------------------------------------- the API


class OpenAIApi:
    """Routes and handlers for ``/openai/v1``."""

    provider = "openai"

    def __init__(self, store: Store) -> None:
        self.store = store
        r = Router()
        r.add("POST", "/v1/files", self.upload_file)
        r.add("GET", "/v1/files", self.list_files)
        r.add("GET", r"/v1/files/(?P<id>[^/]+)", self.get_file)
        r.add("DELETE", r"/v1/files/(?P<id>[^/]+)", self.delete_file)
        r.add("GET", r"/v1/files/(?P<id>[^/]+)/content", self.file_content)
        r.add("POST", "/v1/batches", self.create_batch)
        r.add("GET", "/v1/batches", self.list_batches)
        r.add("GET", r"/v1/batches/(?P<id>[^/]+)", self.get_batch)
        r.add("POST", r"/v1/batches/(?P<id>[^/]+)/cancel", self.cancel_batch)
        r.add("POST", "/v1/chat/completions", self.chat)
        r.add("POST", "/v1/embeddings", self.embeddings)
        self.router = r

    # ---------------------------------------------------------------- files

    @staticmethod
    def file_json(f: FileRecord) -> dict[str, Any]:
        return {
            "id": f.id,
            "object": "file",
            "bytes": f.bytes,
            "created_at": int(f.created_at),
            "filename": f.filename,
            "purpose": f.purpose,
            "status": "processed",
            "expires_at": f.meta.get("expires_at"),
            "status_details": None,
        }

    def upload_file(self, req: Request) -> Response:
        file_id = new_id("file-")
        path = self.store.new_file_path(file_id)
        fields, up = parse_multipart(req.body, req.headers.get("Content-Type") or "", path)
        if up is None:
            return Response.error(bad_request_reply("openai", "Missing file", "file"))
        purpose = fields.get("purpose", "")
        if purpose == "batch" and not up.filename.endswith(".jsonl"):
            os.unlink(path)
            return Response.error(
                bad_request_reply("openai", "Invalid file format for Batch API. Must be .jsonl")
            )
        created = now()
        secs = fields.get("expires_after[seconds]")
        expires = int(created + (int(secs) if secs else 30 * 86400))
        rec = FileRecord(
            file_id, "openai", up.filename, purpose, path, up.size, created, {"expires_at": expires}
        )
        self.store.add_file(rec)
        return Response.json(self.file_json(rec))

    def list_files(self, req: Request) -> Response:
        files = self.store.list_files("openai")
        purpose = req.q("purpose")
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        if (req.q("order") or "desc") == "desc":
            files = files[::-1]
        items = [self.file_json(f) for f in files]
        return Response.json(_cursor_page(items, req.q("after"), int(req.q("limit") or 10000)))

    def _file(self, req: Request) -> FileRecord | None:
        return self.store.get_file("openai", req.params["id"])

    def get_file(self, req: Request) -> Response:
        f = self._file(req)
        if f is None:
            return Response.error(not_found_reply("openai", f"file {req.params['id']}"))
        return Response.json(self.file_json(f))

    def delete_file(self, req: Request) -> Response:
        if not self.store.delete_file("openai", req.params["id"]):
            return Response.error(not_found_reply("openai", f"file {req.params['id']}"))
        return Response.json({"id": req.params["id"], "object": "file", "deleted": True})

    def file_content(self, req: Request) -> Response:
        f = self._file(req)
        if f is None:
            return Response.error(not_found_reply("openai", f"file {req.params['id']}"))
        return Response(file_path=f.path, content_type="application/octet-stream")

    # ---------------------------------------------------------------- batches

    def create_batch(self, req: Request) -> Response:
        body = req.json()
        endpoint = body.get("endpoint")
        if endpoint not in _ENDPOINTS:
            return Response.error(
                bad_request_reply("openai", f"Unsupported endpoint {endpoint!r}", "endpoint")
            )
        if body.get("completion_window") != "24h":
            return Response.error(
                bad_request_reply("openai", "completion_window must be '24h'", "completion_window")
            )
        f = self.store.get_file("openai", str(body.get("input_file_id")))
        if f is None:
            return Response.error(
                bad_request_reply(
                    "openai",
                    f"No file found with id '{body.get('input_file_id')}'",
                    "input_file_id",
                )
            )
        cfg = self.store.config
        limits = self.store.limits
        with limits.lock:
            limited = limits.openai_rate_limited()
        if limited is not None:
            return Response.error(limited)
        prepared = PreparedLines() if endpoint == "/v1/chat/completions" else None
        custom_ids, errors, model, tokens = scan_input(
            f, endpoint, cfg.max_batch_lines, cfg.max_batch_bytes, prepared, cfg.seed
        )
        settings = BatchSettings.from_config(cfg)
        with limits.lock:
            over = None if errors else limits.openai_admit(model, tokens)
            if over is not None:
                errors = [over]
            batch = self._new_batch(body, f, endpoint, custom_ids, errors, model, settings)
            batch.data["prepared"] = None if errors else prepared
            batch.data["enqueued_tokens"] = tokens
            batch.data["enqueued"] = not errors
            batch.data["limit_failed"] = over is not None
            self.store.add_batch(batch)
        return Response.json(self.batch_json(batch))

    def _new_batch(
        self,
        body: dict[str, Any],
        f: FileRecord,
        endpoint: str,
        custom_ids: list[str],
        errors: list[dict[str, Any]],
        model: str | None,
        settings: BatchSettings,
    ) -> BatchRecord:
        created = now()
        batch = BatchRecord(
            id=new_id("batch_"),
            provider="openai",
            created_at=created,
            settings=settings,
            finisher=self._finish,
            forward_phases=("queued", "running", "finalizing"),
            phase_since=created,
            custom_ids=custom_ids,
            validation_errors=errors,
            data={
                "endpoint": endpoint,
                "input_file_id": f.id,
                "input_path": f.path,
                "metadata": body.get("metadata"),
                "model": model,
            },
        )
        batch.entered["queued"] = created
        return batch

    def batch_json(self, b: BatchRecord) -> dict[str, Any]:
        status = _PHASE_TO_STATUS[b.phase]
        out: dict[str, Any] = {
            "id": b.id,
            "object": "batch",
            "endpoint": b.data["endpoint"],
            "model": b.data.get("model"),
            "errors": None,
            "input_file_id": b.data["input_file_id"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": int(b.created_at),
            "expires_at": int(b.created_at) + 86400,
            "request_counts": {
                "total": b.counts["total"] if b.phase != "queued" else 0,
                "completed": b.counts["ok"],
                "failed": b.counts["failed"],
            },
            "metadata": b.data.get("metadata"),
            "usage": {
                "input_tokens": b.usage["input"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": b.usage["output"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": b.usage["input"] + b.usage["output"],
            },
        }
        for phase, key in _PHASE_TIMESTAMP.items():
            at = b.entered.get(phase)
            out[key] = int(at) if at is not None else None
        errs = b.data.get("errors")
        if errs:
            out["errors"] = {"object": "list", "data": errs}
        return out

    def _batch(self, req: Request) -> BatchRecord | None:
        b = self.store.get_batch("openai", req.params["id"])
        if b is not None:
            advance(self.store, b)
        return b

    def get_batch(self, req: Request) -> Response:
        b = self._batch(req)
        if b is None:
            return Response.error(not_found_reply("openai", f"batch {req.params['id']}"))
        return Response.json(self.batch_json(b))

    def list_batches(self, req: Request) -> Response:
        batches = self.store.list_batches("openai")[::-1]  # newest first
        limit = max(1, min(100, int(req.q("limit") or 20)))
        after = req.q("after")
        if after:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        for b in page:
            advance(self.store, b)
        items = [self.batch_json(b) for b in page]
        return Response.json(
            {
                "object": "list",
                "data": items,
                "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None,
                "has_more": len(batches) > limit,
            }
        )

    def cancel_batch(self, req: Request) -> Response:
        b = self._batch(req)
        if b is None:
            return Response.error(not_found_reply("openai", f"batch {req.params['id']}"))
        if b.terminal and b.phase != "cancelled":
            # [UNCONFIRMED] real response; a 409-style conflict is the plausible answer.
            return Response.json(
                {
                    "error": {
                        "message": f"Cannot cancel a batch with status '{b.phase}'.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
                409,
            )
        request_cancel(self.store, b)
        return Response.json(self.batch_json(b))

    def _finish(self, b: BatchRecord, terminal: str) -> None:
        """Write output/error files for a batch that just became terminal."""
        s = b.settings
        n = len(b.custom_ids)
        b.counts["total"] = n
        if terminal == "failed":
            if not b.validation_errors:
                # A forced failure (batch_outcome="failed"): its reason is batch_failure_code.
                code = s.failure_code or "server_error"
                b.validation_errors = [
                    {
                        "code": code,
                        "message": "The batch failed: an internal error occurred while "
                        "processing it."
                        if code == "server_error"
                        else f"The batch failed validation ({code}).",
                        "param": None,
                        "line": None if code == "server_error" else 1,
                    }
                ]
            b.data["errors"] = b.validation_errors
            b.counts["total"] = 0
            return
        if terminal == "cancelled" and "running" not in b.entered:
            return  # cancelled while validating: nothing ran, no files
        endpoint = b.data["endpoint"]
        out = new_result_file(self.store, "openai", "file-", f"{b.id}_output.jsonl", "batch_output")
        err = new_result_file(self.store, "openai", "file-", f"{b.id}_error.jsonl", "batch_output")
        outcomes: dict[int, str] = {}
        tin_total = tout_total = 0
        model = b.data.get("model") or ""
        prepared: PreparedLines | None = b.data.get("prepared")
        # Chat batches were read at creation (prepared); embeddings batches re-read the input.
        lines: Iterator[tuple[int, str | None]] = (
            ((i, None) for i in shuffled_blocks(range(len(prepared)), s.seed))
            if prepared is not None
            else shuffled_blocks(iter_jsonl(b.data["input_path"]), s.seed)
        )
        created = str(int(time.time()))
        for idx, raw in lines:
            cid = b.custom_ids[idx]
            outcome = line_outcome(s, terminal, cid, idx)
            unreadable = prepared is not None and prepared.answer_of[idx] < 0
            if unreadable and outcome == "succeeded":
                outcome = "failed"
            outcomes[idx] = outcome
            req_id = f"batch_req_{content.seed_from(b.id, cid):016x}"
            if outcome == "cancelled":
                # Not run before the cancel: no line at all [chosen; the spec only promises
                # the finished lines in the output file].
                b.counts["failed"] += 1
                continue
            if outcome == "succeeded" and (
                s.status_code_zero_rate
                and unit_fraction(s.seed, "status-0", cid) < s.status_code_zero_rate
            ):
                # Reported live: a line with status_code 0 and no answer [chosen body].
                outcome = outcomes[idx] = "failed"
                err.write_obj(
                    {
                        "id": req_id,
                        "custom_id": cid,
                        "response": {
                            "status_code": 0,
                            "request_id": req_id,
                            "body": {
                                "error": {
                                    "message": "The request did not complete.",
                                    "type": "server_error",
                                    "param": None,
                                    "code": None,
                                }
                            },
                        },
                        "error": None,
                    }
                )
                b.counts["failed"] += 1
                continue
            if outcome == "expired":
                err.write_obj(
                    {
                        "id": req_id,
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be "
                            "executed before the completion window expired.",
                        },
                    }
                )
                b.counts["failed"] += 1
                continue
            if outcome == "failed":
                status = 400 if unreadable else s.line_failure_status
                err.write_obj(
                    {
                        "id": req_id,
                        "custom_id": cid,
                        "response": {
                            "status_code": status,
                            "request_id": req_id,
                            "body": openai_line_error(status),
                        },
                        "error": None,
                    }
                )
                b.counts["failed"] += 1
                continue
            if prepared is not None:
                line, tin, tout = render_chat_line(
                    _CHAT_LINE,
                    prepared,
                    idx,
                    violates(s, cid),
                    created,
                    "chatcmpl-",
                    req_id=f'"{req_id}"',
                    cid=encode_basestring(cid),
                )
            else:
                body = json.loads(raw or "{}").get("body") or {}
                if endpoint == "/v1/embeddings":
                    resp, tin = embeddings_response(body, s.seed)
                    tout = 0
                else:
                    resp, tin, tout = chat_completion(body, s.seed, violates(s, cid))
                record = {
                    "id": req_id,
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": req_id, "body": resp},
                    "error": None,
                }
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            tin_total += tin
            tout_total += tout
            out.write_line(malformed_text(line) if is_malformed(s, cid) else line)
            b.counts["ok"] += 1
        b.output_file_id = out.close(keep=not s.no_output_file)
        b.error_file_id = err.close()
        if b.error_file_id is None and s.empty_error_file_id:
            b.error_file_id = ""
        b.usage["input"] = tin_total
        b.usage["output"] = tout_total
        record_outcomes(self.store, b, outcomes)
        self.store.add_usage("openai", model, "batch", tin_total, tout_total)

    # ---------------------------------------------------------------- realtime

    def chat(self, req: Request) -> Response:
        return realtime_chat(self.store, "openai", req)

    def embeddings(self, req: Request) -> Response:
        return realtime_embeddings(self.store, "openai", req)


def realtime_chat(store: Store, provider: str, req: Request) -> Response:
    """Shared realtime chat handler (OpenAI, Mistral, compat aliases)."""
    body = req.json()
    cfg = store.config
    violate = bool(cfg.schema_violation_rate) and (
        content.unit_fraction(cfg.seed, "violation", messages_text(body.get("messages")))
        < cfg.schema_violation_rate
    )
    resp, tin, tout = chat_completion(body, cfg.seed, violate)
    if req.answer_fault is not None:
        resp = answer_faults.chat_answer(provider, req.answer_fault, resp)
    if provider == "mistral":
        resp["id"] = resp["id"].replace("chatcmpl-", "")
    store.count(provider, "chat_calls")
    store.add_usage(provider, resp["model"], "realtime", tin, tout)
    return Response.json(resp)


def realtime_embeddings(store: Store, provider: str, req: Request) -> Response:
    """Shared realtime embeddings handler (OpenAI, Mistral, compat aliases)."""
    body = req.json()
    if provider == "mistral":
        body.setdefault("model", "mistral-embed")
        resp, tin = embeddings_response(
            body, store.config.seed, "mistral-embed", dims_key="output_dimension"
        )
        resp["id"] = "emb-" + new_id()
    else:
        resp, tin = embeddings_response(body, store.config.seed)
    store.count(provider, "embedding_calls")
    store.add_usage(provider, resp["model"], "realtime", tin, 0)
    return Response.json(resp)


def _cursor_page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def scan_input(
    f: FileRecord,
    endpoint: str,
    max_lines: int,
    max_bytes: int,
    prepared: PreparedLines | None = None,
    config_seed: int = 0,
) -> tuple[list[str], list[dict[str, Any]], str | None, int]:
    """Validate an OpenAI batch input file: (custom_ids, errors, model, enqueued tokens).
    With ``prepared``, also record each accepted line's generation inputs there (chat
    batches). Enqueued tokens are estimated from the request text
    (:mod:`worker.emulator.limits`)."""
    errors: list[dict[str, Any]] = []

    def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < 100:  # keep the batch object small
            errors.append({"code": code, "message": message, "param": param, "line": line})

    if f.bytes > max_bytes:
        err(
            "file_too_large", f"The input file exceeds the maximum size of {max_bytes} bytes.", None
        )
        return [], errors, None, 0
    ids: list[str] = []
    tokens = 0
    estimate = (
        estimate_embedding_tokens if endpoint == "/v1/embeddings" else estimate_openai_line_tokens
    )
    seen: set[str] = set()
    model: str | None = None
    lineno = 0
    with open(f.path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError
            except ValueError:
                err("invalid_json_line", "This line is not parseable as valid JSON.", lineno)
                continue
            cid = obj.get("custom_id")
            if not isinstance(cid, str) or not cid:
                err("missing_custom_id", "The custom_id field is required.", lineno, "custom_id")
                continue
            if cid in seen:
                err(
                    "duplicate_custom_id",
                    f"The custom_id for this request is a duplicate of another request: {cid}",
                    lineno,
                    "custom_id",
                )
            seen.add(cid)
            ids.append(cid)
            body = obj.get("body")
            tokens += estimate(body)
            if prepared is not None:
                prepare_chat_line(prepared, body, config_seed)
            if obj.get("url") != endpoint:
                err(
                    "url_mismatch",
                    f"The provided URL {obj.get('url')!r} does not match the batch endpoint "
                    f"{endpoint!r}.",
                    lineno,
                    "url",
                )
            m = body.get("model") if isinstance(body, dict) else None
            if model is None:
                model = m
            elif m != model:
                err(
                    "model_mismatch",
                    "The provided model does not match the model of the other requests in the "
                    "file; a batch must use one model.",
                    lineno,
                    "body.model",
                )
    if not ids and not errors:
        err("empty_file", "The input file is empty.", None)
    if len(ids) > max_lines:
        errors.insert(
            0,
            {
                "code": "too_many_tasks",
                "message": f"The batch has {len(ids)} requests; the limit is {max_lines}.",
                "param": None,
                "line": None,
            },
        )
    return ids, errors, model, tokens
