"""In-memory registry of files and batches (file bytes live on disk) plus statistics.

File contents are never held in memory: uploads are streamed into ``data_dir`` and results
are written there line by line. The registry itself (ids, names, counters) is small and
guarded by one lock; batch advancement takes a per-batch lock so that generating a large
output file never blocks unrelated requests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.emulator.config import PROVIDERS, EmulatorConfig
from worker.emulator.faults import FaultInjector


def new_id(prefix: str = "", nbytes: int = 12) -> str:
    """A random lowercase-hex id (Gemini needs lowercase alphanumerics)."""
    return prefix + secrets.token_hex(nbytes)


@dataclass
class FileRecord:
    """One stored file. ``meta`` holds provider-specific fields (mime type, sample_type...)."""

    id: str
    provider: str
    filename: str
    purpose: str
    path: str
    bytes: int
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchSettings:
    """Config values snapshotted at batch creation (see :mod:`worker.emulator.config`)."""

    line_failure_rate: float
    line_failure_status: int
    batch_outcome: str | None
    malformed_line_rate: float
    no_output_file: bool
    schema_violation_rate: float
    seed: int
    cancel_done_share: float = 0.5
    empty_error_file_id: bool = False
    status_code_zero_rate: float = 0.0
    failure_code: str | None = None

    @classmethod
    def from_config(cls, c: EmulatorConfig) -> BatchSettings:
        return cls(
            line_failure_rate=c.line_failure_rate,
            line_failure_status=c.line_failure_status,
            batch_outcome=c.batch_outcome,
            malformed_line_rate=c.malformed_line_rate,
            no_output_file=c.no_output_file,
            schema_violation_rate=c.schema_violation_rate,
            seed=c.seed,
            cancel_done_share=c.cancel_done_share,
            empty_error_file_id=c.openai_empty_error_file_id,
            status_code_zero_rate=c.status_code_zero_rate,
            failure_code=c.batch_failure_code,
        )


# A finisher turns a batch that just reached a terminal phase into result files / inline
# results; it is provider-specific and runs under the batch lock.
Finisher = Callable[["BatchRecord", str], None]


@dataclass
class BatchRecord:
    """A batch of any provider, in provider-neutral phases.

    Phases: ``queued`` → ``running`` → (``finalizing``) → ``completed``, or ``failed``,
    ``expired``, ``cancelling`` → ``cancelled``. Each provider maps them to its own names.
    """

    id: str
    provider: str
    created_at: float
    settings: BatchSettings
    finisher: Finisher
    forward_phases: tuple[str, ...] = ("queued", "running")
    phase: str = "queued"
    phase_since: float = 0.0
    entered: dict[str, float] = field(default_factory=dict)
    custom_ids: list[str] = field(default_factory=list)
    entries: list[dict[str, str]] = field(default_factory=list)
    validation_errors: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "ok": 0, "failed": 0})
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})
    output_file_id: str | None = None
    error_file_id: str | None = None
    inline_results: list[dict[str, Any]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    deleted: bool = False

    TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

    @property
    def terminal(self) -> bool:
        return self.phase in self.TERMINAL


def _empty_provider_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "faults_injected": 0,
        "batches_created": 0,
        "files_uploaded": 0,
        "chat_calls": 0,
        "embedding_calls": 0,
        "responses_lost": 0,
        "usage": {},
        "custom_ids": {},
    }


class Store:
    """All mutable emulator state: config, files, batches, stats."""

    def __init__(self, data_dir: str | None, config: EmulatorConfig) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="emulator-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.default_config = config
        self.config = config.updated()
        self.faults = FaultInjector()
        self.faults.reseed(self.config.seed)
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.stats: dict[str, dict[str, Any]] = {p: _empty_provider_stats() for p in PROVIDERS}
        self.uploads: dict[str, dict[str, Any]] = {}  # Gemini resumable upload sessions
        self.lost_dice = 0  # lost_response_rate draws so far
        from worker.emulator.limits import Limits

        self.limits = Limits(self)

    # ---------------------------------------------------------------- config

    def configure(self, **changes: Any) -> EmulatorConfig:
        with self.lock:
            self.config = self.config.updated(**changes)
            if "seed" in changes:
                self.faults.reseed(self.config.seed)
            return self.config

    def reset(self) -> None:
        """Forget every file, batch and counter; restore the start-up config."""
        with self.lock:
            self.files.clear()
            self.batches.clear()
            self.uploads.clear()
            self.lost_dice = 0
            self.limits.reset()
            self.stats = {p: _empty_provider_stats() for p in PROVIDERS}
            self.config = self.default_config.updated()
            self.faults.reseed(self.config.seed)
            for name in os.listdir(self.data_dir):
                p = os.path.join(self.data_dir, name)
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    try:
                        os.unlink(p)
                    except OSError:
                        pass

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ---------------------------------------------------------------- files

    def new_file_path(self, file_id: str) -> str:
        return os.path.join(self.data_dir, file_id.replace("/", "_"))

    def add_file(self, rec: FileRecord, uploaded: bool = True) -> FileRecord:
        with self.lock:
            self.files[rec.id] = rec
            if uploaded:
                self.stats[rec.provider]["files_uploaded"] += 1
        return rec

    def file_expires_at(self, rec: FileRecord) -> float | None:
        """When ``rec`` expires: ``file_ttl_seconds`` after creation if set, else the
        provider's default (OpenAI ``expires_at``, Gemini 48 h, Mistral never)."""
        ttl = self.config.file_ttl_seconds
        if ttl is not None:
            return rec.created_at + ttl
        if rec.meta.get("expires_at"):
            return float(rec.meta["expires_at"])
        if rec.provider == "gemini":
            return rec.created_at + 48 * 3600
        return None

    def _gone(self, rec: FileRecord) -> bool:
        at = self.file_expires_at(rec)
        return at is not None and now() >= at

    def get_file(self, provider: str, file_id: str) -> FileRecord | None:
        """A stored file, or None (unknown, another provider's, or expired: then deleted)."""
        with self.lock:
            rec = self.files.get(file_id)
        if rec is None or rec.provider != provider:
            return None
        if self._gone(rec):
            self.delete_file(provider, file_id)
            return None
        return rec

    def delete_file(self, provider: str, file_id: str) -> bool:
        with self.lock:
            rec = self.files.get(file_id)
            if rec is None or rec.provider != provider:
                return False
            del self.files[file_id]
        try:
            os.unlink(rec.path)
        except OSError:
            pass
        return True

    def list_files(self, provider: str) -> list[FileRecord]:
        with self.lock:
            return [f for f in self.files.values() if f.provider == provider and not self._gone(f)]

    # ---------------------------------------------------------------- batches

    def add_batch(self, batch: BatchRecord) -> None:
        """Register a new batch and mark each of its custom_ids as pending."""
        with self.lock:
            self.batches[batch.id] = batch
            st = self.stats[batch.provider]
            st["batches_created"] += 1
            ids: dict[str, list[dict[str, str]]] = st["custom_ids"]
            entries = []
            for cid in batch.custom_ids:
                entry = {"batch_id": batch.id, "outcome": "pending"}
                ids.setdefault(cid, []).append(entry)
                entries.append(entry)
            batch.entries = entries
            batch.counts["total"] = len(batch.custom_ids)

    def get_batch(self, provider: str, batch_id: str) -> BatchRecord | None:
        with self.lock:
            b = self.batches.get(batch_id)
        if b is None or b.provider != provider or b.deleted:
            return None
        return b

    def list_batches(self, provider: str) -> list[BatchRecord]:
        with self.lock:
            return [b for b in self.batches.values() if b.provider == provider and not b.deleted]

    # ---------------------------------------------------------------- stats

    def count(self, provider: str, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[provider][key] += n

    def add_usage(self, provider: str, model: str, mode: str, inp: int, out: int) -> None:
        """Accumulate token usage; ``mode`` is "batch" or "realtime"."""
        with self.lock:
            per_model = self.stats[provider]["usage"].setdefault(
                model,
                {
                    "batch": {"input_tokens": 0, "output_tokens": 0},
                    "realtime": {"input_tokens": 0, "output_tokens": 0},
                },
            )
            per_model[mode]["input_tokens"] += inp
            per_model[mode]["output_tokens"] += out

    def snapshot_stats(self) -> dict[str, Any]:
        """A deep-enough copy for JSON output."""
        with self.lock:
            out: dict[str, Any] = {}
            for p, st in self.stats.items():
                files_stored = sum(1 for f in self.files.values() if f.provider == p)
                out[p] = {
                    "requests": st["requests"],
                    "faults_injected": st["faults_injected"],
                    "batches_created": st["batches_created"],
                    "files_uploaded": st["files_uploaded"],
                    "files_stored": files_stored,
                    "chat_calls": st["chat_calls"],
                    "embedding_calls": st["embedding_calls"],
                    "responses_lost": st["responses_lost"],
                    "usage": {
                        m: {k: dict(v) for k, v in u.items()} for m, u in st["usage"].items()
                    },
                    "custom_ids": {
                        cid: [dict(e) for e in entries] for cid, entries in st["custom_ids"].items()
                    },
                    # custom_ids whose results were billed more than once (succeeded in two
                    # or more batches, partial results of cancelled/expired ones included)
                    "paid_twice": sorted(
                        cid
                        for cid, entries in st["custom_ids"].items()
                        if sum(e["outcome"] == "succeeded" for e in entries) > 1
                    ),
                }
            return out


def now() -> float:
    return time.time()
