"""Batch state advancement and per-line outcome decisions.

Batches advance lazily: nothing runs in the background; every read of a batch (get or
list) moves it forward by as many phases as ``state_seconds`` allows since it entered its
current phase. With ``state_seconds=0`` the first read takes a batch straight to its
terminal phase, and the creation response still shows the first phase.

When a batch reaches a terminal phase the provider's *finisher* generates its result file(s)
and inline results, line by line, once, under the batch's own lock.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import IO, Any

from worker.emulator.content import unit_fraction
from worker.emulator.store import BatchRecord, BatchSettings, FileRecord, Store, new_id, now

_SHUFFLE_BLOCK = 1000


def _next_phase(batch: BatchRecord) -> str:
    outcome = batch.settings.batch_outcome
    if batch.phase == "cancelling":
        return "cancelled"
    if batch.phase == "queued":
        if batch.validation_errors or outcome == "failed":
            return "failed"
        if outcome == "cancelled":
            # Only providers with a cancelling phase (OpenAI, Mistral) pass through it.
            return "cancelled" if batch.provider == "gemini" else "cancelling"
    if batch.phase == "running" and outcome == "expired":
        return "expired"
    phases = batch.forward_phases
    if batch.phase in phases:
        i = phases.index(batch.phase)
        if i + 1 < len(phases):
            return phases[i + 1]
    return "completed"


def enter_phase(store: Store, batch: BatchRecord, phase: str, at: float) -> None:
    """Move ``batch`` to ``phase`` (caller holds ``batch.lock``); finish it if terminal."""
    batch.phase = phase
    batch.phase_since = at
    batch.entered[phase] = at
    if batch.terminal:
        batch.finisher(batch, phase)
        with store.lock:
            for entry in batch.entries:
                if entry["outcome"] == "pending":
                    entry["outcome"] = {"completed": "succeeded"}.get(phase, phase)


def advance(store: Store, batch: BatchRecord) -> None:
    """Advance ``batch`` as far as the elapsed time allows."""
    s = store.config.state_seconds
    t = now()
    with batch.lock:
        while not batch.terminal and t - batch.phase_since >= s:
            # Timestamps accrue from the previous phase so slow polling sees a realistic
            # history; with s=0 every phase is entered "now".
            enter_phase(store, batch, _next_phase(batch), batch.phase_since + s if s else t)


def request_cancel(store: Store, batch: BatchRecord, immediate: bool = False) -> None:
    """Cancel a non-terminal batch (``immediate``: skip the cancelling phase)."""
    advance(store, batch)
    with batch.lock:
        if batch.terminal or batch.phase == "cancelling":
            return
        enter_phase(store, batch, "cancelled" if immediate else "cancelling", now())


# --------------------------------------------------------------------------- line outcomes


def line_outcome(
    settings: BatchSettings,
    terminal: str,
    custom_id: str,
    index: int,
    partial_on_expiry: bool = True,
) -> str:
    """What happened to one line: succeeded / failed / expired / cancelled."""
    if terminal == "failed":
        return "failed"
    if terminal == "cancelled":
        return "cancelled"
    if terminal == "expired" and (not partial_on_expiry or index % 2 == 1):
        # Expiry leaves half of the work done (every other line) where the provider keeps
        # partial results; Gemini documents no results at all for EXPIRED.
        return "expired"
    if settings.line_failure_rate and (
        unit_fraction(settings.seed, "line-failure", custom_id) < settings.line_failure_rate
    ):
        return "failed"
    return "succeeded"


def is_malformed(settings: BatchSettings, custom_id: str) -> bool:
    return bool(settings.malformed_line_rate) and (
        unit_fraction(settings.seed, "malformed", custom_id) < settings.malformed_line_rate
    )


def violates(settings: BatchSettings, custom_id: str) -> bool:
    return bool(settings.schema_violation_rate) and (
        unit_fraction(settings.seed, "violation", custom_id) < settings.schema_violation_rate
    )


def malformed_text(line: str) -> str:
    """A result line cut in half: clearly not JSON, still carries recognisable text."""
    return line[: max(1, len(line) // 2)] + "<<truncated"


def record_outcomes(store: Store, batch: BatchRecord, outcomes: dict[int, str]) -> None:
    """Set the per-line outcome of ``batch.entries`` by line index."""
    with store.lock:
        for i, outcome in outcomes.items():
            if 0 <= i < len(batch.entries):
                batch.entries[i]["outcome"] = outcome


# --------------------------------------------------------------------------- files


def iter_jsonl(path: str) -> Iterator[tuple[int, str]]:
    """(index, raw line) for each non-blank line of a file, streamed."""
    i = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            if raw.strip():
                yield i, raw
                i += 1


def shuffled_blocks(items: Iterator[tuple[int, str]], seed: int) -> Iterator[tuple[int, str]]:
    """Re-order a stream in blocks of 1000 lines, deterministically: output order differs
    from input order (as real providers' does) while memory stays bounded."""
    rng = random.Random(seed)
    block: list[tuple[int, str]] = []
    for item in items:
        block.append(item)
        if len(block) >= _SHUFFLE_BLOCK:
            rng.shuffle(block)
            yield from block
            block = []
    rng.shuffle(block)
    yield from block


class ResultFile:
    """A result file being written line by line, registered in the store on ``close``."""

    def __init__(
        self,
        store: Store,
        provider: str,
        file_id: str,
        filename: str,
        purpose: str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.id = file_id
        self.filename = filename
        self.purpose = purpose
        self.meta = meta or {}
        self.path = store.new_file_path(file_id)
        self.lines = 0
        self._f: IO[str] = open(self.path, "w", encoding="utf-8", buffering=1 << 20)

    def write_obj(self, obj: Any) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        self._f.write("\n")
        self.lines += 1

    def write_raw(self, line: str) -> None:
        self._f.write(line)
        self._f.write("\n")
        self.lines += 1

    def close(self, keep: bool = True) -> str | None:
        """Finish the file; returns its id, or None when empty / not kept (file removed)."""
        self._f.close()
        if not keep or self.lines == 0:
            os.unlink(self.path)
            return None
        size = os.path.getsize(self.path)
        self.meta.setdefault("num_lines", self.lines)
        self.store.add_file(
            FileRecord(
                self.id,
                self.provider,
                self.filename,
                self.purpose,
                self.path,
                size,
                now(),
                self.meta,
            ),
            uploaded=False,
        )
        return self.id


def new_result_file(
    store: Store,
    provider: str,
    prefix: str,
    filename: str,
    purpose: str,
    meta: dict[str, Any] | None = None,
) -> ResultFile:
    return ResultFile(store, provider, new_id(prefix), filename, purpose, meta)
